-- shardflow schema: the whole current schema in one file, for reading.
-- A test proves that applying every migration in sql/migrations gives exactly this.
-- Every table that belongs to a workflow has `partition` as the first column of its primary
-- key: it is the Citus distribution column, the unit a rebalance copies, and the value every
-- claim and every write names exactly once.

-- Which cluster this node belongs to and what it is called there. One row.
CREATE TABLE {schema}.node_identity (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cluster_id text NOT NULL,
    node_name text NOT NULL,
    partition_count integer NOT NULL CHECK (partition_count > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every published placement, newest = highest version. Every node keeps the whole map, so
-- any reachable node can tell a client where each partition lives.
CREATE TABLE {schema}.placements (
    version bigint PRIMARY KEY,
    partition_count integer NOT NULL,
    nodes jsonb NOT NULL,          -- list of objects: name, conninfo (no password), weight
    owners text[] NOT NULL,        -- owners[partition + 1] = node name
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The partitions this node owns: the write fence. A row exists only while the node owns
-- (or is moving away) the partition; every write locks it FOR SHARE in its own transaction.
CREATE TABLE {schema}.partition_ownership (
    partition integer PRIMARY KEY,
    epoch bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('owned', 'moving')),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {schema}.workflows (
    partition integer NOT NULL,
    workflow_id text NOT NULL,
    name text NOT NULL,
    -- The App that started it: only that app's workers claim it (migration 0005).
    app text NOT NULL,
    routing_key text,
    status text NOT NULL
        CONSTRAINT workflows_status_check
        CHECK (status IN ('queued', 'pending', 'running', 'succeeded', 'failed', 'cancelled',
                          'dead', 'stuck')),
    input json,
    output json,
    error json,
    run_at timestamptz NOT NULL DEFAULT now(),
    deadline_at timestamptz,
    claim_count integer NOT NULL DEFAULT 0,
    -- Retry state of the first step that has no checkpoint yet (steps run in order).
    retry_step_seq integer,
    retry_attempts integer NOT NULL DEFAULT 0,
    lease_token uuid,
    lease_owner text,
    lease_expires_at timestamptz,
    claimed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    -- Leases that expired in a row (worker died): past worker.max_lease_expiries, dead-lettered.
    lease_expiries integer NOT NULL DEFAULT 0,
    -- Signals ever sent to it (their arrival order), and the signal name it waits for while
    -- released (a send of that name makes it runnable at once). Migration 0006.
    signal_seq bigint NOT NULL DEFAULT 0,
    waiting_for text,
    -- A child's parent (id and routing key), and whether its end reached the parent
    -- (migration 0007).
    parent_id text,
    parent_key text,
    parent_told boolean NOT NULL DEFAULT false,
    -- Cancelled with compensations registered: a worker runs them, then it ends cancelled.
    cancel_requested boolean NOT NULL DEFAULT false,
    -- The caller's trace context when tracing is configured (migration 0008).
    trace_context text,
    -- How long it is kept once ended (fixed at start; NULL: for ever), and when it may be
    -- removed (set as it ends; NULL keeps it). Migration 0010.
    retention_seconds double precision,
    purge_at timestamptz,
    -- The starting App's version (NULL: unversioned). Migration 0012.
    app_version text,
    -- Flow control (migration 0014): the queue it waits in while 'queued' (NULL: none), its
    -- priority there (smaller first), its concurrency key, and when it was admitted.
    queue text,
    priority integer NOT NULL DEFAULT 0,
    concurrency_key text,
    dequeued_at timestamptz,
    -- The timeout it was started with (an admission gives it all of it from then on).
    timeout_seconds double precision,
    PRIMARY KEY (partition, workflow_id)
);

-- A queue table: vacuumed and analyzed after a small fraction of changes (see migration 0004).
ALTER TABLE {schema}.workflows SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim paths: runnable rows only, so finished workflows never slow a claim. The backlog
-- claim walks (app, partition, run_at), so another app's backlog never slows it; the
-- short-queue claim reads the node's oldest through (run_at) (see migration 0005 for why
-- that one has no `app`).
CREATE INDEX workflows_runnable_idx
    ON {schema}.workflows (app, partition, run_at) WHERE status = 'pending';
CREATE INDEX workflows_ready_idx
    ON {schema}.workflows (run_at) WHERE status = 'pending';
-- Suspects (their lease expired before) are looked for on every claim round.
CREATE INDEX workflows_suspect_idx
    ON {schema}.workflows (run_at) WHERE status = 'pending' AND lease_expiries > 0;
-- Heartbeats renew by owner; the reaper finds expired leases.
CREATE INDEX workflows_lease_owner_idx
    ON {schema}.workflows (lease_owner) WHERE status = 'running';
CREATE INDEX workflows_lease_expiry_idx
    ON {schema}.workflows (lease_expires_at) WHERE status = 'running';
-- Listing across the cluster, newest first.
CREATE INDEX workflows_created_idx
    ON {schema}.workflows (created_at DESC, workflow_id DESC);

-- The collector's scan (retention): removable rows only, oldest first per partition.
CREATE INDEX workflows_purge_idx
    ON {schema}.workflows (partition, purge_at) WHERE purge_at IS NOT NULL;

-- Admission to a queue (migration 0014): waiting rows in admission order, the slots held,
-- the admissions in the rate window. Rows of no queue are in none of these indexes.
CREATE INDEX workflows_queued_idx
    ON {schema}.workflows (app, queue, priority, run_at) WHERE status = 'queued';
CREATE INDEX workflows_queue_slots_idx
    ON {schema}.workflows (app, queue, concurrency_key)
    WHERE queue IS NOT NULL AND status IN ('pending', 'running');
CREATE INDEX workflows_queue_admitted_idx
    ON {schema}.workflows (app, queue, dequeued_at) WHERE dequeued_at IS NOT NULL;

-- The relay's scan: ended children whose parent has not been told.
CREATE INDEX workflows_untold_parents_idx
    ON {schema}.workflows (partition)
    WHERE parent_id IS NOT NULL AND NOT parent_told
      AND status IN ('succeeded', 'failed', 'cancelled', 'dead');

-- One checkpoint per (workflow, step sequence): the replay log.
CREATE TABLE {schema}.steps (
    partition integer NOT NULL,
    workflow_id text NOT NULL,
    step_seq integer NOT NULL CHECK (step_seq >= 0),
    step_name text NOT NULL,
    status text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    output json,
    error json,
    attempts integer NOT NULL DEFAULT 1,
    lease_token uuid NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, workflow_id, step_seq),
    FOREIGN KEY (partition, workflow_id)
        REFERENCES {schema}.workflows (partition, workflow_id) ON DELETE CASCADE
);

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

-- Singleton services on a node (the reaper) hold a lease row, not an advisory lock: advisory
-- locks do not survive a transaction pooler and are per node on Citus.
CREATE TABLE {schema}.service_leases (
    service text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Live workers on this node, refreshed by their heartbeat: which app and workflow names they
-- run. `cluster status` uses it to show pending work that no live worker can run. A row whose
-- expires_at passed belongs to a worker that stopped beating (the reaper prunes old ones).
CREATE TABLE {schema}.workers (
    owner text PRIMARY KEY,
    app text NOT NULL,
    workflow_names text[] NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    -- node -> workflows it claimed there since it started (migration 0009).
    claims jsonb NOT NULL DEFAULT '{{}}'::jsonb
);

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

-- Who did what to the cluster or to a workflow, and when (arguments with secrets redacted).
CREATE TABLE {schema}.audit_log (
    audit_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    arguments jsonb NOT NULL DEFAULT '{{}}'::jsonb
);
CREATE INDEX audit_log_at_idx ON {schema}.audit_log (at DESC);

-- What the workers of each app can run, registered by every worker on every node it serves:
-- the SQL API takes a workflow's app, input shape, timeout and retention from here.
-- The SQL API's functions (shardflow.start, signal, status, result, partition_for) are in
-- sql/migrations/0011_sql_api.sql (start and signal replaced by 0014_flow_control.sql):
-- functions are replaced whole, never altered.
CREATE TABLE {schema}.workflow_catalog (
    app text NOT NULL,
    name text NOT NULL,
    input text NOT NULL CHECK (input IN ('none', 'optional', 'required')),
    timeout_seconds double precision,
    retention_seconds double precision,
    registered_at timestamptz NOT NULL DEFAULT now(),
    -- The queue a start enters (migration 0014; NULL: none).
    queue text,
    PRIMARY KEY (app, name)
);

-- Schedules: workflows started on a clock (migration 0013). A schedule lives on the partition
-- of its name, and so do its runs (their routing key is the schedule's name).
CREATE TABLE {schema}.schedules (
    partition integer NOT NULL,
    name text NOT NULL,
    workflow_name text NOT NULL,
    app text NOT NULL,
    app_version text,
    input json,
    timeout_seconds double precision,
    retention_seconds double precision,
    cron text NOT NULL,
    timezone text NOT NULL,
    missed text NOT NULL CHECK (missed IN ('skip', 'once', 'all')),
    catchup_seconds double precision NOT NULL,
    paused boolean NOT NULL DEFAULT false,
    next_tick_at timestamptz NOT NULL,
    last_tick_at timestamptz,
    last_run_id text,
    source text NOT NULL CHECK (source IN ('code', 'api')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- The queue its runs enter (migration 0014; NULL: none).
    queue text,
    PRIMARY KEY (partition, name)
);
CREATE INDEX schedules_due_idx ON {schema}.schedules (partition, next_tick_at) WHERE NOT paused;
