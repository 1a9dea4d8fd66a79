-- The dashboard's claims/s per node (issue 12): each heartbeat writes how many workflows the
-- worker claimed on every node since it started (node name -> count). One row per worker
-- holds every node's count, because on Citus a worker registers once for all nodes.
ALTER TABLE {schema}.workers ADD COLUMN claims jsonb NOT NULL DEFAULT '{{}}'::jsonb;
