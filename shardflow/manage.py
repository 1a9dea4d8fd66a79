"""What a fork may copy (``client.fork``): the checks on the source's first checkpoints and the
events they published. The writes are in storage/manage_store.py."""

from __future__ import annotations

from typing import Any

from shardflow.engine.context import EVENT_STEP_PREFIX, START_CHILD_STEP_PREFIX
from shardflow.errors import InvalidInput
from shardflow.storage.manage_store import ForkSource


def check_fork(source_id: str, source: ForkSource, from_step: int) -> None:
    """The first ``from_step`` checkpoints exist, and none of them started a child (the child
    would answer the source, not the fork)."""
    if len(source.steps) < from_step:
        raise InvalidInput(
            f"workflow {source_id!r} has {len(source.steps)} checkpoints, fewer than "
            f"from_step={from_step}: `shardflow get {source_id} --steps` lists them"
        )
    for step in source.steps:
        if step["step_name"].startswith(START_CHILD_STEP_PREFIX):
            raise InvalidInput(
                f"checkpoint {step['step_seq']} of {source_id!r} started a child workflow, which "
                f"reports to {source_id!r}, not to a fork: fork from step {step['step_seq']} or "
                "earlier"
            )


def events_of(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest value per key that the copied checkpoints published (ctx.set_event)."""
    latest: dict[str, dict[str, Any]] = {}
    for step in steps:
        name = step["step_name"]
        if step["status"] == "succeeded" and name.startswith(EVENT_STEP_PREFIX):
            key = name[len(EVENT_STEP_PREFIX) :]
            latest[key] = {"key": key, "value": step["output"], "step_seq": step["step_seq"]}
    return list(latest.values())
