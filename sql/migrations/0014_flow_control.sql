-- Flow control (issue 13): named queues with concurrency limits (per node, and per
-- concurrency key), rate limits and priority. A workflow of a queue starts 'queued': the hot
-- claim paths (status 'pending') never see it. A worker admits queued workflows of its app's
-- queues under the queue's limits (sql/queries/queues.sql), straight to 'running' for itself;
-- from then on it is an ordinary workflow, holding its queue slot until it ends (also while it
-- sleeps or waits for a signal: status 'pending' or 'running' with a queue counts).
ALTER TABLE {schema}.workflows ADD COLUMN queue text;
-- Smaller runs first among a queue's runnable workflows (then oldest first).
ALTER TABLE {schema}.workflows ADD COLUMN priority integer NOT NULL DEFAULT 0;
-- At most the queue's per-key limit of workflows with one key hold a slot at once.
ALTER TABLE {schema}.workflows ADD COLUMN concurrency_key text;
-- When it was admitted: the rate limit counts admissions in its window.
ALTER TABLE {schema}.workflows ADD COLUMN dequeued_at timestamptz;
-- The timeout it was started with (NULL: none): an admission gives it its whole timeout from
-- then on, however often it goes through the queue (retry, requeue, resume).
ALTER TABLE {schema}.workflows ADD COLUMN timeout_seconds double precision;
ALTER TABLE {schema}.workflows DROP CONSTRAINT workflows_status_check;
ALTER TABLE {schema}.workflows ADD CONSTRAINT workflows_status_check
    CHECK (status IN ('queued', 'pending', 'running', 'succeeded', 'failed', 'cancelled', 'dead',
                      'stuck'));
-- An admission's three reads: the queue's waiting workflows in admission order, the slots
-- held (by concurrency key), the admissions in the rate window. Partial indexes: rows of no
-- queue are in none of them, so workloads without queues pay nothing.
CREATE INDEX workflows_queued_idx
    ON {schema}.workflows (app, queue, priority, run_at) WHERE status = 'queued';
CREATE INDEX workflows_queue_slots_idx
    ON {schema}.workflows (app, queue, concurrency_key)
    WHERE queue IS NOT NULL AND status IN ('pending', 'running');
CREATE INDEX workflows_queue_admitted_idx
    ON {schema}.workflows (app, queue, dequeued_at) WHERE dequeued_at IS NOT NULL;

-- The SQL API starts a workflow into its queue: the catalog says which (NULL: none).
ALTER TABLE {schema}.workflow_catalog ADD COLUMN queue text;
-- A schedule's runs go into their workflow's queue.
ALTER TABLE {schema}.schedules ADD COLUMN queue text;

-- shardflow.start as in migration 0011, the workflow entering its queue when it has one.
CREATE OR REPLACE FUNCTION {schema}.start(
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
         retention_seconds, queue, timeout_seconds)
    VALUES (part, wf_id, start.name, kind.app, start.routing_key,
            CASE WHEN kind.queue IS NULL THEN 'pending' ELSE 'queued' END,
            CASE WHEN given THEN start.input END,  -- JSON null is no input, as for a client
            now() + make_interval(secs => kind.timeout_seconds), kind.retention_seconds,
            kind.queue, kind.timeout_seconds)
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

-- shardflow.signal as in migration 0011: a queued workflow takes signals too (it reads them
-- once it runs).
CREATE OR REPLACE FUNCTION {schema}.signal(
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
    IF found_status IS NULL OR found_status NOT IN ('queued', 'pending', 'running') THEN
        RAISE EXCEPTION 'workflow % %', quote_literal(signal.workflow_id),
            CASE WHEN found_status IS NULL THEN 'does not exist'
                 ELSE 'has ended (' || found_status || ')' END
            USING ERRCODE = 'SF005', HINT = 'signals go to queued, pending or running workflows';
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
