-- Child workflows and the relay (issue 11). Every write names one partition; the relay's
-- reads scan the node (on Citus, its partitions: an empty list means "all on this node").

-- name: child_existing
SELECT name, app, parent_id FROM {schema}.workflows
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s;

-- name: outbox_put
INSERT INTO {schema}.outbox (partition, message_id, kind, body)
VALUES (%(partition)s, %(message_id)s, %(kind)s, %(body)s::json)
ON CONFLICT (partition, message_id) DO NOTHING;

-- name: outbox_pending
SELECT partition, message_id, kind, body FROM {schema}.outbox
WHERE cardinality(%(partitions)s::integer[]) = 0 OR partition = ANY(%(partitions)s::integer[])
ORDER BY created_at
LIMIT %(limit)s;

-- name: outbox_delete
DELETE FROM {schema}.outbox WHERE partition = %(partition)s AND message_id = %(message_id)s;

-- name: children_untold
-- Ended children whose parent has not been told (through workflows_untold_parents_idx).
SELECT partition, workflow_id, parent_id, parent_key, status, output, error
FROM {schema}.workflows
WHERE parent_id IS NOT NULL AND NOT parent_told
  AND status IN ('succeeded', 'failed', 'cancelled', 'dead')
  AND (cardinality(%(partitions)s::integer[]) = 0
       OR partition = ANY(%(partitions)s::integer[]))
LIMIT %(limit)s;

-- name: child_told
UPDATE {schema}.workflows SET parent_told = true
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s;

-- name: child_starts
-- The children a workflow started (from its start_child checkpoints): a cancellation
-- cascades to each.
SELECT output->>'workflow_id' AS workflow_id, output->>'routing_key' AS routing_key
FROM {schema}.steps
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND step_name LIKE 'shardflow.start\_child:%%'
ORDER BY step_seq;

-- name: outbox_drop_child_starts
-- A cancelled parent's children that were not started yet are not started at all (a
-- cancellation delivered before the start would find nothing to cancel).
DELETE FROM {schema}.outbox
WHERE partition = %(partition)s AND kind = 'start_child'
  AND body->>'parent_id' = %(workflow_id)s;
