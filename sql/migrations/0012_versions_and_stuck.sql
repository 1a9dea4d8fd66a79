-- Versioning (issue 13). app_version: the version of the App that started the workflow
-- (App(version=...); NULL when it had none), so `shardflow list --version` shows what still
-- runs under old code. Status 'stuck': a run whose code no longer matches its recorded history
-- (NonDeterminismError) is parked, not failed: visible, holding nothing, never removed by
-- retention, and runnable again with `shardflow resume ID` once compatible code is deployed.
ALTER TABLE {schema}.workflows ADD COLUMN app_version text;
ALTER TABLE {schema}.workflows DROP CONSTRAINT workflows_status_check;
ALTER TABLE {schema}.workflows ADD CONSTRAINT workflows_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'dead', 'stuck'));
