-- Suspects (runnable workflows whose lease expired before) are looked for on every claim
-- round; a partial index that holds only them keeps that look-up cheap however long the
-- backlog of ordinary pending work is.
CREATE INDEX workflows_suspect_idx
    ON {schema}.workflows (run_at) WHERE status = 'pending' AND lease_expiries > 0;

-- The workflows table is a queue: every claim and completion updates rows that the claim
-- indexes cover, leaving dead index entries that claims must step over until a vacuum.
-- Vacuum and analyze it after a small fraction of changes, not the default 20%, so the
-- claim path stays short as the table grows; leave room in each page for updates.
ALTER TABLE {schema}.workflows SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
