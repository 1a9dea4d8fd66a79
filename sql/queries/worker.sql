-- Worker-side queries. Every state change is a guarded UPDATE naming one partition, the lease
-- token it expects, and the partition fence; losing a race returns no row.
--
-- Lock order: a statement that locks several rows of one table locks them sorted by
-- (partition, workflow_id), ownership rows by partition, and never upgrades a row lock it
-- holds; claims skip locked rows. Two statements can then never wait on each other in a cycle
-- (a progress write and a heartbeat, or two progress writes, deadlocked before: issue 9).
-- Claims take only the worker's own app's workflows, and only names its code defines.

-- name: listen_work
LISTEN {channel};

-- name: suspect_partitions
SELECT DISTINCT partition FROM {schema}.workflows
WHERE app = %(app)s AND status = 'pending' AND run_at <= now() AND lease_expiries > 0
  AND name = ANY(%(names)s::text[])
LIMIT 16;

-- name: next_due_seconds
-- Seconds until the earliest pending workflow this worker can run becomes runnable (NULL when
-- none is pending).
SELECT extract(epoch FROM min(run_at) - now())::float8 AS seconds
FROM {schema}.workflows
WHERE app = %(app)s AND status = 'pending' AND name = ANY(%(names)s::text[]);

-- name: claim_oldest
-- The short-queue claim (the previous claim drained the node): the oldest runnable workflows
-- of the node in run_at order, in one statement. Cheap whatever plan the statistics pick,
-- because little is runnable; with a long backlog the claim loop uses claim_ready instead.
-- Rows of partitions this node does not own (left behind by a move) are not candidates; the
-- fence locks the ownership rows of the partitions claimed from, FOR SHARE. Plain Postgres
-- nodes: Citus refuses row locks across shards (there, claim per partition).
WITH candidates AS MATERIALIZED (
    SELECT partition, workflow_id FROM {schema}.workflows
    WHERE app = %(app)s AND status = 'pending' AND run_at <= now() AND lease_expiries = 0
      AND name = ANY(%(names)s::text[])
      AND partition IN (
          SELECT partition FROM {schema}.partition_ownership WHERE state = 'owned'
      )
    ORDER BY run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), fence AS (
    SELECT partition FROM {schema}.partition_ownership
    WHERE partition IN (SELECT partition FROM candidates) AND state = 'owned'
    ORDER BY partition
    FOR SHARE
)
UPDATE {schema}.workflows AS w
SET status = 'running',
    lease_token = %(lease_token)s,
    lease_owner = %(owner)s,
    lease_expires_at = now() + %(lease)s::interval,
    claimed_at = now(),
    claim_count = w.claim_count + 1,
    updated_at = now()
FROM candidates AS c
WHERE w.partition = c.partition AND w.workflow_id = c.workflow_id
  AND c.partition IN (SELECT partition FROM fence)
RETURNING w.partition, w.workflow_id, w.routing_key, w.parent_id, w.cancel_requested,
          w.name, w.input,
          w.deadline_at, w.claim_count,
          w.retry_step_seq, w.retry_attempts, w.claimed_at, w.trace_context;

