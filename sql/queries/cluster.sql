-- name: node_identity_get
SELECT cluster_id, node_name, partition_count FROM {schema}.node_identity;

-- name: node_identity_insert
INSERT INTO {schema}.node_identity (cluster_id, node_name, partition_count)
VALUES (%(cluster_id)s, %(node_name)s, %(partition_count)s)
ON CONFLICT (singleton) DO NOTHING;

-- name: placement_insert
INSERT INTO {schema}.placements (version, partition_count, nodes, owners)
VALUES (%(version)s, %(partition_count)s, %(nodes)s, %(owners)s)
ON CONFLICT (version) DO NOTHING;

-- name: placement_latest
SELECT version, partition_count, nodes, owners
FROM {schema}.placements
ORDER BY version DESC
LIMIT 1;

-- name: ownership_insert
INSERT INTO {schema}.partition_ownership (partition, epoch, state)
SELECT p, %(epoch)s, 'owned' FROM unnest(%(partitions)s::integer[]) AS p
ON CONFLICT (partition) DO NOTHING;

-- name: ownership_list
SELECT partition, epoch, state FROM {schema}.partition_ownership ORDER BY partition;

-- name: ownership_get
SELECT epoch, state FROM {schema}.partition_ownership WHERE partition = %(partition)s;

-- name: ownership_set_state
-- Takes the row lock that every write holds FOR SHARE: waits for in-flight writes of the
-- partition to commit, and every later write sees the new state.
UPDATE {schema}.partition_ownership
SET state = %(state)s, updated_at = now()
WHERE partition = %(partition)s
RETURNING epoch;

-- name: workflow_status_counts
SELECT status, count(*) AS n FROM {schema}.workflows GROUP BY status ORDER BY status;

-- name: workers_live
-- Live workers on this node (their heartbeat registered them within three beats), per app.
SELECT app, count(*) AS workers FROM {schema}.workers
WHERE expires_at > now()
GROUP BY app ORDER BY app;

-- name: pending_without_worker
-- Pending (or queued) workflows that no live worker can run: their app has no live worker, or
-- no live worker of that app defines the name (a deploy that dropped it, a typo in a start).
SELECT w.app, w.name, count(*) AS workflows, min(w.created_at) AS oldest
FROM {schema}.workflows AS w
WHERE w.status IN ('pending', 'queued')
  AND NOT EXISTS (
      SELECT 1 FROM {schema}.workers AS k
      WHERE k.expires_at > now() AND k.app = w.app AND w.name = ANY(k.workflow_names)
  )
GROUP BY w.app, w.name
ORDER BY count(*) DESC, w.app, w.name
LIMIT %(limit)s;

-- name: stalled_running
-- The watchdog: running workflows whose lease is live (a worker keeps renewing it) but which
-- have recorded nothing since they were claimed, or since their last checkpoint, for longer
-- than `quiet`. A step that legitimately runs that long shows here too: raise the bound.
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
WHERE w.status = 'running' AND w.lease_expires_at > now()
  AND w.claimed_at < now() - %(quiet)s::interval
  AND greatest(w.claimed_at, s.last_recorded) < now() - %(quiet)s::interval
ORDER BY last_progress_at
LIMIT %(limit)s;

-- name: failure_groups
-- The dashboard's failures page: failed and dead-lettered workflows of this node grouped by
-- workflow name, error type and the step that failed (named in a StepFailedError's message),
-- with the newest example of each group.
SELECT status, name, coalesce(error->>'type', '') AS error_type,
       coalesce(substring(error->>'message' FROM '^step ''([^'']+)'' failed'), '') AS step_name,
       count(*) AS workflows, max(completed_at) AS latest,
       (array_agg(workflow_id ORDER BY completed_at DESC NULLS LAST))[1] AS example_id,
       (array_agg(routing_key ORDER BY completed_at DESC NULLS LAST))[1] AS example_key,
       (array_agg(left(error->>'message', 300) ORDER BY completed_at DESC NULLS LAST))[1]
           AS example_message
FROM {schema}.workflows
WHERE status IN ('failed', 'dead')
GROUP BY 1, 2, 3, 4
ORDER BY count(*) DESC, 2
LIMIT %(limit)s;

-- name: recent_latencies
-- The dashboard's latency sample: the newest `limit` workflows started between `oldest` and
-- `newest` ago (a range scan of the newest-first index, bounded whatever the table's size),
-- start -> end in seconds; one not finished yet counts as running until now, so slow
-- ones are not left out. Sleeping or signal-waiting ones that are not due are left out.
SELECT extract(epoch FROM coalesce(completed_at, now()) - created_at)::float8 AS seconds
FROM {schema}.workflows
WHERE created_at > now() - %(oldest)s::interval AND created_at <= now() - %(newest)s::interval
  AND NOT (status = 'pending' AND run_at > now())
ORDER BY created_at DESC
LIMIT %(limit)s;

-- name: worker_claims
-- The workflows each live worker claimed on node `node` since it started, as its heartbeat
-- last wrote them, and when (the dashboard's claims/s: per worker, claims between two of its
-- beats over the time between them, so the rate does not depend on when the page samples).
SELECT owner, coalesce((claims ->> %(node)s::text)::bigint, 0) AS claimed,
       extract(epoch FROM seen_at)::float8 AS seen_at,
       extract(epoch FROM started_at)::float8 AS started_at
FROM {schema}.workers
WHERE expires_at > now();

-- name: connection_use
-- Client connections this server has open (every database: they share max_connections) and
-- how many it allows non-superusers.
SELECT count(*)::int AS in_use,
       (current_setting('max_connections')::int
        - current_setting('superuser_reserved_connections')::int) AS allowed
FROM pg_stat_activity
WHERE backend_type = 'client backend';
