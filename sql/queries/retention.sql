-- Retention (issue 13): finished workflows past their purge_at are removed in small batches,
-- one partition per statement (Citus routes it to one shard), without long locks.

-- name: gc_purge_partition
-- Removes up to `limit` finished workflows of one partition whose purge_at has passed, oldest
-- first; their checkpoints, signals and events go with them (ON DELETE CASCADE). Left alone:
-- rows another transaction holds (SKIP LOCKED: a batch never waits), children whose end has
-- not reached their parent yet (the relay still reads them), and a partition this node does
-- not own or is moving (the fence, as for every write).
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
), doomed AS (
    SELECT workflow_id FROM {schema}.workflows
    WHERE partition = %(partition)s AND purge_at < now()
      AND status IN ('succeeded', 'failed', 'cancelled')
      AND (parent_id IS NULL OR parent_told)
      AND EXISTS (SELECT 1 FROM fence)
    ORDER BY purge_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {schema}.workflows
WHERE partition = %(partition)s
  AND workflow_id IN (SELECT workflow_id FROM doomed)
RETURNING workflow_id;

-- name: gc_due
-- How many finished workflows of these partitions the collector may remove now (the same
-- filter as gc_purge_partition, less the fence: a partition moving now is counted).
SELECT count(*)::bigint AS due
FROM {schema}.workflows
WHERE partition = ANY(%(partitions)s::integer[])
  AND purge_at < now()
  AND status IN ('succeeded', 'failed', 'cancelled')
  AND (parent_id IS NULL OR parent_told);

-- name: gc_owned_partitions
-- The partitions a plain node owns (on Citus the placement says which are the node's).
SELECT partition FROM {schema}.partition_ownership WHERE state = 'owned' ORDER BY partition;
