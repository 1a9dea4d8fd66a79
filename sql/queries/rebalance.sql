-- Moving a partition between nodes. Every statement names one partition. The column lists of
-- the COPY pairs must name every column of their table (a test checks it against the catalog).

-- name: move_journal_insert
INSERT INTO {schema}.partition_moves
    (move_id, partition, source_node, target_node, phase, placement_version)
VALUES (%(move_id)s, %(partition)s, %(source_node)s, %(target_node)s, 'fenced',
        %(placement_version)s);

-- name: move_journal_update
UPDATE {schema}.partition_moves
SET phase = %(phase)s, rows_copied = %(rows_copied)s, updated_at = now()
WHERE move_id = %(move_id)s;

-- name: move_journal_active
SELECT move_id, partition, source_node, target_node, phase, placement_version, rows_copied
FROM {schema}.partition_moves
WHERE phase <> 'done'
ORDER BY started_at;

-- name: copy_out_workflows
-- A lease taken on the source can never commit on the target (the worker writes to the node
-- it claimed from, and the source is fenced): copied leases arrive expired, so the target's
-- reaper makes that work runnable at once instead of after the lease runs out.
COPY (
    SELECT partition, workflow_id, name, app, routing_key, status, input, output, error,
           run_at, deadline_at, claim_count, retry_step_seq, retry_attempts, lease_token,
           lease_owner,
           CASE WHEN status = 'running' THEN '-infinity'::timestamptz
                ELSE lease_expires_at END AS lease_expires_at,
           claimed_at, created_at, updated_at, completed_at, lease_expiries, signal_seq,
           waiting_for, parent_id, parent_key, parent_told, cancel_requested, trace_context,
           retention_seconds, purge_at, app_version, queue, priority, concurrency_key,
           dequeued_at, timeout_seconds
    FROM {schema}.workflows WHERE partition = %(partition)s
) TO STDOUT;

-- name: copy_in_workflows
COPY {schema}.workflows (
    partition, workflow_id, name, app, routing_key, status, input, output, error, run_at,
    deadline_at, claim_count, retry_step_seq, retry_attempts, lease_token, lease_owner,
    lease_expires_at, claimed_at, created_at, updated_at, completed_at, lease_expiries,
    signal_seq, waiting_for, parent_id, parent_key, parent_told, cancel_requested,
    trace_context, retention_seconds, purge_at, app_version, queue, priority, concurrency_key,
    dequeued_at, timeout_seconds
) FROM STDIN;

-- name: copy_out_steps
COPY (
    SELECT partition, workflow_id, step_seq, step_name, status, output, error, attempts,
           lease_token, recorded_at
    FROM {schema}.steps WHERE partition = %(partition)s
) TO STDOUT;

-- name: copy_in_steps
COPY {schema}.steps (
    partition, workflow_id, step_seq, step_name, status, output, error, attempts,
    lease_token, recorded_at
) FROM STDIN;

-- name: copy_out_signals
COPY (
    SELECT partition, workflow_id, signal_id, name, seq, payload, sent_at, received_at_step
    FROM {schema}.signals WHERE partition = %(partition)s
) TO STDOUT;

-- name: copy_in_signals
COPY {schema}.signals (
    partition, workflow_id, signal_id, name, seq, payload, sent_at, received_at_step
) FROM STDIN;

-- name: copy_out_events
COPY (
    SELECT partition, workflow_id, key, value, step_seq, set_at
    FROM {schema}.events WHERE partition = %(partition)s
) TO STDOUT;

-- name: copy_in_events
COPY {schema}.events (partition, workflow_id, key, value, step_seq, set_at) FROM STDIN;

-- name: copy_out_outbox
COPY (
    SELECT partition, message_id, kind, body, created_at
    FROM {schema}.outbox WHERE partition = %(partition)s
) TO STDOUT;

-- name: copy_in_outbox
COPY {schema}.outbox (partition, message_id, kind, body, created_at) FROM STDIN;

-- name: copy_out_schedules
COPY (
    SELECT partition, name, workflow_name, app, app_version, input, timeout_seconds,
           retention_seconds, cron, timezone, missed, catchup_seconds, paused, next_tick_at,
           last_tick_at, last_run_id, source, created_at, updated_at, queue
    FROM {schema}.schedules WHERE partition = %(partition)s
) TO STDOUT;

-- name: copy_in_schedules
COPY {schema}.schedules (
    partition, name, workflow_name, app, app_version, input, timeout_seconds,
    retention_seconds, cron, timezone, missed, catchup_seconds, paused, next_tick_at,
    last_tick_at, last_run_id, source, created_at, updated_at, queue
) FROM STDIN;

-- name: delete_partition_schedules
DELETE FROM {schema}.schedules WHERE partition = %(partition)s;

-- name: delete_partition_outbox
DELETE FROM {schema}.outbox WHERE partition = %(partition)s;

-- name: delete_partition_signals
DELETE FROM {schema}.signals WHERE partition = %(partition)s;

-- name: delete_partition_events
DELETE FROM {schema}.events WHERE partition = %(partition)s;

-- name: delete_partition_steps
DELETE FROM {schema}.steps WHERE partition = %(partition)s;

-- name: delete_partition_workflows
DELETE FROM {schema}.workflows WHERE partition = %(partition)s;

-- name: ownership_take
-- The flip: committed in the same transaction as the copied rows.
INSERT INTO {schema}.partition_ownership (partition, epoch, state)
VALUES (%(partition)s, %(epoch)s, 'owned');

-- name: ownership_drop
DELETE FROM {schema}.partition_ownership WHERE partition = %(partition)s;

-- name: partition_row_counts
SELECT (SELECT count(*) FROM {schema}.workflows WHERE partition = %(partition)s) AS workflows,
       (SELECT count(*) FROM {schema}.steps WHERE partition = %(partition)s) AS steps;

-- name: node_row_counts
SELECT (SELECT count(*) FROM {schema}.workflows) AS workflows,
       (SELECT count(*) FROM {schema}.steps) AS steps,
       (SELECT count(*) FROM {schema}.partition_ownership) AS partitions;

-- name: placement_get
SELECT version, partition_count, nodes, owners FROM {schema}.placements
WHERE version = %(version)s;

-- name: partitions_with_rows
SELECT partition FROM {schema}.workflows GROUP BY partition
UNION
SELECT partition FROM {schema}.steps GROUP BY partition
UNION
SELECT partition FROM {schema}.signals GROUP BY partition
UNION
SELECT partition FROM {schema}.events GROUP BY partition
UNION
SELECT partition FROM {schema}.outbox GROUP BY partition
UNION
SELECT partition FROM {schema}.schedules GROUP BY partition;

-- name: move_journal_done
-- Partition moves this node (their source) finished: ever, and in the last hour (the
-- dashboard's rebalance progress and the partitions-moved counter).
SELECT count(*)::bigint AS total,
       count(*) FILTER (WHERE updated_at > now() - interval '1 hour')::bigint AS last_hour
FROM {schema}.partition_moves
WHERE phase = 'done';
