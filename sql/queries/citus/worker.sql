-- Citus variants of worker queries. Citus refuses row locks in a statement that spans shards
-- ("could not run distributed query with FOR UPDATE/SHARE"), even for partitions that share
-- a shard: where the plain query covers many partitions in one statement, the Citus one names
-- one partition, and the store sends one per partition inside one transaction on the node
-- that holds them (all local shards: Citus executes them locally, no two-phase commit).
-- Reads across shards without locks are fine; they name the node's partitions so that each
-- node answers for its own.

-- name: runnable_partitions
-- Which of the node's partitions have runnable work for this worker, oldest first (no locks:
-- the single-partition claims that follow take them). It spans shards, which costs tens of
-- milliseconds on Citus: the claim loop asks once per poll interval (notifications name the
-- partitions that got work in between).
SELECT partition
FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[]) AND app = %(app)s AND status = 'pending'
  AND run_at <= now() AND lease_expiries = 0 AND name = ANY(%(names)s::text[])
GROUP BY partition
ORDER BY min(run_at)
LIMIT %(limit)s;

-- name: suspect_partitions
SELECT DISTINCT partition FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[]) AND app = %(app)s AND status = 'pending'
  AND run_at <= now() AND lease_expiries > 0 AND name = ANY(%(names)s::text[])
LIMIT 16;

-- name: next_due_seconds
SELECT extract(epoch FROM min(run_at) - now())::float8 AS seconds
FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[]) AND app = %(app)s AND status = 'pending'
  AND name = ANY(%(names)s::text[]);

-- name: expired_leases
SELECT partition, workflow_id
FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[]) AND status = 'running'
  AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT %(limit)s;

-- name: lease_renew_partition
-- The heartbeat, one partition at a time (the plain lease_renew covers many).
WITH held AS MATERIALIZED (
    SELECT partition, workflow_id FROM {schema}.workflows
    WHERE partition = %(partition)s AND status = 'running' AND lease_owner = %(owner)s
      AND lease_token = ANY(%(tokens)s::uuid[]) AND lease_expires_at > now()
    ORDER BY workflow_id
    FOR NO KEY UPDATE
)
UPDATE {schema}.workflows AS w
SET lease_expires_at = now() + %(lease)s::interval
FROM held AS h
WHERE w.partition = %(partition)s AND w.workflow_id = h.workflow_id
RETURNING w.partition, w.workflow_id;

-- Group commit of progress, inside the batch's transaction: progress_lock_partition, one per
-- partition, takes the row locks the guard needs (fence FOR SHARE, then the workflow rows FOR
-- NO KEY UPDATE in workflow_id order) and returns the leases that hold; the store keeps the
-- rows of those leases and writes them with one single-row statement each while the locks
-- are held. (One statement as on plain nodes hits a Citus bug: an INSERT ... SELECT in a
-- data-modifying CTE goes through COPY and fails with 'missing data for column'; a
-- multi-row INSERT ... SELECT works but also goes through COPY, about 2.5 ms a call, where a
-- router statement takes a fraction of a millisecond.)

-- name: progress_lock_partition
WITH fence AS MATERIALIZED (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
SELECT w.partition, w.workflow_id, w.lease_token::text AS lease_token
FROM {schema}.workflows AS w
WHERE w.partition = %(partition)s AND w.workflow_id = ANY(%(workflow_ids)s::text[])
  AND w.status = 'running' AND w.lease_expires_at > now()
  AND EXISTS (SELECT 1 FROM fence)
ORDER BY w.workflow_id
FOR NO KEY UPDATE OF w;

-- name: progress_step_row
-- One checkpoint (a router insert: Citus's fast path, a fraction of a millisecond).
INSERT INTO {schema}.steps
    (partition, workflow_id, step_seq, step_name, status, output, error, attempts, lease_token)
VALUES (%(partition)s, %(workflow_id)s, %(step_seq)s, %(step_name)s, %(status)s,
        %(output)s::json, %(error)s::json, %(attempts)s, %(lease_token)s)
ON CONFLICT (partition, workflow_id, step_seq) DO NOTHING
RETURNING partition, workflow_id, step_seq;

-- name: progress_finish_row
-- One workflow's end, guarded like the rest (its row is locked by progress_lock_partition).
-- A 'stuck' one (parked) has not ended: no completion time, nothing to purge.
UPDATE {schema}.workflows
SET status = %(status)s, output = %(output)s::json, error = %(error)s::json,
    -- now() outside the CASE (Citus refuses it inside one), in UTC timestamps (IMMUTABLE).
    completed_at = timezone('UTC', timezone('UTC', now())
                                   + CASE WHEN %(status)s = 'stuck' THEN NULL::interval
                                          ELSE interval '0' END),
    updated_at = now(), lease_expiries = 0,
    -- When it may be removed (NULL retention: never). In UTC timestamps, IMMUTABLE: Citus
    -- refuses timestamptz + interval (STABLE) over a column in an UPDATE.
    purge_at = timezone('UTC', timezone('UTC', now())
                               + make_interval(secs => CASE WHEN %(status)s = 'stuck' THEN NULL
                                                            ELSE retention_seconds END)),
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND lease_token = %(lease_token)s AND status = 'running'
RETURNING partition, workflow_id, -1 AS step_seq;

-- name: queue_depth
-- As on a plain node, for the partitions whose shards this worker node holds.
SELECT count(*) FILTER (WHERE run_at <= now()) AS runnable,
       count(*) FILTER (WHERE run_at > now()) AS waiting,
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now())), 0)::float8
           AS oldest_seconds
FROM {schema}.workflows
WHERE status = 'pending' AND partition = ANY(%(partitions)s::integer[]);
