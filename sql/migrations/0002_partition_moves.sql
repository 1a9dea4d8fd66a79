-- The journal of partition moves, kept on the source node (the one giving the partition up).
-- A move's phases: fenced -> flipped -> published -> done. Re-running a rebalance reads the
-- journal and the ownership rows of both nodes to resume a move where it stopped.
CREATE TABLE {schema}.partition_moves (
    move_id uuid PRIMARY KEY,
    partition integer NOT NULL,
    source_node text NOT NULL,
    target_node text NOT NULL,
    phase text NOT NULL CHECK (phase IN ('fenced', 'flipped', 'published', 'done')),
    placement_version bigint NOT NULL,
    rows_copied bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- At most one unfinished move per partition.
CREATE UNIQUE INDEX partition_moves_active_idx
    ON {schema}.partition_moves (partition) WHERE phase <> 'done';
