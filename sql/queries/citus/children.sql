-- Citus: the relay's reads name the node's partitions, so Citus prunes to the shards this
-- node holds instead of asking every shard in the cluster on every poll.

-- name: outbox_pending
SELECT partition, message_id, kind, body FROM {schema}.outbox
WHERE partition = ANY(%(partitions)s::integer[])
ORDER BY created_at
LIMIT %(limit)s;

-- name: children_untold
SELECT partition, workflow_id, parent_id, parent_key, status, output, error
FROM {schema}.workflows
WHERE parent_id IS NOT NULL AND NOT parent_told
  AND status IN ('succeeded', 'failed', 'cancelled', 'dead')
  AND partition = ANY(%(partitions)s::integer[])
LIMIT %(limit)s;
