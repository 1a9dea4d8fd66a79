-- Citus variants of client queries (see citus/worker.sql for why).

-- name: workflow_insert_many
-- Bulk and group-committed starts in one statement: Citus splits the rows by shard. No fence:
-- Citus places every shard itself, so there is no partition this cluster does not own (the
-- fence of the plain query locks ownership rows of many partitions, which Citus refuses).
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
ORDER BY r.partition, r.workflow_id
ON CONFLICT (partition, workflow_id) DO NOTHING
RETURNING workflow_id;

-- name: workflow_list
-- One Citus database answers for every node: each node lists its own partitions only.
SELECT partition, workflow_id, name, app, app_version, routing_key, status, run_at, created_at,
       updated_at, completed_at,
       CASE WHEN status = 'pending' THEN waiting_for END AS waiting_for
FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[])
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(name)s::text IS NULL OR name = %(name)s::text)
  AND (%(app_version)s::text IS NULL OR app_version = %(app_version)s::text)
  AND (%(created_since)s::timestamptz IS NULL OR created_at >= %(created_since)s::timestamptz)
  AND (%(created_until)s::timestamptz IS NULL OR created_at < %(created_until)s::timestamptz)
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, workflow_id) < (%(after_created)s::timestamptz, %(after_id)s::text))
ORDER BY created_at DESC, workflow_id DESC
LIMIT %(limit)s;
