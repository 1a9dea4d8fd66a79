-- Retention (issue 13). retention_seconds: how long the workflow is kept once it ends, fixed
-- at its start from its workflow's retention (or the cluster's); NULL keeps it for ever (and
-- rows started before this migration). purge_at: when it may be removed, set in the statement
-- that ends it; NULL while it runs, and for dead-lettered ones. The index holds only rows that
-- have one, oldest first per partition, so the collector reads exactly what it removes.
ALTER TABLE {schema}.workflows ADD COLUMN retention_seconds double precision;
ALTER TABLE {schema}.workflows ADD COLUMN purge_at timestamptz;
CREATE INDEX workflows_purge_idx
    ON {schema}.workflows (partition, purge_at) WHERE purge_at IS NOT NULL;
