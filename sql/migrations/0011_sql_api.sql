-- The SQL API (issue 13): start, signal and read workflows from SQL (psql, a PL/pgSQL trigger,
-- a report), on the node that owns the workflow. docs/sql-api.md describes it; errors carry
-- a SQLSTATE of class SF:
--   SF001 wrong node: the node does not own the workflow's partition (or is moving it); the
--         message names the owner
--   SF002 unknown workflow name: no worker has registered it on this node (start a worker of
--         its app once), or several apps define it (pass app =>)
--   SF003 conflict: the id exists as another workflow
--   SF004 bad input: a blank name or id, an id longer than 200 characters, an input the
--         workflow's function cannot take, a reserved signal name
--   SF005 no such workflow
--   SF006 the workflow ended without a result (failed, cancelled, dead-lettered)

-- What the workers of each app can run, registered by every worker on every node it serves:
-- the SQL API takes a workflow's app, input shape, timeout and retention from here (a client
-- takes them from the code it imports).
CREATE TABLE {schema}.workflow_catalog (
    app text NOT NULL,
    name text NOT NULL,
    input text NOT NULL CHECK (input IN ('none', 'optional', 'required')),
    timeout_seconds double precision,
    retention_seconds double precision,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, name)
);

-- Key -> partition, exactly as shardflow/routing/hashing.py computes it: BLAKE2b with an
-- 8-byte digest of the key's UTF-8 bytes, read big-endian, modulo the partition count
-- (tests/test_sql_api.py compares the two on random keys). 64-bit words are held as two
-- 32-bit halves in bigints: PostgreSQL has no unsigned or wrapping 64-bit arithmetic.
CREATE FUNCTION {schema}.partition_for(key text, partition_count integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
DECLARE
    mask constant bigint := 4294967295;
    iv_hi constant bigint[] := ARRAY[1779033703, 3144134277, 1013904242, 2773480762,
                                     1359893119, 2600822924, 528734635, 1541459225];
    iv_lo constant bigint[] := ARRAY[4089235720, 2227873595, 4271175723, 1595750129,
                                     2917565137, 725511199, 4215389547, 327033209];
    sigma constant integer[] := ARRAY[
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3,
        11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4,
        7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8,
        9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13,
        2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9,
        12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11,
        13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10,
        6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5,
        10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0];
    -- The columns, then the diagonals, of the 4x4 state: (a, b, c, d) per mixing call.
    lanes constant integer[] := ARRAY[0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                      0, 5, 10, 15, 1, 6, 11, 12, 2, 7, 8, 13, 3, 4, 9, 14];
    msg bytea := convert_to(key, 'UTF8');
    total integer := length(msg);
    blocks integer := greatest(1, (total + 127) / 128);
    h_hi bigint[] := iv_hi;
    h_lo bigint[] := iv_lo;
    v_hi bigint[];
    v_lo bigint[];
    m_hi bigint[];
    m_lo bigint[];
    a integer; b integer; c integer; d integer; x integer; y integer;
    pos integer; word bigint; sum bigint; t_hi bigint; t_lo bigint;
    digest numeric;
BEGIN
    IF partition_count < 1 THEN
        RAISE EXCEPTION 'partition_count must be at least 1, got %', partition_count
            USING ERRCODE = 'SF004';
    END IF;
    -- Parameter block: digest length 8, no key, fanout 1, depth 1.
    h_lo[1] := h_lo[1] # 16842760;
    FOR blk IN 0 .. blocks - 1 LOOP
        m_hi := array_fill(0::bigint, ARRAY[16]);
        m_lo := array_fill(0::bigint, ARRAY[16]);
        FOR i IN 0 .. 15 LOOP
            FOR half IN 0 .. 1 LOOP
                word := 0;
                FOR k IN REVERSE 3 .. 0 LOOP  -- little-endian bytes
                    pos := blk * 128 + i * 8 + half * 4 + k;
                    word := (word << 8) | CASE WHEN pos < total THEN get_byte(msg, pos) ELSE 0 END;
                END LOOP;
                IF half = 0 THEN m_lo[i + 1] := word; ELSE m_hi[i + 1] := word; END IF;
            END LOOP;
        END LOOP;
        v_hi := h_hi || iv_hi;
        v_lo := h_lo || iv_lo;
        -- The byte counter (keys are far below 2^32 bytes: its high words stay 0).
        v_lo[13] := v_lo[13] # least(total, (blk + 1) * 128);
        IF blk = blocks - 1 THEN  -- the last block
            v_hi[15] := v_hi[15] # mask;
            v_lo[15] := v_lo[15] # mask;
        END IF;
        FOR r IN 0 .. 11 LOOP
            FOR g IN 0 .. 7 LOOP
                a := lanes[g * 4 + 1] + 1; b := lanes[g * 4 + 2] + 1;
                c := lanes[g * 4 + 3] + 1; d := lanes[g * 4 + 4] + 1;
                x := sigma[(r % 10) * 16 + g * 2 + 1] + 1;
                y := sigma[(r % 10) * 16 + g * 2 + 2] + 1;
                -- a += b + m[x]; d = (d ^ a) >>> 32
                sum := v_lo[a] + v_lo[b] + m_lo[x];
                v_hi[a] := (v_hi[a] + v_hi[b] + m_hi[x] + (sum >> 32)) & mask;
                v_lo[a] := sum & mask;
                t_hi := v_hi[d] # v_hi[a]; t_lo := v_lo[d] # v_lo[a];
                v_hi[d] := t_lo; v_lo[d] := t_hi;
                -- c += d; b = (b ^ c) >>> 24
                sum := v_lo[c] + v_lo[d];
                v_hi[c] := (v_hi[c] + v_hi[d] + (sum >> 32)) & mask;
                v_lo[c] := sum & mask;
                t_hi := v_hi[b] # v_hi[c]; t_lo := v_lo[b] # v_lo[c];
                v_hi[b] := (t_hi >> 24) | ((t_lo << 8) & mask);
                v_lo[b] := (t_lo >> 24) | ((t_hi << 8) & mask);
                -- a += b + m[y]; d = (d ^ a) >>> 16
                sum := v_lo[a] + v_lo[b] + m_lo[y];
                v_hi[a] := (v_hi[a] + v_hi[b] + m_hi[y] + (sum >> 32)) & mask;
                v_lo[a] := sum & mask;
                t_hi := v_hi[d] # v_hi[a]; t_lo := v_lo[d] # v_lo[a];
                v_hi[d] := (t_hi >> 16) | ((t_lo << 16) & mask);
                v_lo[d] := (t_lo >> 16) | ((t_hi << 16) & mask);
                -- c += d; b = (b ^ c) >>> 63
                sum := v_lo[c] + v_lo[d];
                v_hi[c] := (v_hi[c] + v_hi[d] + (sum >> 32)) & mask;
                v_lo[c] := sum & mask;
                t_hi := v_hi[b] # v_hi[c]; t_lo := v_lo[b] # v_lo[c];
                v_hi[b] := ((t_hi << 1) & mask) | (t_lo >> 31);
                v_lo[b] := ((t_lo << 1) & mask) | (t_hi >> 31);
            END LOOP;
        END LOOP;
        FOR i IN 1 .. 8 LOOP
            h_hi[i] := h_hi[i] # v_hi[i] # v_hi[i + 8];
            h_lo[i] := h_lo[i] # v_lo[i] # v_lo[i + 8];
        END LOOP;
    END LOOP;
    -- The digest is h[0]'s 8 bytes little-endian; read big-endian, that is h[0] byte-swapped.
    digest := 0;
    FOR k IN 0 .. 3 LOOP
        digest := digest * 256 + ((h_lo[1] >> (8 * k)) & 255);
    END LOOP;
    FOR k IN 0 .. 3 LOOP
        digest := digest * 256 + ((h_hi[1] >> (8 * k)) & 255);
    END LOOP;
    RETURN (digest % partition_count)::integer;
END
$fn$;

-- The partition of a key, locked FOR SHARE as every write's fence, when this node owns it;
-- SF001 naming the owner when it does not (plain nodes; on Citus every partition is owned
-- and any node reaches its shard).
CREATE FUNCTION {schema}.owned_partition(key text) RETURNS integer
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    part integer;
    state text;
    owner text;
BEGIN
    part := {schema}.partition_for(key, (SELECT partition_count FROM {schema}.node_identity));
    SELECT o.state INTO state FROM {schema}.partition_ownership AS o
    WHERE o.partition = part FOR SHARE;
    IF state = 'owned' THEN
        RETURN part;
    END IF;
    SELECT p.owners[part + 1] INTO owner FROM {schema}.placements AS p
    ORDER BY p.version DESC LIMIT 1;
    IF state = 'moving' THEN
        RAISE EXCEPTION 'partition % of % is being moved from this node to another',
            part, quote_literal(key)
            USING ERRCODE = 'SF001', HINT = 'retry in a moment on the node that owns it then';
    END IF;
    RAISE EXCEPTION 'partition % of % is owned by node %, not by this node (%)',
        part, quote_literal(key), coalesce(owner, '?'),
        (SELECT i.node_name FROM {schema}.node_identity AS i)
        USING ERRCODE = 'SF001',
              HINT = format('call it on node %s (`shardflow cluster status` lists the nodes)',
                            coalesce(owner, '?'));
END
$fn$;

CREATE FUNCTION {schema}.check_id(value text, what text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    IF value IS NULL OR btrim(value) = '' THEN
        RAISE EXCEPTION '% is empty', what
            USING ERRCODE = 'SF004', HINT = 'pass a non-blank string';
    END IF;
    IF length(value) > 200 THEN
        RAISE EXCEPTION '% is % characters, above the limit of 200', what, length(value)
            USING ERRCODE = 'SF004', HINT = 'use a shorter one (a hash of a long natural key works)';
    END IF;
    RETURN value;
END
$fn$;

-- Start workflow `name` (of the one app that registered it here, or of `app`); returns its
-- id. Idempotent by id, as client.start(): an existing id of the same workflow returns it.
-- The workflow is visible, and (plain nodes) a worker woken, when the caller's transaction
-- commits.
CREATE FUNCTION {schema}.start(
    name text,
    input json DEFAULT NULL,
    workflow_id text DEFAULT NULL,
    routing_key text DEFAULT NULL,
    app text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    wf_id text := {schema}.check_id(coalesce(start.workflow_id, gen_random_uuid()::text),
                                    'workflow_id');
    part integer;
    kind {schema}.workflow_catalog%ROWTYPE;
    kinds integer;
    given boolean := start.input IS NOT NULL AND json_typeof(start.input) <> 'null';
    found_name text;
    found_app text;
BEGIN
    PERFORM {schema}.check_id(start.name, 'name');
    IF start.routing_key IS NOT NULL THEN
        PERFORM {schema}.check_id(start.routing_key, 'routing_key');
    END IF;
    SELECT count(*) INTO kinds FROM {schema}.workflow_catalog AS c
    WHERE c.name = start.name AND (start.app IS NULL OR c.app = start.app);
    IF kinds = 0 THEN
        RAISE EXCEPTION 'no worker has registered workflow % on this node%', quote_literal(start.name),
            CASE WHEN start.app IS NULL THEN '' ELSE ' for app ' || quote_literal(start.app) END
            USING ERRCODE = 'SF002',
                  HINT = 'start a worker of the app that defines it once (it registers its workflows on every node), or check the name';
    END IF;
    IF kinds > 1 THEN
        RAISE EXCEPTION 'workflow % is defined by several apps (%)', quote_literal(start.name),
            (SELECT string_agg(c.app, ', ' ORDER BY c.app) FROM {schema}.workflow_catalog AS c
             WHERE c.name = start.name)
            USING ERRCODE = 'SF002', HINT = 'pass app => the one to start';
    END IF;
    SELECT * INTO kind FROM {schema}.workflow_catalog AS c
    WHERE c.name = start.name AND (start.app IS NULL OR c.app = start.app);
    IF given AND kind.input = 'none' THEN
        RAISE EXCEPTION 'workflow % takes no input', quote_literal(start.name)
            USING ERRCODE = 'SF004', HINT = 'start it with input => NULL';
    END IF;
    IF NOT given AND kind.input = 'required' THEN
        RAISE EXCEPTION 'workflow % needs an input', quote_literal(start.name)
            USING ERRCODE = 'SF004', HINT = 'pass input => a JSON value';
    END IF;
    part := {schema}.owned_partition(coalesce(start.routing_key, wf_id));
    INSERT INTO {schema}.workflows AS w
        (partition, workflow_id, name, app, routing_key, status, input, deadline_at,
         retention_seconds)
    VALUES (part, wf_id, start.name, kind.app, start.routing_key, 'pending',
            CASE WHEN given THEN start.input END,  -- JSON null is no input, as for a client
            now() + make_interval(secs => kind.timeout_seconds), kind.retention_seconds)
    ON CONFLICT (partition, workflow_id) DO NOTHING;
    IF FOUND THEN
        IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
            -- Delivered when the caller commits (on Citus a NOTIFY would keep a transaction
            -- that spans workers from committing: the workers' poll finds the workflow).
            NOTIFY {channel};
        END IF;
        RETURN wf_id;
    END IF;
    SELECT w.name, w.app INTO found_name, found_app FROM {schema}.workflows AS w
    WHERE w.partition = part AND w.workflow_id = wf_id;
    IF found_name <> start.name OR found_app <> kind.app THEN
        RAISE EXCEPTION 'workflow id % already exists as workflow % of app %',
            quote_literal(wf_id), quote_literal(found_name), quote_literal(found_app)
            USING ERRCODE = 'SF003', HINT = 'choose another workflow_id';
    END IF;
    RETURN wf_id;
END
$fn$;

-- The workflow's status (pending, running, succeeded, failed, cancelled, dead); NULL when no
-- such workflow exists.
CREATE FUNCTION {schema}.status(workflow_id text, routing_key text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    part integer := {schema}.owned_partition(coalesce(status.routing_key, status.workflow_id));
BEGIN
    RETURN (SELECT w.status FROM {schema}.workflows AS w
            WHERE w.partition = part AND w.workflow_id = status.workflow_id);
END
$fn$;

-- The workflow's output once it succeeded; NULL while it runs; SF006 when it ended without
-- one; SF005 when no such workflow exists.
CREATE FUNCTION {schema}.result(workflow_id text, routing_key text DEFAULT NULL) RETURNS json
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    part integer := {schema}.owned_partition(coalesce(result.routing_key, result.workflow_id));
    found_status text;
    found_output json;
    found_error json;
BEGIN
    SELECT w.status, w.output, w.error INTO found_status, found_output, found_error
    FROM {schema}.workflows AS w
    WHERE w.partition = part AND w.workflow_id = result.workflow_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no workflow %', quote_literal(result.workflow_id)
            USING ERRCODE = 'SF005', HINT = 'check the id and the routing key';
    END IF;
    IF found_status IN ('failed', 'cancelled', 'dead') THEN
        RAISE EXCEPTION 'workflow % %: %', quote_literal(result.workflow_id), found_status,
            coalesce(found_error ->> 'message', found_error::text, 'no error recorded')
            USING ERRCODE = 'SF006',
                  HINT = '`shardflow get ID --steps` shows its history; `shardflow retry ID` runs a failed one again';
    END IF;
    RETURN CASE WHEN found_status = 'succeeded' THEN found_output END;
END
$fn$;

-- Send signal `name` to a pending or running workflow (client.signal()): true when stored,
-- false when `signal_id` was sent before; SF005 when the workflow does not exist or ended.
CREATE FUNCTION {schema}.signal(
    workflow_id text,
    name text,
    payload json DEFAULT NULL,
    signal_id text DEFAULT NULL,
    routing_key text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    part integer;
    sid text := {schema}.check_id(coalesce(signal.signal_id, gen_random_uuid()::text),
                                  'signal_id');
    found_status text;
    next_seq bigint;
BEGIN
    PERFORM {schema}.check_id(signal.name, 'name');
    IF signal.name LIKE 'shardflow.%' THEN
        RAISE EXCEPTION 'signal names starting with shardflow. are reserved'
            USING ERRCODE = 'SF004', HINT = 'choose another name';
    END IF;
    part := {schema}.owned_partition(coalesce(signal.routing_key, signal.workflow_id));
    -- Lock the row first (as client.signal does): concurrent sends get consecutive numbers
    -- and a release cannot slip between the count and the wake.
    SELECT w.status INTO found_status FROM {schema}.workflows AS w
    WHERE w.partition = part AND w.workflow_id = signal.workflow_id FOR UPDATE;
    IF EXISTS (SELECT FROM {schema}.signals AS s
               WHERE s.partition = part AND s.workflow_id = signal.workflow_id
                 AND s.signal_id = sid) THEN
        RETURN false;  -- a resend
    END IF;
    IF found_status IS NULL OR found_status NOT IN ('pending', 'running') THEN
        RAISE EXCEPTION 'workflow % %', quote_literal(signal.workflow_id),
            CASE WHEN found_status IS NULL THEN 'does not exist'
                 ELSE 'has ended (' || found_status || ')' END
            USING ERRCODE = 'SF005', HINT = 'signals go to pending or running workflows';
    END IF;
    UPDATE {schema}.workflows AS w
    SET signal_seq = w.signal_seq + 1, updated_at = now()
    WHERE w.partition = part AND w.workflow_id = signal.workflow_id
    RETURNING w.signal_seq INTO next_seq;
    INSERT INTO {schema}.signals (partition, workflow_id, signal_id, name, seq, payload)
    VALUES (part, signal.workflow_id, sid, signal.name, next_seq, signal.payload);
    UPDATE {schema}.workflows AS w
    SET run_at = now(), updated_at = now()
    WHERE w.partition = part AND w.workflow_id = signal.workflow_id
      AND w.status = 'pending' AND w.waiting_for = signal.name;
    IF FOUND AND NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        NOTIFY {channel};
    END IF;
    RETURN true;
END
$fn$;

-- Granted to the client role only (sql/roles.sql); nobody else may call them.
REVOKE EXECUTE ON FUNCTION {schema}.start(text, json, text, text, text),
    {schema}.status(text, text), {schema}.result(text, text),
    {schema}.signal(text, text, json, text, text),
    {schema}.owned_partition(text) FROM PUBLIC;
