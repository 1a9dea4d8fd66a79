-- Benchmark data loading (shardflow bench): finished workflows with three checkpoints each,
-- written straight into one partition of its owning node.

-- name: bench_fill
WITH w AS (
    INSERT INTO {schema}.workflows
        (partition, workflow_id, name, status, input, output, completed_at)
    SELECT %(partition)s, 'bench-' || %(partition)s || '-' || g, 'bench', 'succeeded',
           '1'::json, '4'::json, now()
    FROM generate_series(1, %(count)s) AS g
    RETURNING workflow_id
)
INSERT INTO {schema}.steps
    (partition, workflow_id, step_seq, step_name, status, output, lease_token)
SELECT %(partition)s, w.workflow_id, s, 'add_one', 'succeeded', '2'::json, %(token)s
FROM w CROSS JOIN generate_series(0, 2) AS s;
