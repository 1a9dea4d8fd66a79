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