-- name: claim_ready
-- The backlog claim (the previous claim came back full): up to n runnable workflows (never
-- suspects: they go one at a time through claim) from the partitions this node owns, in one
-- statement. Partitions are visited in rotation: upwards from the start parameter (just
-- after the partition where the worker's previous walk ended), then wrapping around, so
-- every partition with work is served once per sweep. A random start starved partitions in
-- issue 9's soaks: a walk takes from the first non-empty partition after its start, so one
-- right behind a busy partition was chosen only when the start landed on it exactly (p99
-- pick-up 50.9 s at 90 percent load, the slowest 1 percent in 48 of 256 partitions). Each
-- partition is read oldest first through the (app, partition, run_at) index: a plan that
-- stays cheap with any table statistics (a node-wide ORDER BY run_at was seen sorting a
-- whole fresh backlog when the statistics still said "empty"). The nested loop stops once n
-- rows are locked. The fence locks the ownership rows of the partitions claimed from, FOR
-- SHARE. Plain Postgres nodes: Citus refuses row locks across shards (there, claim per
-- partition).
WITH candidates AS MATERIALIZED (
    SELECT c.partition, c.workflow_id
    FROM (
        SELECT partition FROM {schema}.partition_ownership
        WHERE state = 'owned'
        ORDER BY partition < %(start)s, partition
    ) AS p
    CROSS JOIN LATERAL (
        SELECT partition, workflow_id FROM {schema}.workflows
        WHERE app = %(app)s AND partition = p.partition AND status = 'pending'
          AND run_at <= now() AND lease_expiries = 0 AND name = ANY(%(names)s::text[])
        ORDER BY run_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    LIMIT %(limit)s
), fence AS (
    SELECT partition FROM {schema}.partition_ownership
    WHERE partition IN (SELECT partition FROM candidates) AND state = 'owned'
    ORDER BY partition
    FOR SHARE
)
UPDATE {schema}.workflows AS w
SET status = 'running',
    lease_token = %(lease_token)s,
    lease_owner = %(owner)s,
    lease_expires_at = now() + %(lease)s::interval,
    claimed_at = now(),
    claim_count = w.claim_count + 1,
    updated_at = now()
FROM candidates AS c
WHERE w.partition = c.partition AND w.workflow_id = c.workflow_id
  AND c.partition IN (SELECT partition FROM fence)
RETURNING w.partition, w.workflow_id, w.routing_key, w.parent_id, w.cancel_requested,
          w.name, w.input,
          w.deadline_at, w.claim_count,
          w.retry_step_seq, w.retry_attempts, w.claimed_at, w.trace_context;

-- name: claim
-- With suspect = false, claims workflows that never lost a lease. Suspects (their worker
-- died while running them) are claimed with suspect = true, one at a time, by an otherwise
-- idle worker: if one kills its worker again it takes no innocent workflow with it.
-- MATERIALIZED keeps LIMIT exact: an UPDATE ... FROM (subquery LIMIT n FOR UPDATE SKIP
-- LOCKED) was seen claiming more than n rows under a nested-loop plan.
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
), candidates AS MATERIALIZED (
    SELECT workflow_id FROM {schema}.workflows
    WHERE app = %(app)s AND partition = %(partition)s AND status = 'pending'
      AND run_at <= now() AND (lease_expiries > 0) = %(suspect)s
      AND name = ANY(%(names)s::text[])
      AND EXISTS (SELECT 1 FROM fence)
    ORDER BY run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.workflows AS w
SET status = 'running',
    lease_token = %(lease_token)s,
    lease_owner = %(owner)s,
    lease_expires_at = now() + %(lease)s::interval,
    claimed_at = now(),
    claim_count = w.claim_count + 1,
    updated_at = now()
FROM candidates AS c
WHERE w.partition = %(partition)s AND w.workflow_id = c.workflow_id
RETURNING w.workflow_id, w.routing_key, w.parent_id, w.cancel_requested, w.name, w.input,
          w.deadline_at,
          w.claim_count,
          w.retry_step_seq, w.retry_attempts, w.claimed_at, w.trace_context;

-- name: step_record
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
), lease AS (
    SELECT workflow_id FROM {schema}.workflows
    WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
      AND status = 'running' AND lease_token = %(lease_token)s AND lease_expires_at > now()
    FOR SHARE
)
INSERT INTO {schema}.steps
    (partition, workflow_id, step_seq, step_name, status, output, error, attempts, lease_token)
SELECT %(partition)s, %(workflow_id)s, %(step_seq)s, %(step_name)s, %(status)s,
       %(output)s::json, %(error)s::json, %(attempts)s, %(lease_token)s
WHERE EXISTS (SELECT 1 FROM fence) AND EXISTS (SELECT 1 FROM lease)
ON CONFLICT (partition, workflow_id, step_seq) DO NOTHING
RETURNING step_seq;

-- name: workflow_release
-- Suspends a running workflow until now() + delay (durable sleep, step retry backoff, a wait
-- for a signal). A wait passes the signal count its run saw: a send that committed since (its
-- count is higher; the UPDATE reads the row as the send left it, even after waiting for the
-- send's row lock) makes the workflow runnable at once instead of waiting for its timeout.
-- Returns whether it is due at once. (now() stays out of the CASE and the RETURNING clause:
-- Citus refuses it there.)
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
UPDATE {schema}.workflows
SET status = 'pending',
    run_at = now() + CASE WHEN signal_seq > coalesce(%(seen_signal_seq)s::bigint, signal_seq)
                          THEN interval '0 seconds' ELSE %(delay)s::interval END,
    waiting_for = %(waiting_for)s::text,
    retry_step_seq = %(retry_step_seq)s, retry_attempts = %(retry_attempts)s,
    error = %(error)s::json, updated_at = now(), lease_expiries = 0,
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND status = 'running' AND lease_token = %(lease_token)s AND lease_expires_at > now()
  AND EXISTS (SELECT 1 FROM fence)
RETURNING signal_seq > coalesce(%(seen_signal_seq)s::bigint, signal_seq) AS due;

-- name: lease_renew
-- The heartbeat: extends the unexpired leases this worker incarnation is running on the node.
-- By token, not by owner alone: a row copied to another node by a partition move keeps its
-- old lease, which the worker must not renew there (it can never complete it there). Rows
-- are locked in (partition, workflow_id) order, like every multi-row write.
WITH held AS MATERIALIZED (
    SELECT partition, workflow_id FROM {schema}.workflows
    WHERE status = 'running' AND lease_owner = %(owner)s
      AND lease_token = ANY(%(tokens)s::uuid[]) AND lease_expires_at > now()
    ORDER BY partition, workflow_id
    FOR NO KEY UPDATE
)
UPDATE {schema}.workflows AS w
SET lease_expires_at = now() + %(lease)s::interval
FROM held AS h
WHERE w.partition = h.partition AND w.workflow_id = h.workflow_id
RETURNING w.partition, w.workflow_id;

-- name: service_lease_takeover
UPDATE {schema}.service_leases
SET holder = %(holder)s, expires_at = now() + %(ttl)s::interval
WHERE service = %(service)s AND (holder = %(holder)s OR expires_at < now())
RETURNING holder;

-- name: service_lease_insert
INSERT INTO {schema}.service_leases (service, holder, expires_at)
VALUES (%(service)s, %(holder)s, now() + %(ttl)s::interval)
ON CONFLICT (service) DO NOTHING
RETURNING holder;

-- name: expired_leases
SELECT partition, workflow_id
FROM {schema}.workflows
WHERE status = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT %(limit)s;

-- name: requeue_expired
-- The reaper makes expired work runnable again; it never runs work itself. A workflow whose
-- lease expired max_expiries times in a row (it kills its worker) is dead-lettered instead.
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
), expired AS MATERIALIZED (
    SELECT workflow_id FROM {schema}.workflows
    WHERE partition = %(partition)s AND workflow_id = ANY(%(workflow_ids)s::text[])
      AND status = 'running' AND lease_expires_at < now()
      AND EXISTS (SELECT 1 FROM fence)
    ORDER BY workflow_id
    FOR NO KEY UPDATE
)
UPDATE {schema}.workflows AS w
SET status = CASE WHEN w.lease_expiries + 1 >= %(max_expiries)s THEN 'dead' ELSE 'pending' END,
    error = CASE WHEN w.lease_expiries + 1 >= %(max_expiries)s THEN %(dead_error)s::json
                 ELSE w.error END,
    lease_expiries = w.lease_expiries + 1,
    run_at = now(), updated_at = now(),
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
FROM expired AS e
WHERE w.partition = %(partition)s AND w.workflow_id = e.workflow_id
RETURNING w.workflow_id, w.status;

-- name: service_lease_release
DELETE FROM {schema}.service_leases WHERE service = %(service)s AND holder = %(holder)s;

-- name: service_lease_get
SELECT holder, expires_at > now() AS live FROM {schema}.service_leases
WHERE service = %(service)s;

-- name: service_lease_steal
-- Take over a lease from a holder known to be dead (same host, process gone) or on request.
UPDATE {schema}.service_leases
SET holder = %(holder)s, expires_at = now() + %(ttl)s::interval
WHERE service = %(service)s AND holder = %(previous)s
RETURNING holder;

-- name: progress_write_many
-- Group commit of workflow progress on one node, in one statement: the checkpoints of many
-- running workflows, and the terminal states of those that finished (with their last
-- checkpoints, so a workflow's end costs one commit). Each row is guarded like step_record:
-- its lease unexpired, its partition owned (ownership rows FOR SHARE). Returns what was
-- written: (partition, workflow_id, step_seq) per checkpoint and step_seq -1 per end;
-- a row missing from the result lost its lease or its partition. Locks, in the global order:
-- ownership rows by partition (FOR SHARE), then the workflow rows by (partition, workflow_id)
-- (FOR NO KEY UPDATE, the lock the terminal-state UPDATE needs, so it upgrades nothing), then
-- the checkpoint inserts in the same order. Plain Postgres nodes: Citus refuses row locks
-- across shards (there, one partition per statement).
WITH batch AS (
    SELECT * FROM unnest(
        %(partition_list)s::integer[], %(workflow_id_list)s::text[], %(lease_token_list)s::uuid[],
        %(step_seq_list)s::integer[], %(step_name_list)s::text[], %(status_list)s::text[],
        %(output_list)s::text[], %(error_list)s::text[], %(attempts_list)s::integer[]
    ) AS b (partition, workflow_id, lease_token, step_seq, step_name, status, output, error,
            attempts)
), finished AS (
    SELECT * FROM unnest(
        %(fin_partition_list)s::integer[], %(fin_workflow_id_list)s::text[],
        %(fin_lease_token_list)s::uuid[], %(fin_status_list)s::text[],
        %(fin_output_list)s::text[], %(fin_error_list)s::text[]
    ) AS f (partition, workflow_id, lease_token, status, output, error)
), fence AS MATERIALIZED (
    SELECT partition FROM {schema}.partition_ownership
    WHERE (partition = ANY(%(partition_list)s::integer[])
           OR partition = ANY(%(fin_partition_list)s::integer[]))
      AND state = 'owned'
    ORDER BY partition
    FOR SHARE
), lease AS MATERIALIZED (
    SELECT w.partition, w.workflow_id, w.lease_token FROM {schema}.workflows AS w
    WHERE (w.partition, w.workflow_id) IN (
              SELECT partition, workflow_id FROM batch
              UNION SELECT partition, workflow_id FROM finished
          )
      AND w.status = 'running' AND w.lease_expires_at > now()
      -- Read from the fence: its ownership rows are locked first, whatever the plan.
      AND w.partition IN (SELECT partition FROM fence)
    ORDER BY w.partition, w.workflow_id
    FOR NO KEY UPDATE
), written AS (
    INSERT INTO {schema}.steps
        (partition, workflow_id, step_seq, step_name, status, output, error, attempts,
         lease_token)
    SELECT b.partition, b.workflow_id, b.step_seq, b.step_name, b.status, b.output::json,
           b.error::json, b.attempts, b.lease_token
    FROM batch AS b
    JOIN lease AS l
      ON l.partition = b.partition AND l.workflow_id = b.workflow_id
     AND l.lease_token = b.lease_token
    WHERE b.partition IN (SELECT partition FROM fence)
    ORDER BY b.partition, b.workflow_id, b.step_seq
    ON CONFLICT (partition, workflow_id, step_seq) DO NOTHING
    RETURNING partition, workflow_id, step_seq
), ended AS (
    UPDATE {schema}.workflows AS w
    SET status = f.status, output = f.output::json, error = f.error::json,
        -- A 'stuck' workflow (parked) has not ended: no completion time, nothing to purge.
        completed_at = CASE WHEN f.status = 'stuck' THEN NULL ELSE now() END,
        updated_at = now(), lease_expiries = 0,
        -- When it may be removed (NULL retention: never). In UTC timestamps, IMMUTABLE: Citus
        -- refuses timestamptz + interval (STABLE) over a column in an UPDATE.
        purge_at = timezone('UTC', timezone('UTC', now())
                                   + make_interval(secs => CASE WHEN f.status = 'stuck'
                                                                THEN NULL
                                                                ELSE w.retention_seconds END)),
        lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
    FROM finished AS f
    JOIN lease AS l
      ON l.partition = f.partition AND l.workflow_id = f.workflow_id
     AND l.lease_token = f.lease_token
    WHERE w.partition = f.partition AND w.workflow_id = f.workflow_id
      AND f.partition IN (SELECT partition FROM fence)
    RETURNING w.partition, w.workflow_id
)
SELECT partition, workflow_id, step_seq FROM written
UNION ALL
SELECT partition, workflow_id, -1 FROM ended;

-- name: worker_register
-- The heartbeat says which app and workflow names this worker runs, on every beat. now() sits
-- in VALUES and DO UPDATE uses EXCLUDED: Citus refuses now() inside ON CONFLICT DO UPDATE.
INSERT INTO {schema}.workers (owner, app, workflow_names, started_at, seen_at, expires_at, claims)
VALUES (%(owner)s, %(app)s, %(names)s, now(), now(), now() + %(ttl)s::interval,
        %(claims)s::jsonb)
ON CONFLICT (owner) DO UPDATE
SET app = EXCLUDED.app, workflow_names = EXCLUDED.workflow_names,
    seen_at = EXCLUDED.seen_at, expires_at = EXCLUDED.expires_at, claims = EXCLUDED.claims;

-- name: catalog_register
-- What this worker's app can run (the SQL API's catalog): written once per node the worker
-- serves, at its first beat there; a deploy with other timeouts or retentions replaces them.
INSERT INTO {schema}.workflow_catalog AS c
    (app, name, input, timeout_seconds, retention_seconds, queue, registered_at)
SELECT e.app, e.name, e.input, e.timeout_seconds, e.retention_seconds, e.queue, now()
FROM json_to_recordset(%(entries)s::json)
    AS e(app text, name text, input text, timeout_seconds float8, retention_seconds float8,
         queue text)
ON CONFLICT (app, name) DO UPDATE
SET input = EXCLUDED.input, timeout_seconds = EXCLUDED.timeout_seconds,
    retention_seconds = EXCLUDED.retention_seconds, queue = EXCLUDED.queue,
    registered_at = EXCLUDED.registered_at;

-- name: worker_unregister
DELETE FROM {schema}.workers WHERE owner = %(owner)s;

-- name: workers_prune
-- Registrations of workers gone for a day: nobody needs to see them any more.
DELETE FROM {schema}.workers WHERE expires_at < now() - interval '1 day';

-- name: queue_depth
-- The metrics' queue gauges of this node, every app: pending workflows runnable now, how long
-- the oldest of them has waited, and those not runnable yet (sleeping, backing off, waiting
-- for a signal). Both counts use the partial index of pending rows only.
SELECT count(*) FILTER (WHERE run_at <= now()) AS runnable,
       count(*) FILTER (WHERE run_at > now()) AS waiting,
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now())), 0)::float8
           AS oldest_seconds
FROM {schema}.workflows
WHERE status = 'pending';
