"""Retry and fork (sql/queries/manage.sql): changes to a workflow's history, each in one
transaction on its node under the ownership fence, audited in that transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shardflow.errors import NotRetryable, WorkflowNotFound
from shardflow.storage.client_store import ClientStore
from shardflow.storage.connector import jsonb


@dataclass(frozen=True)
class RetryPoint:
    """Where a retry resumes: the checkpoints from ``step_seq`` on were dropped."""

    step_seq: int
    dropped: int


@dataclass(frozen=True)
class ForkSource:
    """What a fork copies from its source workflow."""

    name: str
    app: str
    app_version: str | None
    # Its queue, priority and concurrency key: a fork waits in the same queue.
    queue: str | None
    priority: int
    concurrency_key: str | None
    input: Any
    routing_key: str | None
    retention_seconds: float | None
    timeout: timedelta | None
    steps: list[dict[str, Any]]


class ManageStore:
    def __init__(self, store: ClientStore):
        self.store = store
        self.db = store.db

    async def retry(self, partition: int, workflow_id: str, *, actor: str) -> RetryPoint:
        """Make a failed workflow runnable again from its last failed checkpoint (or, when no
        step failed, from after its last checkpoint: the workflow's own code raised)."""
        key = {"partition": partition, "workflow_id": workflow_id}
        async with self.db.transaction() as conn:
            locked = await self.db.fetch(conn, "manage_lock", key)
            if not locked:
                await self._raise_if_not_owned(conn, partition)
                raise WorkflowNotFound(f"no workflow {workflow_id!r}: check the id and routing key")
            row = locked[0]
            history = (await self.db.fetch(conn, "manage_history", key))[0]
            _check_retryable(workflow_id, row, history)
            last = history["last_seq"]
            # From the failed step when the run ended on one; when its code raised after
            # (a failure it caught, then steps that succeeded), from after its last step.
            cut = 0 if last is None else last if history["last_status"] == "failed" else last + 1
            first_child = history["first_child_seq"]
            if first_child is not None and first_child >= cut:
                raise NotRetryable(
                    f"workflow {workflow_id!r} started child workflows after its failed step "
                    f"{cut}, and they know it as their parent: fork it from step {cut} instead"
                )
            at = {**key, "step_seq": cut}
            await self.db.fetch(conn, "manage_drop_steps_from", at)
            await self.db.fetch(conn, "manage_drop_events_from", at)
            await self.db.fetch(conn, "manage_restore_events_before", at)
            await self.db.fetch(conn, "manage_unread_signals_from", at)
            await self.db.fetch(conn, "manage_retry", {**key, "timeout": row["timeout"]})
            dropped_count = (last - cut + 1) if last is not None and last >= cut else 0
            arguments = {"partition": partition, "node": self.db.name, "from_step": cut}
            await self.db.fetch(
                conn,
                "audit_insert",
                {
                    "actor": actor,
                    "action": "retry",
                    "target": workflow_id,
                    "arguments": jsonb(arguments),
                },
            )
        await self.store.notify_work(str(partition))
        return RetryPoint(step_seq=cut, dropped=dropped_count)

    async def _raise_if_not_owned(self, conn: Any, partition: int) -> None:
        """PartitionMoved (the client follows the move) unless this node owns ``partition``."""
        rows = await self.db.fetch(conn, "ownership_get", {"partition": partition})
        if not rows or rows[0]["state"] != "owned":
            await self.store._raise_moved(conn, partition)

    async def fork_source(self, partition: int, workflow_id: str, step_count: int) -> ForkSource:
        async with self.db.transaction() as conn:
            rows = await self.db.fetch(
                conn,
                "manage_fork_source",
                {"partition": partition, "workflow_id": workflow_id, "step_count": step_count},
            )
            if not rows:
                await self._raise_if_not_owned(conn, partition)
                raise WorkflowNotFound(f"no workflow {workflow_id!r}: check the id and routing key")
        row = rows[0]
        steps = row["steps"] if isinstance(row["steps"], list) else json.loads(row["steps"])
        return ForkSource(
            name=row["name"],
            app=row["app"],
            app_version=row["app_version"],
            queue=row["queue"],
            priority=row["priority"],
            concurrency_key=row["concurrency_key"],
            input=row["input"],
            routing_key=row["routing_key"],
            retention_seconds=row["retention_seconds"],
            timeout=row["timeout"],
            steps=steps,
        )

    async def insert_fork(
        self,
        partition: int,
        workflow_id: str,
        source: ForkSource,
        *,
        events: list[dict[str, Any]],
        source_id: str,
        actor: str,
    ) -> bool:
        """The fork with its copied checkpoints and the events they published (key, value,
        step_seq), in one transaction; False when the id exists already (nothing written)."""
        params = {
            "partition": partition,
            "workflow_id": workflow_id,
            "name": source.name,
            "app": source.app,
            "routing_key": source.routing_key,
            "input": None if source.input is None else json.dumps(source.input),
            "timeout": source.timeout,
            "parent_id": None,
            "parent_key": None,
            "trace_context": None,
            "retention": source.retention_seconds,
            "app_version": source.app_version,
            "queue": source.queue,
            "priority": source.priority,
            "concurrency_key": source.concurrency_key,
        }
        key = {"partition": partition, "workflow_id": workflow_id}
        async with self.db.transaction() as conn:
            if not await self.db.fetch(conn, "workflow_insert", params):
                if await self.db.fetch(conn, "workflow_get", key):
                    return False
                await self.store._raise_moved(conn, partition)
            if source.steps:
                copied = json.dumps(source.steps)
                await self.db.fetch(conn, "manage_copy_steps", {**key, "steps": copied})
                await self.db.fetch(conn, "manage_fork_has_history", key)
                if events:
                    await self.db.fetch(
                        conn, "manage_copy_events", {**key, "events": json.dumps(events)}
                    )
            arguments = {
                "partition": partition,
                "node": self.db.name,
                "source": source_id,
                "from_step": len(source.steps),
            }
            await self.db.fetch(
                conn,
                "audit_insert",
                {
                    "actor": actor,
                    "action": "fork",
                    "target": workflow_id,
                    "arguments": jsonb(arguments),
                },
            )
        await self.store.notify_work(str(partition))
        return True


def _check_retryable(workflow_id: str, row: dict[str, Any], history: dict[str, Any]) -> None:
    status = row["status"]
    if status == "dead":
        raise NotRetryable(
            f"workflow {workflow_id!r} is dead-lettered, not failed: fix what killed its "
            "workers, then `shardflow requeue` it"
        )
    if status != "failed":
        raise NotRetryable(
            f"workflow {workflow_id!r} is {status}; only a failed workflow can be retried "
            "(fork it to run it again from one of its steps)"
        )
    if row["parent_id"] is not None:
        raise NotRetryable(
            f"workflow {workflow_id!r} is a child of {row['parent_id']!r}, which has been told "
            "of its failure: retry or fork the parent instead"
        )
    if history["first_undo_seq"] is not None:
        raise NotRetryable(
            f"workflow {workflow_id!r} registered compensations, and they ran when it failed: "
            "retrying would redo its steps on top of their undo; fork it from step "
            f"{history['first_undo_seq']} (before the first registration) or start it anew"
        )
