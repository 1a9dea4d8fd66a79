-- Schedules (storage/schedule_store.py). Every write names one partition (the schedule's),
-- under the ownership fence; a tick's runs are inserted in the same transaction as the
-- schedule's advance. `partitions`: on Citus the node's partitions, on plain nodes empty (a
-- node's rows are its own partitions').

-- name: schedule_insert
-- A new schedule; nothing when the name exists (the caller then reads it) or the node does
-- not own the partition.
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
INSERT INTO {schema}.schedules
    (partition, name, workflow_name, app, app_version, input, timeout_seconds,
     retention_seconds, cron, timezone, missed, catchup_seconds, paused, next_tick_at, source,
     queue)
SELECT %(partition)s::integer, %(name)s::text, %(workflow_name)s::text, %(app)s::text,
       %(app_version)s::text, %(input)s::json, %(timeout_seconds)s::float8,
       %(retention_seconds)s::float8, %(cron)s::text, %(timezone)s::text, %(missed)s::text,
       %(catchup_seconds)s::float8, %(paused)s::boolean, %(next_tick_at)s::timestamptz,
       %(source)s::text, %(queue)s::text
WHERE EXISTS (SELECT 1 FROM fence)
ON CONFLICT (partition, name) DO NOTHING
RETURNING name;

-- name: schedule_lock
-- One schedule, locked for a change (fenced); nothing when absent or not this node's.
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
SELECT s.partition, s.name, s.workflow_name, s.app, s.app_version, s.input, s.timeout_seconds,
       s.retention_seconds, s.cron, s.timezone, s.missed, s.catchup_seconds, s.paused,
       s.next_tick_at, s.last_tick_at, s.last_run_id, s.source, s.created_at, s.updated_at,
       s.queue
FROM {schema}.schedules AS s
WHERE s.partition = %(partition)s AND s.name = %(name)s AND EXISTS (SELECT 1 FROM fence)
FOR UPDATE OF s;

-- name: schedule_replace
-- A schedule's whole definition (a deploy changed it, or create(replace=True)).
UPDATE {schema}.schedules
SET workflow_name = %(workflow_name)s, app = %(app)s, app_version = %(app_version)s::text,
    input = %(input)s::json, timeout_seconds = %(timeout_seconds)s::float8,
    retention_seconds = %(retention_seconds)s::float8, cron = %(cron)s, timezone = %(timezone)s,
    missed = %(missed)s, catchup_seconds = %(catchup_seconds)s, paused = %(paused)s,
    next_tick_at = %(next_tick_at)s::timestamptz, source = %(source)s, queue = %(queue)s::text,
    updated_at = now()
WHERE partition = %(partition)s AND name = %(name)s;

-- name: schedule_set_paused
UPDATE {schema}.schedules
SET paused = %(paused)s, next_tick_at = %(next_tick_at)s, updated_at = now()
WHERE partition = %(partition)s AND name = %(name)s;

-- name: schedule_delete
DELETE FROM {schema}.schedules WHERE partition = %(partition)s AND name = %(name)s;

-- name: schedule_list
SELECT partition, name, workflow_name, app, app_version, input, timeout_seconds,
       retention_seconds, cron, timezone, missed, catchup_seconds, paused, next_tick_at,
       last_tick_at, last_run_id, source, created_at, updated_at, queue
FROM {schema}.schedules
WHERE cardinality(%(partitions)s::integer[]) = 0 OR partition = ANY(%(partitions)s::integer[])
ORDER BY name;

-- name: schedule_due_partitions
-- The scheduler's look, every second: the partitions with a schedule due now, and when the
-- next one is due (its sleep until then).
SELECT partition, bool_or(next_tick_at <= now()) AS due, min(next_tick_at) AS next_tick_at
FROM {schema}.schedules
WHERE NOT paused
  AND (cardinality(%(partitions)s::integer[]) = 0 OR partition = ANY(%(partitions)s::integer[]))
GROUP BY partition;

-- name: schedule_lock_due
-- A partition's due schedules, locked for their tick; one another scheduler holds is skipped
-- (it is starting that tick), never waited for.
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
SELECT s.partition, s.name, s.workflow_name, s.app, s.app_version, s.input, s.timeout_seconds,
       s.retention_seconds, s.cron, s.timezone, s.missed, s.catchup_seconds, s.paused,
       s.next_tick_at, s.last_tick_at, s.last_run_id, s.source, s.created_at, s.updated_at,
       s.queue, now() AS now
FROM {schema}.schedules AS s
WHERE s.partition = %(partition)s AND NOT s.paused AND s.next_tick_at <= now()
  AND EXISTS (SELECT 1 FROM fence)
ORDER BY s.name
LIMIT %(limit)s
FOR UPDATE OF s SKIP LOCKED;

-- name: schedule_advance
-- After its tick's runs were inserted (same transaction): where the schedule goes on.
UPDATE {schema}.schedules
SET next_tick_at = %(next_tick_at)s,
    last_tick_at = coalesce(%(last_tick_at)s::timestamptz, last_tick_at),
    last_run_id = coalesce(%(last_run_id)s::text, last_run_id),
    updated_at = now()
WHERE partition = %(partition)s AND name = %(name)s;
