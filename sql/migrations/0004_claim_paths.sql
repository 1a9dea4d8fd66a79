-- Suspects (runnable workflows whose lease expired before) are looked for on every claim
-- round; a partial index that holds only them keeps that look-up cheap however long the
-- backlog of ordinary pending work is.
CREATE INDEX workflows_suspect_idx
    ON {schema}.workflows (run_at) WHERE status = 'pending' AND lease_expiries > 0;
