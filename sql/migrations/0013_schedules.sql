-- Schedules (issue 13): workflows started on a clock. A schedule lives on the partition of its
-- name (distributed and moved with the workflow tables), and so do its runs: they carry the
-- schedule's name as routing key, so a tick's start and the schedule's advance commit in one
-- local transaction. A run's id is the schedule's name and the tick's time: however many
-- schedulers try, a tick starts one workflow.
CREATE TABLE {schema}.schedules (
    partition integer NOT NULL,
    name text NOT NULL,
    -- What each tick starts: the workflow, its app and what a start needs to know.
    workflow_name text NOT NULL,
    app text NOT NULL,
    app_version text,
    input json,
    timeout_seconds double precision,
    retention_seconds double precision,
    -- When: a cron expression (5 fields, or 6 with seconds) in an IANA time zone.
    cron text NOT NULL,
    timezone text NOT NULL,
    -- Ticks missed while no worker ran: skip, once or all (within catchup_seconds).
    missed text NOT NULL CHECK (missed IN ('skip', 'once', 'all')),
    catchup_seconds double precision NOT NULL,
    paused boolean NOT NULL DEFAULT false,
    next_tick_at timestamptz NOT NULL,
    last_tick_at timestamptz,
    last_run_id text,
    -- 'code': declared by @app.workflow(schedule=...) (its workers keep it up to date);
    -- 'api': made by client.schedules.create or `shardflow schedule create`.
    source text NOT NULL CHECK (source IN ('code', 'api')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, name)
);
-- The scheduler's question, every second: which schedules of these partitions are due.
CREATE INDEX schedules_due_idx ON {schema}.schedules (partition, next_tick_at) WHERE NOT paused;
