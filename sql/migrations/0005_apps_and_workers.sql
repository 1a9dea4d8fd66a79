-- Isolation between apps: a workflow belongs to the App that started it, and a worker claims
-- only its own app's workflows, and only names its code defines (a name no worker knows stays
-- pending and visible instead of bouncing between workers). Rows started before this
-- migration belong to no app (''): `cluster status` lists them as waiting for a worker.
ALTER TABLE {schema}.workflows ADD COLUMN app text NOT NULL DEFAULT '';
ALTER TABLE {schema}.workflows ALTER COLUMN app DROP DEFAULT;

-- The claim paths, now per app: a claim never steps over another app's backlog.
DROP INDEX {schema}.workflows_runnable_idx;
DROP INDEX {schema}.workflows_ready_idx;
DROP INDEX {schema}.workflows_suspect_idx;
CREATE INDEX workflows_runnable_idx
    ON {schema}.workflows (app, partition, run_at) WHERE status = 'pending';
CREATE INDEX workflows_ready_idx
    ON {schema}.workflows (app, run_at) WHERE status = 'pending';
CREATE INDEX workflows_suspect_idx
    ON {schema}.workflows (app, run_at) WHERE status = 'pending' AND lease_expiries > 0;

-- Live workers on this node, refreshed by their heartbeat: which app and workflow names they
-- run. `cluster status` uses it to show pending work that no live worker can run. A row whose
-- expires_at passed belongs to a worker that stopped beating (the reaper prunes old ones).
CREATE TABLE {schema}.workers (
    owner text PRIMARY KEY,
    app text NOT NULL,
    workflow_names text[] NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
