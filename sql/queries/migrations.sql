-- name: migrations_bootstrap
-- The schema and the table that records applied migrations; safe to run every time.
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_lock
-- Serialises migrators across processes for the length of one migration's transaction.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: migrations_applied
SELECT version FROM {schema}.schema_migrations ORDER BY version;

-- name: migrations_record
INSERT INTO {schema}.schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: schema_drop
DROP SCHEMA IF EXISTS {schema} CASCADE;
