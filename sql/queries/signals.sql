-- Signals and events (issue 11). Every statement names one partition and one workflow, so on
-- Citus each is a router statement on the workflow's shard group; the sends and receives run
-- as a few such statements in one transaction on the workflow's node.

-- name: signal_wake
-- A send, second statement (after signal_count locked the row): makes the workflow runnable
-- now if it is released and waiting for this name (its own statement: Citus refuses now()
-- inside a CASE).
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
UPDATE {schema}.workflows
SET run_at = now(), updated_at = now()
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND status = 'pending' AND waiting_for = %(name)s
  AND EXISTS (SELECT 1 FROM fence)
RETURNING workflow_id;

-- name: signal_count
-- A send, first statement: counts the signal in the workflow's row (the row lock serialises
-- concurrent sends, so each gets the next number, and orders the send with a release). Only
-- queued, pending or running workflows take signals.
WITH fence AS (
    SELECT epoch FROM {schema}.partition_ownership
    WHERE partition = %(partition)s AND state = 'owned'
    FOR SHARE
)
UPDATE {schema}.workflows
SET signal_seq = signal_seq + 1, updated_at = now()
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND status IN ('queued', 'pending', 'running')
  AND EXISTS (SELECT 1 FROM fence)
RETURNING signal_seq;

-- name: signal_insert
-- A send, second statement: nothing when this signal_id was stored before (the caller then
-- rolls the count back: a resend changes nothing).
INSERT INTO {schema}.signals (partition, workflow_id, signal_id, name, seq, payload)
VALUES (%(partition)s, %(workflow_id)s, %(signal_id)s, %(name)s, %(seq)s, %(payload)s::json)
ON CONFLICT (partition, workflow_id, signal_id) DO NOTHING
RETURNING seq;

-- name: signal_known
-- A resend to a workflow that has ended since: the signal_id it already took is a no-op, not
-- an error.
SELECT 1 AS known FROM {schema}.signals
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND signal_id = %(signal_id)s;

-- name: signal_unread
-- A wait, first statement: how many signals the workflow was ever sent, and the oldest
-- unread one of this name (or of these signal ids: children's ends; peek: read ones too, for
-- a race that only looks), from one snapshot (a signal counted here but not yet visible
-- cannot be: both come from the same committed state). Always one row while it exists.
SELECT w.signal_seq, s.signal_id, s.payload::text AS payload
FROM {schema}.workflows AS w
LEFT JOIN LATERAL (
    SELECT signal_id, payload FROM {schema}.signals
    WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s AND name = %(name)s
      AND (received_at_step IS NULL OR %(peek)s)
      AND (%(signal_ids)s::text[] IS NULL OR signal_id = ANY(%(signal_ids)s::text[]))
    ORDER BY seq
    LIMIT 1
) AS s ON true
WHERE w.partition = %(partition)s AND w.workflow_id = %(workflow_id)s;

-- name: signal_receive
-- A wait, second statement: the signal is read by the wait at step_seq, in the transaction
-- that writes that wait's checkpoint (step_record), so it is received exactly once.
UPDATE {schema}.signals
SET received_at_step = %(step_seq)s
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
  AND signal_id = %(signal_id)s AND received_at_step IS NULL
RETURNING signal_id;

-- name: event_set
-- ctx.set_event, in the transaction of its checkpoint. now() sits in VALUES and DO UPDATE
-- uses EXCLUDED: Citus refuses now() inside ON CONFLICT DO UPDATE.
INSERT INTO {schema}.events (partition, workflow_id, key, value, step_seq, set_at)
VALUES (%(partition)s, %(workflow_id)s, %(key)s, %(value)s::json, %(step_seq)s, now())
ON CONFLICT (partition, workflow_id, key) DO UPDATE
SET value = EXCLUDED.value, step_seq = EXCLUDED.step_seq, set_at = EXCLUDED.set_at;

-- name: event_get
SELECT key, value, step_seq, set_at FROM {schema}.events
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s AND key = %(key)s;

-- name: event_list
SELECT key, value, step_seq, set_at FROM {schema}.events
WHERE partition = %(partition)s AND workflow_id = %(workflow_id)s
ORDER BY set_at, key;
