-- Child workflows (issue 11). A child records its parent: the id and the routing key (the
-- parent's partition, which may be on another node). parent_told records that the child's
-- end (succeeded, failed, cancelled or dead-lettered) was delivered to the parent as a
-- signal; the relay looks for ended children whose parent has not been told.
ALTER TABLE {schema}.workflows ADD COLUMN parent_id text;
ALTER TABLE {schema}.workflows ADD COLUMN parent_key text;
ALTER TABLE {schema}.workflows ADD COLUMN parent_told boolean NOT NULL DEFAULT false;
-- A cancelled workflow that registered compensations (a saga) stays pending with this set
-- until a worker has run them; then it ends `cancelled`.
ALTER TABLE {schema}.workflows ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
CREATE INDEX workflows_untold_parents_idx
    ON {schema}.workflows (partition)
    WHERE parent_id IS NOT NULL AND NOT parent_told
      AND status IN ('succeeded', 'failed', 'cancelled', 'dead');

-- Messages from a workflow to another partition (a child's start, a cancellation for a
-- child), written in the transaction of the sender's checkpoint or cancellation, delivered by
-- the relay of the sender's node, then deleted. A delivery that is repeated (the relay died
-- between delivering and deleting) changes nothing: starts are idempotent by workflow id and
-- cancelling an ended workflow is a no-op.
CREATE TABLE {schema}.outbox (
    partition integer NOT NULL,
    message_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('start_child', 'cancel_child')),
    body json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, message_id)
);
