-- Client-side workflow queries. Every write names one partition and locks that partition's
-- ownership row FOR SHARE in the same statement: the write fence.

-- name: workflow_insert
-- A start (parent_id and parent_key are a child's: from the relay, or from the parent's own
-- transaction when the child lives on the parent's partition).
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
INSERT INTO {schema}.workflows
    (partition, workflow_id, name, app, routing_key, status, input, deadline_at, parent_id,
     parent_key, trace_context, retention_seconds, app_version, queue, priority,
     concurrency_key, timeout_seconds)
SELECT %(partition)s, %(workflow_id)s, %(name)s, %(app)s, %(routing_key)s,
       -- A workflow of a queue waits for admission (queues.sql); others are runnable now.
       CASE WHEN %(queue)s::text IS NULL THEN 'pending' ELSE 'queued' END,
       %(input)s::json, now() + %(timeout)s::interval, %(parent_id)s, %(parent_key)s,
       %(trace_context)s, %(retention)s::float8, %(app_version)s, %(queue)s::text,
       %(priority)s::integer, %(concurrency_key)s::text,
       extract(epoch FROM %(timeout)s::interval)::float8
WHERE EXISTS (SELECT 1 FROM fence)
ON CONFLICT (partition, workflow_id) DO NOTHING
RETURNING workflow_id;

-- name: workflow_get
SELECT partition, workflow_id, name, app, routing_key, status, input, output, error,
       run_at, deadline_at, claim_count, created_at, updated_at, completed_at,
       CASE WHEN status = 'pending' THEN waiting_for END AS waiting_for, parent_id, parent_key,
       app_version
FROM {schema}.workflows
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s;

-- name: workflow_list
SELECT partition, workflow_id, name, app, app_version, routing_key, status, run_at, created_at,
       updated_at, completed_at,
       CASE WHEN status = 'pending' THEN waiting_for END AS waiting_for
FROM {schema}.workflows
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(name)s::text IS NULL OR name = %(name)s::text)
  AND (%(app_version)s::text IS NULL OR app_version = %(app_version)s::text)
  AND (%(created_since)s::timestamptz IS NULL OR created_at >= %(created_since)s::timestamptz)
  AND (%(created_until)s::timestamptz IS NULL OR created_at < %(created_until)s::timestamptz)
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, workflow_id) < (%(after_created)s::timestamptz, %(after_id)s::text))
ORDER BY created_at DESC, workflow_id DESC
LIMIT %(limit)s;

-- name: workflow_cancel
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
UPDATE {schema}.workflows
SET status = 'cancelled', completed_at = now(), updated_at = now(),
    -- When it may be removed (NULL retention: never). In UTC timestamps, IMMUTABLE: Citus
    -- refuses timestamptz + interval (STABLE) over a column in an UPDATE.
    purge_at = timezone('UTC', timezone('UTC', now())
                               + make_interval(secs => retention_seconds)),
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND status IN ('queued', 'pending', 'running', 'stuck')
  AND EXISTS (SELECT 1 FROM fence)
RETURNING workflow_id;

-- name: workflow_cancel_to_undo
-- Cancelling a workflow that registered compensations: runnable at once with
-- cancel_requested, so the next run undoes what it did instead of going on; a run in progress
-- loses its lease (its next write is refused), like a plain cancel. One of a queue that holds
-- no slot (queued: retried or requeued with history; stuck) undoes once admitted.
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
UPDATE {schema}.workflows
SET status = CASE WHEN queue IS NOT NULL AND status IN ('queued', 'stuck') THEN 'queued'
                  ELSE 'pending' END,
    cancel_requested = true, run_at = now(), waiting_for = NULL,
    updated_at = now(), lease_expiries = 0,
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND status IN ('queued', 'pending', 'running', 'stuck') AND NOT cancel_requested
  AND EXISTS (SELECT 1 FROM fence)
RETURNING workflow_id;

