-- Benchmark data loading (shardflow bench): finished workflows with three checkpoints each,
-- written straight into one partition of its owning node.

-- name: bench_fill
-- `due`: their retention has passed already (the collector's benchmark removes them).
WITH w AS (
    INSERT INTO {schema}.workflows
        (partition, workflow_id, name, app, status, input, output, completed_at, purge_at)
    SELECT %(partition)s, 'bench-' || %(partition)s || '-' || g, 'bench', 'shardflow-bench',
           'succeeded',
           '1'::json, '4'::json, now(), CASE WHEN %(due)s::boolean THEN now() END
    FROM generate_series(1, %(count)s) AS g
    RETURNING workflow_id
)
INSERT INTO {schema}.steps
    (partition, workflow_id, step_seq, step_name, status, output, lease_token)
SELECT %(partition)s, w.workflow_id, s, 'add_one', 'succeeded', '2'::json, %(token)s
FROM w CROSS JOIN generate_series(0, 2) AS s;

-- name: bench_progress
-- How many of one benchmark run's workflows (ids starting with the run's prefix) are done.
SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled', 'dead')) AS done,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) AS total
FROM {schema}.workflows
WHERE workflow_id LIKE %(prefix)s;

-- name: bench_last_start
SELECT extract(epoch FROM max(created_at))::float8 AS created
FROM {schema}.workflows
WHERE workflow_id LIKE %(prefix)s;

-- name: bench_timings
-- Per workflow of one run, from the database clock: start, first pick-up and completion, and
-- the partition (where the slowest pick-ups were: one starved partition or all of them).
SELECT partition,
       extract(epoch FROM created_at)::float8 AS created,
       extract(epoch FROM claimed_at)::float8 AS claimed,
       extract(epoch FROM completed_at)::float8 AS completed
FROM {schema}.workflows
WHERE workflow_id LIKE %(prefix)s AND status = 'succeeded';

-- name: bench_commits
-- Write transactions started on this node so far: the next transaction id to be assigned.
-- (Exact and immediate, unlike pg_stat_database, whose counters a busy backend flushes late.)
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS commits;

-- name: bench_signal_resume
-- benchmarks/interaction.py: per signal of one run, seconds from its arrival on the node
-- (sent_at) to the checkpoint of the wait that received it (both the node's clock).
SELECT extract(epoch FROM st.recorded_at - sg.sent_at)::float8 AS seconds
FROM {schema}.signals AS sg
JOIN {schema}.steps AS st
  ON st.partition = sg.partition AND st.workflow_id = sg.workflow_id
 AND st.step_seq = sg.received_at_step
WHERE sg.workflow_id LIKE %(prefix)s;

-- name: bench_waiting
-- How many of one run's workflows wait (released) for a signal.
SELECT count(*) AS waiting FROM {schema}.workflows
WHERE workflow_id LIKE %(prefix)s AND status = 'pending' AND waiting_for IS NOT NULL;

-- name: bench_children
-- A parent's children on this node: how many, their first and last start, and their last end.
SELECT count(*) AS children,
       extract(epoch FROM min(created_at))::float8 AS first_start,
       extract(epoch FROM max(created_at))::float8 AS last_start,
       extract(epoch FROM max(completed_at))::float8 AS last_end
FROM {schema}.workflows
WHERE parent_id = %(parent_id)s;

-- name: bench_maintenance
-- What the server did besides the run's own work, as counters to subtract: checkpoints by
-- trigger (timed, or requested because max_wal_size was reached), WAL written, and autovacuum
-- runs on shardflow's tables. A latency tail that lines up with these is maintenance, not
-- shardflow. (Cumulative statistics: a backend flushes them within a second or so.)
SELECT (SELECT checkpoints_timed FROM pg_stat_bgwriter)::bigint AS checkpoints_timed,
       (SELECT checkpoints_req FROM pg_stat_bgwriter)::bigint AS checkpoints_requested,
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 AS wal_bytes,
       (SELECT coalesce(sum(autovacuum_count), 0) FROM pg_stat_user_tables
        WHERE schemaname = %(schema)s)::bigint AS autovacuums;

-- name: bench_table_sizes
-- The size on disk of each of shardflow's tables with its indexes and TOAST, and the rows the
-- planner estimates (the retention soak's curve: flat when the collector keeps up).
SELECT c.relname::text AS name, pg_total_relation_size(c.oid)::bigint AS bytes,
       greatest(c.reltuples, 0)::bigint AS rows_estimate
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind = 'r'
ORDER BY c.relname;

-- name: bench_workflow_rows
SELECT count(*)::bigint AS workflows FROM {schema}.workflows;

-- name: bench_finished_since
-- A run's workflows that ended at or after `since` (epoch seconds), with their timings: a run
-- with a short retention reads them while they still exist (bench/harvest.py).
SELECT workflow_id,
       partition,
       status,
       extract(epoch FROM created_at)::float8 AS created,
       extract(epoch FROM claimed_at)::float8 AS claimed,
       extract(epoch FROM completed_at)::float8 AS completed
FROM {schema}.workflows
WHERE workflow_id LIKE %(prefix)s
  AND status IN ('succeeded', 'failed', 'cancelled', 'dead')
  -- A dead-lettered one has no completion time: when it was last changed.
  AND coalesce(completed_at, updated_at) >= to_timestamp(%(since)s);

-- name: bench_runs_by_prefix
-- Every workflow of a run by id (schedule runs: the id holds the tick), with its timings.
SELECT workflow_id, status,
       extract(epoch FROM created_at)::float8 AS created,
       extract(epoch FROM claimed_at)::float8 AS claimed,
       extract(epoch FROM completed_at)::float8 AS completed
FROM {schema}.workflows
WHERE workflow_id LIKE %(prefix)s;
