-- name: schema_catalog
-- A canonical description of a schema (columns, constraints, indexes), used to prove that
-- the migrations build exactly the schema in sql/schema.sql.
SELECT 'column' AS kind, c.relname || '.' || a.attname AS object,
       format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') AS definition
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relname <> 'schema_migrations'
UNION ALL
SELECT 'constraint', c.relname || '.' || con.conname,
       replace(pg_get_constraintdef(con.oid), %(schema)s || '.', '')
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname <> 'schema_migrations'
UNION ALL
SELECT 'index', i.indexname, replace(i.indexdef, %(schema)s || '.', '')
FROM pg_indexes i
WHERE i.schemaname = %(schema)s AND i.tablename <> 'schema_migrations'
UNION ALL
SELECT 'storage', c.relname, array_to_string(c.reloptions, ', ')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.reloptions IS NOT NULL
ORDER BY 1, 2;

-- name: hygiene
-- What a healthy node looks like after any scenario.
SELECT (SELECT count(*) FROM pg_prepared_xacts) AS prepared_xacts,
       -- pg_advisory_lock's own classes (objsubid 1: bigint key, 2: two int4 keys). Citus
       -- takes advisory locks of classes 4..16 for its shard bookkeeping inside its own
       -- transactions (2PC recovery, shard writes): those are not ours to count.
       (SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND objsubid IN (1, 2)) AS advisory_locks,
       -- Left idle in a transaction for seconds: a leak. A transaction of several statements
       -- (Citus: a claim, a checkpoint batch) is idle between them for microseconds, and
       -- Citus's own connections between nodes (citus_internal...) are not ours.
       (SELECT count(*) FROM pg_stat_activity
        WHERE state = 'idle in transaction' AND pid <> pg_backend_pid()
          AND state_change < now() - interval '2 seconds'
          AND application_name NOT LIKE 'citus%%') AS idle_in_transaction,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
           AS connections,
       current_setting('max_connections')::integer AS max_connections;