-- name: compensations_registered
SELECT count(*) AS registered FROM {schema}.steps
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND step_name LIKE 'shardflow.compensate:%%';

-- name: workflow_requeue
-- Gives a dead-lettered workflow another chance (after the code that killed workers is fixed).
-- One of a queue waits for admission again: it gave its slot up when it ended.
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
UPDATE {schema}.workflows
SET status = CASE WHEN queue IS NULL THEN 'pending' ELSE 'queued' END,
    run_at = now(), updated_at = now(), lease_expiries = 0, error = NULL, completed_at = NULL
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s AND status = 'dead'
  AND EXISTS (SELECT 1 FROM fence)
RETURNING workflow_id;

-- name: workflow_resume
-- A parked workflow (stuck: its code did not match its history) runs again, after a deploy of
-- code that matches; it replays from the start of its history (one of a queue through
-- admission: a stuck workflow holds no slot).
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
UPDATE {schema}.workflows
SET status = CASE WHEN queue IS NULL THEN 'pending' ELSE 'queued' END,
    run_at = now(), updated_at = now(), error = NULL
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s AND status = 'stuck'
  AND EXISTS (SELECT 1 FROM fence)
RETURNING workflow_id;

-- name: workflow_steps
SELECT step_seq, step_name, status, output, error, attempts, recorded_at
FROM {schema}.steps
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
ORDER BY step_seq;

-- name: notify_work
-- Sent as its own statement after the commit (never from a trigger): see docs/design.md.
SELECT pg_notify(%(channel)s, %(payload)s);

-- name: audit_insert
INSERT INTO {schema}.audit_log (actor, action, target, arguments)
VALUES (%(actor)s, %(action)s, %(target)s, %(arguments)s);

-- name: audit_list
SELECT audit_id, at, actor, action, target, arguments
FROM {schema}.audit_log
ORDER BY at DESC
LIMIT %(limit)s;

-- name: workflow_insert_many
-- Bulk and group-committed starts (Client.start_many, concurrent Client.start calls): one
-- statement per node for many partitions. The fence locks the ownership rows of every
-- partition named, FOR SHARE; rows of a partition this node does not own are skipped (the
-- client starts those one by one, following the move). Plain Postgres nodes only: Citus
-- refuses row locks across shards, so there the client would send one partition per statement.
WITH fence AS (
    SELECT partition FROM {schema}.partition_ownership
    WHERE partition = ANY(%(partition_list)s::integer[]) AND state = 'owned'
    ORDER BY partition
    FOR SHARE
)
INSERT INTO {schema}.workflows
    (partition, workflow_id, name, app, routing_key, status, input, deadline_at,
     trace_context, retention_seconds, app_version, queue, priority, concurrency_key,
     timeout_seconds)
SELECT r.partition, r.workflow_id, r.name, r.app, r.routing_key,
       CASE WHEN r.queue IS NULL THEN 'pending' ELSE 'queued' END, r.input::json,
       now() + r.timeout, r.trace_context, r.retention, r.app_version, r.queue, r.priority,
       r.concurrency_key, extract(epoch FROM r.timeout)::float8
FROM unnest(%(partition_list)s::integer[], %(workflow_id_list)s::text[],
            %(name_list)s::text[], %(app_list)s::text[], %(routing_key_list)s::text[],
            %(input_list)s::text[], %(timeout_list)s::interval[], %(trace_context_list)s::text[],
            %(retention_list)s::float8[], %(app_version_list)s::text[],
            %(queue_list)s::text[], %(priority_list)s::integer[],
            %(concurrency_key_list)s::text[])
     AS r (partition, workflow_id, name, app, routing_key, input, timeout, trace_context,
           retention, app_version, queue, priority, concurrency_key)
WHERE r.partition IN (SELECT partition FROM fence)
-- One global order for the unique-index entries: two batches naming the same ids cannot wait
-- on each other in opposite orders.
ORDER BY r.partition, r.workflow_id
ON CONFLICT (partition, workflow_id) DO NOTHING
RETURNING workflow_id;
