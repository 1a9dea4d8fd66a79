-- Least-privilege roles: rendered by `shardflow roles create` (role names are placeholders).
-- The roles are NOLOGIN: grant them to login users. Run by the schema owner with
-- CREATEROLE. Idempotent. The runtime never needs DDL or superuser:
--   admin  - membership and rebalancing: reads and writes every table, no DDL;
--   worker - claims, checkpoints, finishes; may not touch placement or ownership;
--   client - starts, reads, cancels and requeues workflows.
-- SELECT ... FOR SHARE (the write fence) needs an UPDATE privilege on the locked table, so
-- worker and client get UPDATE on the harmless updated_at column of partition_ownership only.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {admin_name}) THEN
        CREATE ROLE {admin} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {worker_name}) THEN
        CREATE ROLE {worker} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {client_name}) THEN
        CREATE ROLE {client} NOLOGIN;
    END IF;
END
$roles$;
REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {worker}, {client};
GRANT USAGE ON SCHEMA {schema} TO {admin}, {worker}, {client};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {admin};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {admin}, {client};

-- DELETE: the collector removes finished workflows past their retention (their checkpoints,
-- signals and events go by ON DELETE CASCADE, which runs as the tables' owner).
GRANT SELECT, UPDATE, DELETE ON {schema}.workflows TO {worker};
GRANT SELECT, INSERT ON {schema}.steps TO {worker};
GRANT SELECT ON {schema}.signals TO {worker};
GRANT UPDATE (received_at_step) ON {schema}.signals TO {worker};
GRANT SELECT, INSERT, UPDATE ON {schema}.events TO {worker};
-- Children: a child on the parent's partition is inserted by the parent's worker; the relay
-- delivers the outbox, starts children elsewhere and tells parents (client privileges).
GRANT INSERT ON {schema}.workflows TO {worker};
GRANT SELECT, INSERT, DELETE ON {schema}.outbox TO {worker};
GRANT INSERT ON {schema}.signals TO {worker};
GRANT INSERT ON {schema}.audit_log TO {worker};
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.service_leases TO {worker};
-- The heartbeat registers the worker (app, names, claims per node); the reaper prunes.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.workers TO {worker};
GRANT SELECT ON {schema}.placements, {schema}.node_identity, {schema}.partition_ownership
    TO {worker};
GRANT UPDATE (updated_at) ON {schema}.partition_ownership TO {worker};

-- Schedules: the worker's scheduler advances them (and registers @app.workflow(schedule=)).
GRANT SELECT, INSERT, UPDATE ON {schema}.schedules TO {worker};
-- The SQL API's catalog: each worker registers what its app can run.
GRANT SELECT, INSERT, UPDATE ON {schema}.workflow_catalog TO {worker};

GRANT SELECT, INSERT ON {schema}.workflows TO {client};
-- output, deadline_at and the retry state: `retry` makes a failed workflow runnable again;
-- claim_count: a fork with copied checkpoints counts as claimed once.
GRANT UPDATE (status, run_at, error, updated_at, completed_at, lease_token, lease_owner,
              lease_expires_at, lease_expiries, signal_seq, parent_told, cancel_requested,
              waiting_for, purge_at, output, deadline_at, retry_step_seq, retry_attempts,
              claim_count)
    ON {schema}.workflows TO {client};
-- Retry drops the checkpoints (and events) from the failed step on and makes the signals
-- taken there unread; fork copies checkpoints and events into the new workflow.
GRANT INSERT, DELETE ON {schema}.steps, {schema}.events TO {client};
GRANT UPDATE (received_at_step) ON {schema}.signals TO {client};
GRANT SELECT, INSERT, DELETE ON {schema}.outbox TO {client};
GRANT SELECT, INSERT ON {schema}.signals TO {client};
GRANT SELECT ON {schema}.events TO {client};
GRANT SELECT ON {schema}.steps, {schema}.placements, {schema}.node_identity,
    {schema}.partition_ownership TO {client};
GRANT UPDATE (updated_at) ON {schema}.partition_ownership TO {client};
GRANT INSERT ON {schema}.audit_log TO {client};

-- Schedules: created, paused, resumed, deleted and backfilled by clients.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.schedules TO {client};

-- The SQL API (migration 0011): the client role only; the functions run with its privileges.
GRANT SELECT ON {schema}.workflow_catalog TO {client};
GRANT EXECUTE ON FUNCTION {schema}.start(text, json, text, text, text),
    {schema}.status(text, text), {schema}.result(text, text),
    {schema}.signal(text, text, json, text, text), {schema}.owned_partition(text)
    TO {client};
