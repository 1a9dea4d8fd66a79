"""What `shardflow get --steps` says about shardflow's own positions in a workflow's history:
waits, signals, events, children and compensations, in words."""

from __future__ import annotations

from typing import Any

from shardflow.engine.context import (
    CANCELLED_STEP,
    CHILD_RESULT_STEP_PREFIX,
    COMPENSATE_STEP_PREFIX,
    EVENT_STEP_PREFIX,
    FIRST_TO_END_STEP,
    PATCH_STEP_PREFIX,
    SIGNAL_STEP_PREFIX,
    SLEEP_STEP,
    START_CHILD_STEP_PREFIX,
    WAIT_DEADLINE_STEP,
)
from shardflow.storage.records import StepRecord


def about(step: StepRecord) -> str | None:
    """A sentence for a position shardflow recorded, None for a user's step."""
    name, out = step.step_name, step.output
    if name == SLEEP_STEP:
        return f"durable sleep until {out}"
    if name == WAIT_DEADLINE_STEP:
        return f"a wait with its deadline at {out}" if out else "a wait without a timeout"
    if name.startswith(SIGNAL_STEP_PREFIX):
        signal = name[len(SIGNAL_STEP_PREFIX) :]
        if _timed_out(out):
            return f"waited for signal {signal!r}: timed out"
        return f"received signal {signal!r} (id {_get(out, 'signal_id')})"
    if name.startswith(EVENT_STEP_PREFIX):
        return f"published event {name[len(EVENT_STEP_PREFIX) :]!r}"
    if name.startswith(START_CHILD_STEP_PREFIX):
        return (
            f"started child {_get(out, 'workflow_id')!r} ({name[len(START_CHILD_STEP_PREFIX) :]},"
            f" routing key {_get(out, 'routing_key')!r})"
        )
    if name.startswith(CHILD_RESULT_STEP_PREFIX):
        ended = _get(out, "payload") or {}
        return f"child {name[len(CHILD_RESULT_STEP_PREFIX) :]!r} ended {ended.get('status')}"
    if name == FIRST_TO_END_STEP:
        if _timed_out(out):
            return "raced children: none ended before the timeout"
        return f"raced children: the first to end was {_get(out, 'signal_id')}"
    if name.startswith(COMPENSATE_STEP_PREFIX):
        return f"registered compensation {name[len(COMPENSATE_STEP_PREFIX) :]}"
    if name == CANCELLED_STEP:
        return "cancelled: the registered compensations follow, newest first"
    if name.startswith(PATCH_STEP_PREFIX):
        return f"took the new path of patch {name[len(PATCH_STEP_PREFIX) :]!r} (ctx.patched)"
    return None


def _get(output: Any, key: str) -> Any:
    return output.get(key) if isinstance(output, dict) else None


def _timed_out(output: Any) -> bool:
    return bool(_get(output, "timed_out"))
