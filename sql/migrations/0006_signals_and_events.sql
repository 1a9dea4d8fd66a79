-- Signals and events (issue 11). Both belong to a workflow: `partition` leads their primary
-- keys, so they live in the workflow's Citus shard group and move with its partition.

-- How many signals were ever sent to the workflow, bumped by each send under the workflow's
-- row lock: the arrival order of its signals, which travels with the row in a move (a
-- node-local sequence would restart on the target). A release compares it with the count the
-- run saw, so a signal that arrives while the run is letting go wakes it at once.
ALTER TABLE {schema}.workflows ADD COLUMN signal_seq bigint NOT NULL DEFAULT 0;
-- The signal name a released workflow waits for (NULL: none); a send of that name makes it
-- runnable at once.
ALTER TABLE {schema}.workflows ADD COLUMN waiting_for text;

-- Signals sent to a workflow. signal_id makes a resend a no-op; received_at_step is the
-- position of the wait that received it (NULL while unread), written in the same
-- transaction as that wait's checkpoint, so each signal is received exactly once.
CREATE TABLE {schema}.signals (
    partition integer NOT NULL,
    workflow_id text NOT NULL,
    signal_id text NOT NULL,
    name text NOT NULL,
    seq bigint NOT NULL,
    payload json,
    sent_at timestamptz NOT NULL DEFAULT now(),
    received_at_step integer,
    PRIMARY KEY (partition, workflow_id, signal_id),
    FOREIGN KEY (partition, workflow_id)
        REFERENCES {schema}.workflows (partition, workflow_id) ON DELETE CASCADE
);
CREATE INDEX signals_unread_idx
    ON {schema}.signals (partition, workflow_id, name, seq) WHERE received_at_step IS NULL;

-- Events a workflow published (ctx.set_event): the latest value per key, written in the same
-- transaction as the checkpoint of the set_event call, so a replay does not write it again.
CREATE TABLE {schema}.events (
    partition integer NOT NULL,
    workflow_id text NOT NULL,
    key text NOT NULL,
    value json,
    step_seq integer NOT NULL,
    set_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, workflow_id, key),
    FOREIGN KEY (partition, workflow_id)
        REFERENCES {schema}.workflows (partition, workflow_id) ON DELETE CASCADE
);
