-- Retention (issue 13): when a finished workflow may be removed. Set when it ends, from its
-- workflow's retention (or the cluster's default); NULL keeps it (dead-lettered, running,
-- pending, and ended ones whose retention is "forever"). The index holds only rows that have
-- one, oldest first per partition, so the collector reads exactly what it removes.
ALTER TABLE {schema}.workflows ADD COLUMN purge_at timestamptz;
CREATE INDEX workflows_purge_idx
    ON {schema}.workflows (partition, purge_at) WHERE purge_at IS NOT NULL;
