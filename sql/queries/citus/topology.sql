-- Citus only: where the shards are. Citus owns shard placement; shardflow reads it here.

-- name: citus_shard_map
-- Which Citus node holds the shard of each partition (the shards of workflows; every workflow
-- table is co-located with it), and the placement version: the newest placement id of those
-- shards, which grows with every move of one (reference tables, whose placements come and go
-- with nodes, do not count). Readable on the coordinator and on every worker (metadata is
-- synced to workers).
SELECT p AS partition, n.nodename, n.nodeport,
       (SELECT coalesce(max(pl2.placementid), 0)
        FROM pg_dist_placement AS pl2
        JOIN pg_dist_shard AS sh ON sh.shardid = pl2.shardid
        WHERE sh.logicalrelid = '{schema}.workflows'::regclass) AS version
FROM generate_series(
    0,
    coalesce((SELECT partition_count FROM {schema}.node_identity), %(partition_count)s) - 1
) AS p
CROSS JOIN LATERAL (
    SELECT get_shard_id_for_distribution_column('{schema}.workflows', p) AS shardid
) AS s
JOIN pg_dist_placement AS pl ON pl.shardid = s.shardid
JOIN pg_dist_node AS n ON n.groupid = pl.groupid AND n.noderole = 'primary' AND n.isactive
ORDER BY p;

-- name: citus_nodes
-- The nodes that may hold shards (workers; the coordinator only if told to), by join order.
SELECT nodename, nodeport FROM pg_dist_node
WHERE noderole = 'primary' AND isactive AND shouldhaveshards
ORDER BY nodeid;

-- name: citus_installed
SELECT extversion FROM pg_extension WHERE extname = 'citus';
