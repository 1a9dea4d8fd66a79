"""Client-side workflow operations on one node. Every write is fenced by partition ownership."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shardflow.errors import PartitionMoved
from shardflow.storage.connector import NodeConnector, jsonb
from shardflow.storage.queries import work_channel
from shardflow.storage.records import StepRecord, WorkflowRecord


@dataclass(frozen=True)
class InsertOutcome:
    """What a start did: ``created`` False means the id existed and ``record`` is that row."""

    created: bool
    record: WorkflowRecord | None


class ClientStore:
    """Starts, reads, lists and cancels workflows on one node."""

    def __init__(self, connector: NodeConnector):
        self.db = connector

    async def insert_workflow(
        self,
        *,
        partition: int,
        workflow_id: str,
        name: str,
        app: str,
        routing_key: str | None,
        input: str | None,
        timeout: timedelta | None,
    ) -> InsertOutcome:
        """Insert a pending workflow; an existing id returns the existing row instead.

        ``input`` is JSON text, already validated by the caller.
        """
        params = {
            "partition": partition,
            "workflow_id": workflow_id,
            "name": name,
            "app": app,
            "routing_key": routing_key,
            "input": input,
            "timeout": timeout,
        }
        key = {"partition": partition, "workflow_id": workflow_id}
        # The common case is one round trip: a single autocommit statement.
        if await self.db.run("workflow_insert", params):
            return InsertOutcome(created=True, record=None)
        async with self.db.transaction() as conn:
            # Nothing inserted: the id exists, or the node does not own the partition.
            rows = await self.db.fetch(conn, "workflow_get", key)
            if rows:
                return InsertOutcome(created=False, record=WorkflowRecord(**rows[0]))
            await self._raise_moved(conn, partition)
        raise AssertionError("unreachable")  # pragma: no cover

    async def insert_many(self, rows: list[dict[str, Any]]) -> set[Hashable]:
        """Insert many pending workflows in one statement; returns the ids it created.

        Each row has partition, workflow_id, name, app, routing_key, input (JSON text,
        validated by the caller) and timeout. Ids that already existed, or whose partition this
        node does not own, are not in the result.
        """
        columns = ("partition", "workflow_id", "name", "app", "routing_key", "input", "timeout")
        params = {f"{c}_list": [row[c] for row in rows] for c in columns}
        return {r["workflow_id"] for r in await self.db.run("workflow_insert_many", params)}

    async def notify_work(self, payload: str = "") -> None:
        """Wake the node's claim loops; sent after the commit, as its own statement.
        ``payload`` names the partitions that got work ("" for any)."""
        await self.db.run(
            "notify_work", {"channel": work_channel(self.db.schema), "payload": payload}
        )

    async def get_workflow(self, partition: int, workflow_id: str) -> WorkflowRecord | None:
        rows = await self.db.run(
            "workflow_get", {"partition": partition, "workflow_id": workflow_id}
        )
        return WorkflowRecord(**rows[0]) if rows else None

    async def list_workflows(
        self,
        *,
        status: str | None,
        name: str | None,
        limit: int,
        after: tuple[datetime, str] | None,
        partitions: list[int],
    ) -> list[WorkflowRecord]:
        """The newest workflows of this node (on Citus: of its ``partitions``)."""
        rows = await self.db.run(
            "workflow_list",
            {
                "partitions": partitions,
                "status": status,
                "name": name,
                "limit": limit,
                "after_created": after[0] if after else None,
                "after_id": after[1] if after else None,
            },
        )
        return [WorkflowRecord(**r) for r in rows]

    async def cancel_workflow(self, partition: int, workflow_id: str, *, actor: str) -> bool:
        """Cancel a pending or running workflow; False when it was already terminal or absent.

        The audit row is written in the same transaction as the change.
        """
        return await self._audited_change(
            "workflow_cancel", "cancel", partition, workflow_id, actor
        )

    async def requeue_workflow(self, partition: int, workflow_id: str, *, actor: str) -> bool:
        """Make a dead-lettered workflow runnable again; False if it is not dead-lettered."""
        return await self._audited_change(
            "workflow_requeue", "requeue", partition, workflow_id, actor
        )

    async def _audited_change(
        self, query: str, action: str, partition: int, workflow_id: str, actor: str
    ) -> bool:
        key = {"partition": partition, "workflow_id": workflow_id}
        async with self.db.transaction() as conn:
            if await self.db.fetch(conn, query, key):
                await self.db.fetch(
                    conn,
                    "audit_insert",
                    {
                        "actor": actor,
                        "action": action,
                        "target": workflow_id,
                        "arguments": jsonb({"partition": partition, "node": self.db.name}),
                    },
                )
                return True
            rows = await self.db.fetch(conn, "ownership_get", {"partition": partition})
            if rows and rows[0]["state"] == "owned":
                return False
            await self._raise_moved(conn, partition)
        raise AssertionError("unreachable")  # pragma: no cover

    async def steps(self, partition: int, workflow_id: str) -> list[StepRecord]:
        rows = await self.db.run(
            "workflow_steps", {"partition": partition, "workflow_id": workflow_id}
        )
        return [StepRecord(**r) for r in rows]

    async def check_owned(self, partition: int) -> None:
        """Raise PartitionMoved unless this node owns ``partition`` now."""
        async with self.db.connection() as conn:
            rows = await self.db.fetch(conn, "ownership_get", {"partition": partition})
            if not rows or rows[0]["state"] != "owned":
                await self._raise_moved(conn, partition)

    async def _raise_moved(self, conn: Any, partition: int) -> None:
        latest = await self.db.fetch(conn, "placement_latest")
        version = int(latest[0]["version"]) if latest else 0
        raise PartitionMoved(
            f"node {self.db.name} does not own partition {partition} (placement version "
            f"{version}); refresh the placement and retry on the owning node",
            partition=partition,
            node=self.db.name,
            placement_version=version,
        )
