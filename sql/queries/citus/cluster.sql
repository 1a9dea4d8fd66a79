-- Citus variants of status queries: one Citus database answers for every node, so each node
-- reports its own partitions only.

-- name: workflow_status_counts
SELECT status, count(*) AS n FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[])
GROUP BY status ORDER BY status;

-- name: ownership_list
SELECT partition, epoch, state FROM {schema}.partition_ownership
WHERE partition = ANY(%(partitions)s::integer[])
ORDER BY partition;

-- name: pending_without_worker
SELECT w.app, w.name, count(*) AS workflows, min(w.created_at) AS oldest
FROM {schema}.workflows AS w
WHERE w.partition = ANY(%(partitions)s::integer[]) AND w.status IN ('pending', 'queued')
  AND NOT EXISTS (
      SELECT 1 FROM {schema}.workers AS k
      WHERE k.expires_at > now() AND k.app = w.app AND w.name = ANY(k.workflow_names)
  )
GROUP BY w.app, w.name
ORDER BY count(*) DESC, w.app, w.name
LIMIT %(limit)s;

-- name: stalled_running
SELECT w.partition, w.workflow_id, w.name, w.app, w.lease_owner, w.claimed_at,
       greatest(w.claimed_at, s.last_recorded) AS last_progress_at,
       extract(epoch FROM now() - greatest(w.claimed_at, s.last_recorded))::float8
           AS quiet_seconds,
       count(*) OVER () AS total
FROM {schema}.workflows AS w
LEFT JOIN LATERAL (
    SELECT max(st.recorded_at) AS last_recorded FROM {schema}.steps AS st
    WHERE st.partition = w.partition AND st.workflow_id = w.workflow_id
) AS s ON true
WHERE w.partition = ANY(%(partitions)s::integer[])
  AND w.status = 'running' AND w.lease_expires_at > now()
  AND w.claimed_at < now() - %(quiet)s::interval
  AND greatest(w.claimed_at, s.last_recorded) < now() - %(quiet)s::interval
ORDER BY last_progress_at
LIMIT %(limit)s;

-- name: failure_groups
-- As on a plain node, for the partitions whose shards this worker node holds.
SELECT status, name, coalesce(error->>'type', '') AS error_type,
       coalesce(substring(error->>'message' FROM '^step ''([^'']+)'' failed'), '') AS step_name,
       count(*) AS workflows, max(completed_at) AS latest,
       (array_agg(workflow_id ORDER BY completed_at DESC NULLS LAST))[1] AS example_id,
       (array_agg(routing_key ORDER BY completed_at DESC NULLS LAST))[1] AS example_key,
       (array_agg(left(error->>'message', 300) ORDER BY completed_at DESC NULLS LAST))[1]
           AS example_message
FROM {schema}.workflows
WHERE status IN ('failed', 'dead') AND partition = ANY(%(partitions)s::integer[])
GROUP BY 1, 2, 3, 4
ORDER BY count(*) DESC, 2
LIMIT %(limit)s;

-- name: recent_latencies
-- As on a plain node, for the partitions whose shards this worker node holds.
SELECT extract(epoch FROM coalesce(completed_at, now()) - created_at)::float8 AS seconds
FROM {schema}.workflows
WHERE created_at > now() - %(oldest)s::interval AND created_at <= now() - %(newest)s::interval
  AND NOT (status = 'pending' AND run_at > now())
  AND partition = ANY(%(partitions)s::integer[])
ORDER BY created_at DESC
LIMIT %(limit)s;
