-- Isolation between apps: a workflow belongs to the App that started it, and a worker claims
-- only its own app's workflows, and only names its code defines (a name no worker knows stays
-- pending and visible instead of bouncing between workers). Rows started before this
-- migration belong to no app (''): `cluster status` lists them as waiting for a worker.
ALTER TABLE {schema}.workflows ADD COLUMN app text NOT NULL DEFAULT '';
ALTER TABLE {schema}.workflows ALTER COLUMN app DROP DEFAULT;

-- The backlog claim path, per app: it walks one partition at a time through this index and
-- never steps over another app's backlog. The node-wide (run_at) index stays without `app`:
-- with `app` in front, a fresh table's missing statistics made it look as cheap as this one
-- and the backlog claim walked it, filtering out every other partition (120 ms per claim,
-- a tenth of the throughput). The short-queue claim filters `app` on it instead.
DROP INDEX {schema}.workflows_runnable_idx;
CREATE INDEX workflows_runnable_idx
    ON {schema}.workflows (app, partition, run_at) WHERE status = 'pending';

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
