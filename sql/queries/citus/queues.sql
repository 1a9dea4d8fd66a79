-- Citus variants of the admission reads (see queues.sql): the same questions over the
-- partitions whose shards this node holds, reads across shards without row locks. The lock
-- and the admitting write (one partition per statement) are the plain ones.

-- name: queue_slots_held
SELECT concurrency_key, count(*)::integer AS held
FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[]) AND app = %(app)s AND queue = %(queue)s
  AND status IN ('pending', 'running')
GROUP BY concurrency_key;

-- name: queue_admitted_recently
SELECT count(*)::integer AS admitted,
       extract(epoch FROM min(dequeued_at) + %(period)s::interval - now())::float8 AS frees_in
FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[]) AND app = %(app)s AND queue = %(queue)s
  AND dequeued_at > now() - %(period)s::interval;

-- name: queue_waiting
SELECT partition, workflow_id, concurrency_key
FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[]) AND app = %(app)s AND queue = %(queue)s
  AND status = 'queued' AND run_at <= now() AND name = ANY(%(names)s::text[])
  AND (concurrency_key IS NULL OR NOT concurrency_key = ANY(%(saturated)s::text[]))
  AND (dequeued_at IS NULL OR dequeued_at <= now() - %(period)s::interval)
ORDER BY priority, run_at
LIMIT %(limit)s;
