-- Flow control: admitting a queue's waiting ('queued') workflows under its limits, on one
-- node. One admission is one transaction: queue_lock (the node's lock for this app's queue:
-- admissions of one queue on a node take turns, so what they count cannot change under
-- them), then the reads, then queue_admit_many (plain nodes) or queue_admit per partition
-- (Citus). The worker decides what to admit
-- between the reads and the writes (shardflow/queues/admission.py). A workflow holds its
-- slot from admission until it ends: status 'pending' or 'running' with a queue. A worker
-- killed while running one keeps the slot held until its lease expires and another worker
-- resumes the workflow (still 'running', then 'pending', then 'running'): limits hold
-- through crashes.

-- name: queue_lock
-- A transaction-level advisory lock: released at commit or rollback, also through a
-- transaction pooler. Tried, not waited for: another worker admitting this queue on this
-- node right now is doing the work (the caller looks again soon). A statement without
-- tables: on Citus it runs on the node it is sent to, so the lock is that node's.
SELECT pg_try_advisory_xact_lock(hashtextextended(%(lock)s, 0)) AS locked;

-- name: queue_slots_held
-- The queue's held slots on this node, per concurrency key (through the slots index).
SELECT concurrency_key, count(*)::integer AS held
FROM {schema}.workflows
WHERE app = %(app)s AND queue = %(queue)s AND status IN ('pending', 'running')
GROUP BY concurrency_key;

-- name: queue_admitted_recently
-- Admissions on this node inside the rate window, and in how many seconds the oldest of them
-- leaves it (when the next admission may be possible).
SELECT count(*)::integer AS admitted,
       extract(epoch FROM min(dequeued_at) + %(period)s::interval - now())::float8 AS frees_in
FROM {schema}.workflows
WHERE app = %(app)s AND queue = %(queue)s AND dequeued_at > now() - %(period)s::interval;

-- name: queue_waiting
-- The queue's waiting workflows this worker can run, in admission order (smallest priority,
-- then oldest), on the partitions this node owns. Left out: those of full concurrency keys,
-- and one admitted before inside the rate window (a retry, a requeue): its new admission
-- would overwrite the one the window counts.
SELECT partition, workflow_id, concurrency_key
FROM {schema}.workflows
WHERE app = %(app)s AND queue = %(queue)s AND status = 'queued' AND run_at <= now()
  AND name = ANY(%(names)s::text[])
  AND (concurrency_key IS NULL OR NOT concurrency_key = ANY(%(saturated)s::text[]))
  AND (dequeued_at IS NULL OR dequeued_at <= now() - %(period)s::interval)
  AND partition IN (SELECT partition FROM {schema}.partition_ownership WHERE state = 'owned')
ORDER BY priority, run_at
LIMIT %(limit)s;

-- name: queue_admit
-- Admits the chosen workflows of one partition to this worker, as a claim leases them: rows
-- locked in workflow_id order, skipping one a cancel holds (it is admitted next time, or
-- ends cancelled), guarded by the partition fence. Returns what the runner needs, as the
-- claims do.
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
), chosen AS MATERIALIZED (
    SELECT workflow_id FROM {schema}.workflows
    WHERE partition = %(partition)s AND workflow_id = ANY(%(workflow_ids)s::text[])
      AND status = 'queued' AND app = %(app)s AND queue = %(queue)s
      AND EXISTS (SELECT 1 FROM fence)
    ORDER BY workflow_id
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.workflows AS w
SET status = 'running',
    lease_token = %(lease_token)s,
    lease_owner = %(owner)s,
    lease_expires_at = now() + %(lease)s::interval,
    claimed_at = now(),
    dequeued_at = now(),
    -- Its timeout counts from admission, not from the start (time waiting in the queue is
    -- not the workflow's). In UTC timestamps: Citus refuses timestamptz arithmetic (STABLE)
    -- over columns in an UPDATE.
    deadline_at = timezone('UTC', timezone('UTC', now())
                                  + make_interval(secs => w.timeout_seconds)),
    claim_count = w.claim_count + 1,
    updated_at = now()
FROM chosen AS c
WHERE w.partition = %(partition)s AND w.workflow_id = c.workflow_id
RETURNING w.partition, w.workflow_id, w.routing_key, w.parent_id, w.cancel_requested,
          w.name, w.input,
          w.deadline_at, w.claim_count,
          w.retry_step_seq, w.retry_attempts, w.claimed_at, w.trace_context;

-- name: queue_admit_many
-- Plain nodes: queue_admit for the chosen rows of many partitions in one statement, as
-- claim_oldest claims: the fence locks the ownership rows of the partitions named, FOR SHARE,
-- in partition order; the rows are locked in (partition, workflow_id) order. Citus refuses
-- row locks across shards: there the store sends queue_admit per partition.
WITH fence AS (
    SELECT partition FROM {schema}.partition_ownership
    WHERE partition = ANY(%(partition_list)s::integer[]) AND state = 'owned'
    ORDER BY partition
    FOR SHARE
), chosen AS MATERIALIZED (
    SELECT w.partition, w.workflow_id
    FROM {schema}.workflows AS w
    JOIN unnest(%(partition_list)s::integer[], %(workflow_id_list)s::text[])
        AS c (partition, workflow_id)
        ON w.partition = c.partition AND w.workflow_id = c.workflow_id
    WHERE w.status = 'queued' AND w.app = %(app)s AND w.queue = %(queue)s
      AND w.partition IN (SELECT partition FROM fence)
    ORDER BY w.partition, w.workflow_id
    FOR UPDATE OF w SKIP LOCKED
)
UPDATE {schema}.workflows AS w
SET status = 'running',
    lease_token = %(lease_token)s,
    lease_owner = %(owner)s,
    lease_expires_at = now() + %(lease)s::interval,
    claimed_at = now(),
    dequeued_at = now(),
    deadline_at = timezone('UTC', timezone('UTC', now())
                                  + make_interval(secs => w.timeout_seconds)),
    claim_count = w.claim_count + 1,
    updated_at = now()
FROM chosen AS c
WHERE w.partition = c.partition AND w.workflow_id = c.workflow_id
RETURNING w.partition, w.workflow_id, w.routing_key, w.parent_id, w.cancel_requested,
          w.name, w.input,
          w.deadline_at, w.claim_count,
          w.retry_step_seq, w.retry_attempts, w.claimed_at, w.trace_context;
