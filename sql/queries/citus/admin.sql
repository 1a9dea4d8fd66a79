-- Citus only: membership and shard moves, which Citus owns. Run on the coordinator.

-- name: citus_create_extension
-- On every node, in shardflow's database, before it joins (needs a superuser).
CREATE EXTENSION IF NOT EXISTS citus;

-- name: citus_set_coordinator
SELECT citus_set_coordinator_host(%(host)s, %(port)s);

-- name: citus_add_node
SELECT citus_add_node(%(host)s, %(port)s) AS nodeid;

-- name: citus_remove_node
SELECT citus_remove_node(%(host)s, %(port)s);

-- name: citus_drain_node
-- Moves every shard off the node and marks it to receive none (shouldhaveshards = false).
SELECT citus_drain_node(%(host)s, %(port)s);

-- name: citus_node_shards
-- How many shard placements of shardflow's distributed tables a node holds.
SELECT count(*) AS shards
FROM pg_dist_placement AS pl
JOIN pg_dist_node AS n ON n.groupid = pl.groupid
JOIN pg_dist_shard AS s ON s.shardid = pl.shardid
JOIN pg_dist_partition AS d ON d.logicalrelid = s.logicalrelid AND d.partmethod = 'h'
WHERE n.nodename = %(host)s AND n.nodeport = %(port)s;

-- name: citus_rebalance_plan
-- What a rebalance would move, without moving anything.
SELECT table_name::text AS table_name, shardid, shard_size, sourcename, sourceport,
       targetname, targetport
FROM get_rebalance_table_shards_plan();

-- name: citus_rebalance_start
-- Starts a background rebalance (shards move online through logical replication); NULL when
-- nothing needs to move. Errors if one is running already.
SELECT citus_rebalance_start() AS job_id;

-- name: citus_rebalance_progress
-- A rebalance job's state and how many of its shard moves are done.
SELECT j.state::text AS state,
       count(t.task_id) FILTER (WHERE t.status = 'done') AS done,
       count(t.task_id) AS total,
       max(nullif(t.message, '')) FILTER (WHERE t.status = 'error') AS error
FROM pg_dist_background_job AS j
LEFT JOIN pg_dist_background_task AS t ON t.job_id = j.job_id
WHERE j.job_id = %(job_id)s
GROUP BY j.state;

-- name: citus_rebalance_running
-- The rebalance job still under way (an earlier command started it), if any.
SELECT job_id FROM pg_dist_background_job
WHERE state IN ('scheduled', 'running', 'cancelling', 'failing')
ORDER BY job_id DESC
LIMIT 1;

-- name: citus_check_health
-- Every node can reach every node (for `cluster check`).
SELECT from_nodename, from_nodeport, to_nodename, to_nodeport, result
FROM citus_check_cluster_node_health()
WHERE result IS DISTINCT FROM true;

-- name: citus_recover_prepared
-- Resolves the two-phase commits this node started whose commit or abort did not reach a
-- participant (a connection cut between PREPARE and COMMIT PREPARED). Citus's maintenance
-- daemon does the same every citus.recover_2pc_interval; run on every node, since each
-- recovers only the transactions it started.
SELECT recover_prepared_transactions() AS recovered;
