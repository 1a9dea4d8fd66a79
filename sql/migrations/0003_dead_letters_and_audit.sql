-- Poison workflows: a workflow whose lease expired (its worker died) too many times in a row
-- is dead-lettered instead of being run again; an operator re-queues it after a fix.
ALTER TABLE {schema}.workflows DROP CONSTRAINT workflows_status_check;
ALTER TABLE {schema}.workflows ADD CONSTRAINT workflows_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'dead'));
ALTER TABLE {schema}.workflows ADD COLUMN lease_expiries integer NOT NULL DEFAULT 0;

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
