-- Citus only: how shardflow's tables are spread over a Citus cluster. Run on the coordinator
-- after the migrations (which are the same as on plain nodes), each block idempotent.
-- Tables that belong to a workflow are distributed by `partition` and co-located, so
-- everything about one partition lives in one shard group and one partition's transaction is
-- local to one node. Small cluster-wide tables are reference tables (a copy on every node,
-- readable where the workers run). The migrations table stays on the coordinator.

-- name: citus_distributed_tables
-- Schema-qualified whatever the search_path (regclass::text drops a schema on the path).
SELECT n.nspname || '.' || c.relname AS table_name
FROM pg_dist_partition AS d
JOIN pg_class AS c ON c.oid = d.logicalrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace;

-- name: citus_distribute_node_identity
SELECT create_reference_table('{schema}.node_identity');

-- name: citus_distribute_placements
SELECT create_reference_table('{schema}.placements');

-- name: citus_distribute_partition_moves
SELECT create_reference_table('{schema}.partition_moves');

-- name: citus_distribute_partition_ownership
-- The first of the co-location group: it fixes the shard count.
SELECT create_distributed_table('{schema}.partition_ownership', 'partition',
                                shard_count => %(shard_count)s, colocate_with => 'none');

-- name: citus_distribute_workflows
SELECT create_distributed_table('{schema}.workflows', 'partition',
                                colocate_with => '{schema}.partition_ownership');

-- name: citus_distribute_steps
SELECT create_distributed_table('{schema}.steps', 'partition',
                                colocate_with => '{schema}.partition_ownership');

-- name: citus_distribute_signals
SELECT create_distributed_table('{schema}.signals', 'partition',
                                colocate_with => '{schema}.partition_ownership');

-- name: citus_distribute_events
SELECT create_distributed_table('{schema}.events', 'partition',
                                colocate_with => '{schema}.partition_ownership');

-- name: citus_distribute_outbox
SELECT create_distributed_table('{schema}.outbox', 'partition',
                                colocate_with => '{schema}.partition_ownership');

-- name: citus_distribute_schedules
SELECT create_distributed_table('{schema}.schedules', 'partition',
                                colocate_with => '{schema}.partition_ownership');

-- name: citus_distribute_service_leases
-- Reference tables too: small, written rarely (a reaper's lease every few seconds, an admin
-- action), and they never move in a rebalance (a distributed copy would add shards to move).
SELECT create_reference_table('{schema}.service_leases');

-- name: citus_distribute_workers
-- A reference table: status joins it with workflows on (app, name), which a distributed
-- table not co-located with workflows would refuse. Small, and written once per beat.
SELECT create_reference_table('{schema}.workers');

-- name: citus_distribute_audit_log
SELECT create_reference_table('{schema}.audit_log');

-- name: citus_distribute_workflow_catalog
-- The SQL API's catalog: small, written once per worker start, read by every start.
SELECT create_reference_table('{schema}.workflow_catalog');
