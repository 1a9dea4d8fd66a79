"""Client-side workflow operations on one node. Every write is fenced by partition ownership."""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from shardflow.errors import PartitionMoved
from shardflow.storage.connector import NodeConnector, jsonb
from shardflow.storage.queries import work_channel
from shardflow.storage.records import StepRecord, WorkflowRecord


@dataclass(frozen=True)
class InsertOutcome:
    """What a start did: ``created`` False means the id existed and ``record`` is that row."""

    created: bool
    record: WorkflowRecord | None


@dataclass(frozen=True)
class SignalSent:
    """A send's outcome: ``stored`` False when that signal_id was stored before (nothing
    changed); ``woken`` when the workflow was waiting for it and is runnable now."""

    stored: bool
    woken: bool


@dataclass(frozen=True, kw_only=True)
class EventRecord:
    """One event a workflow published: the latest value of ``key``."""

    key: str
    value: Any
    step_seq: int
    set_at: datetime


class _AlreadySent(Exception):
    """Rolls a resend's transaction back (its count bump included)."""


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
        parent_id: str | None = None,
        parent_key: str | None = None,
        trace_context: str | None = None,
        retention: float | None = None,
        app_version: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        concurrency_key: str | None = None,
    ) -> InsertOutcome:
        """Insert a pending workflow (queued when it has a ``queue``); an existing id
        returns the existing row instead.

        ``input`` is JSON text, already validated by the caller; ``retention``: seconds it is
        kept once ended (None: for ever).
        """
        params = {
            "partition": partition,
            "workflow_id": workflow_id,
            "name": name,
            "app": app,
            "routing_key": routing_key,
            "input": input,
            "timeout": timeout,
            "parent_id": parent_id,
            "parent_key": parent_key,
            "trace_context": trace_context,
            "retention": retention,
            "app_version": app_version,
            "queue": queue,
            "priority": priority,
            "concurrency_key": concurrency_key,
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

    async def insert_workflow_in(
        self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any], *, notify: bool
    ) -> InsertOutcome | None:
        """The start of ``insert_workflow`` (same ``params``) inside the caller's own open
        transaction on ``conn``: it commits or rolls back with the caller's rows. None when the
        node ``conn`` is connected to does not own the partition (nothing was written).

        ``notify``: a NOTIFY in the same transaction, which PostgreSQL delivers at its commit
        and drops at its rollback (plain nodes; on Citus a NOTIFY would stop a transaction
        that spans workers from committing, so there the workers' poll finds it).
        """
        key = {"partition": params["partition"], "workflow_id": params["workflow_id"]}
        with self.db.translate_errors():
            if await self.db.fetch(conn, "workflow_insert", params):
                if notify:
                    wake = {
                        "channel": work_channel(self.db.schema),
                        "payload": str(key["partition"]),
                    }
                    await self.db.fetch(conn, "notify_work", wake)
                return InsertOutcome(created=True, record=None)
            rows = await self.db.fetch(conn, "workflow_get", key)
        return InsertOutcome(created=False, record=WorkflowRecord(**rows[0])) if rows else None

    async def insert_many(self, rows: list[dict[str, Any]]) -> set[Hashable]:
        """Insert many pending workflows in one statement; returns the ids it created.

        Each row has partition, workflow_id, name, app, routing_key, input (JSON text,
        validated by the caller), timeout and optionally trace_context and retention. Ids
        that already existed, or whose partition this node does not own, are not in the result.
        """
        columns = ("partition", "workflow_id", "name", "app", "routing_key", "input", "timeout")
        params = {f"{c}_list": [row[c] for row in rows] for c in columns}
        params["trace_context_list"] = [row.get("trace_context") for row in rows]
        params["retention_list"] = [row.get("retention") for row in rows]
        params["app_version_list"] = [row.get("app_version") for row in rows]
        params["queue_list"] = [row.get("queue") for row in rows]
        params["priority_list"] = [row.get("priority", 0) for row in rows]
        params["concurrency_key_list"] = [row.get("concurrency_key") for row in rows]
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
        created_since: datetime | None = None,
        created_until: datetime | None = None,
        app_version: str | None = None,
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
                "created_since": created_since,
                "created_until": created_until,
                "app_version": app_version,
            },
        )
        return [WorkflowRecord(**r) for r in rows]

    async def cancel_workflow(self, partition: int, workflow_id: str, *, actor: str) -> bool:
        """Cancel a pending or running workflow; False when it was already terminal or absent.

        One that registered compensations (a saga) is made runnable with cancel_requested
        instead: a worker runs its compensations, then it ends cancelled. The audit row is
        written in the same transaction as the change, and so is the cascade: a
        cancellation message in the outbox for every child the workflow started, and its
        children's starts not yet delivered are dropped.
        """
        return await self._audited_change(
            "workflow_cancel",
            "cancel",
            partition,
            workflow_id,
            actor,
            cascade=True,
        )

    async def audited_change(
        self, action: str, partition: int, workflow_id: str, *, actor: str
    ) -> bool:
        """``requeue`` a dead-lettered workflow or ``resume`` a stuck one (runnable again);
        False when it is not in that state."""
        query = {"requeue": "workflow_requeue", "resume": "workflow_resume"}[action]
        return await self._audited_change(query, action, partition, workflow_id, actor)

    async def _audited_change(
        self,
        query: str,
        action: str,
        partition: int,
        workflow_id: str,
        actor: str,
        *,
        cascade: bool = False,
    ) -> bool:
        key = {"partition": partition, "workflow_id": workflow_id}
        async with self.db.transaction() as conn:
            if cascade:
                # A saga is not ended by its cancellation: a worker first undoes it.
                counted = await self.db.fetch(conn, "compensations_registered", key)
                if counted[0]["registered"]:
                    query = "workflow_cancel_to_undo"
            if await self.db.fetch(conn, query, key):
                if cascade:
                    await self._cancel_children(conn, partition, workflow_id)
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

    async def send_signal(
        self,
        partition: int,
        workflow_id: str,
        *,
        name: str,
        signal_id: str,
        payload: str | None,
        actor: str | None = None,
    ) -> SignalSent | None:
        """Store a signal for a pending or running workflow (``payload`` is JSON text,
        validated by the caller), and make the workflow runnable if it waits for ``name``.
        A resend of a stored ``signal_id`` stores nothing, even once the workflow has ended.
        None when the workflow is absent or has ended; PartitionMoved when this node does not
        own the partition. With ``actor`` (an operator's signal), a stored signal is written
        to the audit log in the same transaction."""
        key = {"partition": partition, "workflow_id": workflow_id}
        try:
            async with self.db.transaction() as conn:
                # Count first: it locks the workflow's row (pending or running), so the wake
                # that follows reads the row as a concurrent release left it. Woken first,
                # a wake that read the row still running locked nothing, the release then
                # committed with the old count, and the signal woke nobody.
                counted, woken = await self.db.fetch_each(
                    conn, [("signal_count", key), ("signal_wake", {**key, "name": name})]
                )
                if not counted:
                    rows = await self.db.fetch(conn, "ownership_get", {"partition": partition})
                    if not rows or rows[0]["state"] != "owned":
                        await self._raise_moved(conn, partition)
                    known = {**key, "signal_id": signal_id}
                    if await self.db.fetch(conn, "signal_known", known):
                        return SignalSent(stored=False, woken=False)  # a resend
                    return None
                stored = await self.db.fetch(
                    conn,
                    "signal_insert",
                    {
                        **key,
                        "name": name,
                        "signal_id": signal_id,
                        "seq": counted[0]["signal_seq"],
                        "payload": payload,
                    },
                )
                if not stored:
                    raise _AlreadySent()
                if actor is not None:
                    arguments = {"partition": partition, "node": self.db.name, "name": name}
                    audit = {"actor": actor, "action": "signal", "target": workflow_id}
                    await self.db.fetch(
                        conn,
                        "audit_insert",
                        {**audit, "arguments": jsonb({**arguments, "signal_id": signal_id})},
                    )
                return SignalSent(stored=True, woken=bool(woken))
        except _AlreadySent:
            return SignalSent(stored=False, woken=False)

    async def events(
        self, partition: int, workflow_id: str, key: str | None = None
    ) -> list[EventRecord]:
        """The workflow's events (only ``key``'s, if given), oldest first."""
        params = {"partition": partition, "workflow_id": workflow_id, "key": key}
        rows = await self.db.run("event_get" if key is not None else "event_list", params)
        return [EventRecord(**r) for r in rows]

    async def _cancel_children(self, conn: Any, partition: int, workflow_id: str) -> None:
        key = {"partition": partition, "workflow_id": workflow_id}
        await self.db.fetch(conn, "outbox_drop_child_starts", key)
        children = await self.db.fetch(conn, "child_starts", key)
        await self.db.fetch_many(
            conn,
            "outbox_put",
            [
                {
                    "partition": partition,
                    "message_id": f"cancel:{child['workflow_id']}",
                    "kind": "cancel_child",
                    "body": json.dumps(child),
                }
                for child in children
            ],
        )

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
