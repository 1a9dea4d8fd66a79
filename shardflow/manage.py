"""``client.fork``: the checks on what a fork may copy (the source's first checkpoints and
the events they published) and the two routed calls. The writes are in
storage/manage_store.py."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from shardflow.engine.codec import check_identifier
from shardflow.engine.context import EVENT_STEP_PREFIX, START_CHILD_STEP_PREFIX
from shardflow.errors import InvalidInput, WorkflowConflict
from shardflow.storage.client_store import ClientStore
from shardflow.storage.manage_store import ForkSource, ManageStore

if TYPE_CHECKING:
    from shardflow.client import Client


async def fork_workflow(
    client: Client,
    workflow_id: str,
    from_step: int,
    *,
    routing_key: str | None,
    new_workflow_id: str | None,
) -> tuple[str, str | None]:
    """Read the source's first ``from_step`` checkpoints on its node, check them, write the
    fork on its own node: (the fork's id, its routing key)."""
    if not isinstance(from_step, int) or isinstance(from_step, bool) or from_step < 0:
        raise InvalidInput(f"from_step must be a step number >= 0, got {from_step!r}")
    source_key = client._key(workflow_id, routing_key)
    fork_id = new_workflow_id or f"{workflow_id}-fork-{uuid.uuid4().hex[:8]}"
    max_length = client.config.limits.max_id_length
    check_identifier(fork_id, what="new_workflow_id", max_length=max_length)
    source = await client._routed(
        source_key,
        lambda store, partition: ManageStore(store).fork_source(partition, workflow_id, from_step),
        read=True,
    )
    check_fork(workflow_id, source, from_step)
    events = events_of(source.steps)

    async def insert(store: ClientStore, partition: int) -> bool:
        return await ManageStore(store).insert_fork(
            partition, fork_id, source, events=events, source_id=workflow_id, actor=client.actor
        )

    if not await client._routed(source.routing_key or fork_id, insert):
        raise WorkflowConflict(
            f"workflow id {fork_id!r} exists already: choose another new_workflow_id"
        )
    return fork_id, source.routing_key


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
