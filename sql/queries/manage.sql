-- Managing a workflow's history (shardflow/storage/manage_store.py): retry a failed workflow
-- from its failed step, fork a new workflow from the first checkpoints of another. Each runs
-- in one transaction on the workflow's node, under the ownership fence, on one partition.

-- name: manage_lock
-- The workflow, locked for the change; nothing when this node does not own the partition.
-- `timeout`: how long it was given from its start (NULL: no deadline).
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
SELECT w.status, w.parent_id,
       coalesce(make_interval(secs => w.timeout_seconds), w.deadline_at - w.created_at)
           AS timeout
FROM {schema}.workflows w
WHERE w.partition = %(partition)s AND w.workflow_id = %(workflow_id)s
  AND EXISTS (SELECT 1 FROM fence)
FOR UPDATE OF w;

-- name: manage_history
-- Where a retry starts: the last failed checkpoint, the last checkpoint, and what a retry
-- must not replay past (undo steps registered, children started).
SELECT max(step_seq) FILTER (WHERE status = 'failed') AS failed_seq,
       max(step_seq) AS last_seq,
       (array_agg(status ORDER BY step_seq DESC))[1] AS last_status,
       min(step_seq) FILTER (WHERE step_name LIKE 'shardflow.compensate:%%') AS first_undo_seq,
       min(step_seq) FILTER (WHERE step_name LIKE 'shardflow.start_child:%%') AS first_child_seq
FROM {schema}.steps
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s;

-- name: manage_drop_steps_from
-- The checkpoints from `step_seq` on; a retry runs those positions again.
DELETE FROM {schema}.steps
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s AND step_seq >= %(step_seq)s;

-- name: manage_drop_events_from
-- Events published at those positions: the run publishes them again.
DELETE FROM {schema}.events
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s AND step_seq >= %(step_seq)s;

-- name: manage_restore_events_before
-- A key published before `step_seq` and again after it: its earlier value is the current one
-- again (the dropped position publishes anew when the run gets there).
INSERT INTO {schema}.events (partition, workflow_id, key, value, step_seq)
SELECT DISTINCT ON (s.step_name)
       s.partition, s.workflow_id, substr(s.step_name, length('shardflow.event:') + 1),
       s.output, s.step_seq
FROM {schema}.steps AS s
WHERE s.partition = %(partition)s AND s.workflow_id = %(workflow_id)s
  AND s.step_seq < %(step_seq)s AND s.status = 'succeeded'
  AND s.step_name LIKE 'shardflow.event:%%'
ORDER BY s.step_name, s.step_seq DESC
ON CONFLICT (partition, workflow_id, key) DO NOTHING;

-- name: manage_unread_signals_from
-- Signals taken at those positions are unread again: the run's waits take them again.
UPDATE {schema}.signals
SET received_at_step = NULL
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND received_at_step >= %(step_seq)s;

-- name: manage_retry
-- A failed workflow runnable again, as if it had not ended: a fresh deadline of the same
-- length, no retry state, no lease; its retention starts over when it ends. One of a queue
-- waits for admission again (it gave its slot up when it failed).
UPDATE {schema}.workflows
SET status = CASE WHEN queue IS NULL THEN 'pending' ELSE 'queued' END, run_at = now(), updated_at = now(), output = NULL, error = NULL,
    completed_at = NULL, purge_at = NULL, lease_token = NULL, lease_owner = NULL,
    lease_expires_at = NULL, lease_expiries = 0, retry_step_seq = NULL, retry_attempts = 0,
    waiting_for = NULL, cancel_requested = false,
    deadline_at = now() + %(timeout)s::interval
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s AND status = 'failed'
RETURNING workflow_id;

-- name: manage_fork_source
-- What a fork copies: the workflow's kind and input, and its first `step_count` checkpoints.
SELECT w.name, w.app, w.app_version, w.input, w.routing_key, w.retention_seconds,
       w.queue, w.priority, w.concurrency_key,
       coalesce(make_interval(secs => w.timeout_seconds), w.deadline_at - w.created_at)
           AS timeout,
       coalesce(json_agg(json_build_object(
                    'step_seq', s.step_seq, 'step_name', s.step_name, 'status', s.status,
                    'output', s.output, 'error', s.error, 'attempts', s.attempts)
                ORDER BY s.step_seq) FILTER (WHERE s.step_seq IS NOT NULL),
                '[]'::json) AS steps
FROM {schema}.workflows w
LEFT JOIN {schema}.steps s
    ON s.partition = w.partition AND s.workflow_id = w.workflow_id
   AND s.step_seq < %(step_count)s
WHERE w.partition = %(partition)s AND w.workflow_id = %(workflow_id)s
GROUP BY w.partition, w.workflow_id;

-- name: manage_copy_steps
-- A fork's checkpoints, copied in one statement (the lease token of a copied checkpoint is
-- the nil UUID: no run recorded it).
INSERT INTO {schema}.steps
    (partition, workflow_id, step_seq, step_name, status, output, error, attempts, lease_token)
SELECT %(partition)s, %(workflow_id)s, c.step_seq, c.step_name, c.status, c.output, c.error,
       c.attempts, '00000000-0000-0000-0000-000000000000'::uuid
FROM json_to_recordset(%(steps)s::json)
    AS c(step_seq integer, step_name text, status text, output json, error json,
         attempts integer);

-- name: manage_fork_has_history
-- A worker reads a workflow's checkpoints from its second claim on (a first claim has none):
-- a fork with copied ones counts as claimed once.
UPDATE {schema}.workflows
SET claim_count = 1
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s;

-- name: manage_copy_events
-- The events the copied checkpoints published (the latest per key), as the source has them.
INSERT INTO {schema}.events (partition, workflow_id, key, value, step_seq)
SELECT %(partition)s, %(workflow_id)s, e.key, e.value, e.step_seq
FROM json_to_recordset(%(events)s::json) AS e(key text, value json, step_seq integer);
