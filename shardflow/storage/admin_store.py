"""Cluster administration on one node: identity, placement, ownership, migrations, status."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from shardflow.routing import Placement
from shardflow.storage.connector import NodeConnector, jsonb
from shardflow.storage.queries import (
    canonical_schema_text,
    migrations,
    render,
    roles_script_text,
)
from shardflow.storage.records import (
    ConnectionUse,
    FailureGroup,
    NodeIdentity,
    Ownership,
    QueueDepth,
    StalledWorkflow,
    UnservedWork,
    WorkerClaims,
)


def _lock_key(schema: str) -> int:
    """A 63-bit advisory-lock key per schema, stable across processes."""
    digest = hashlib.blake2b(f"shardflow-migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class AdminStore:
    """Administrative operations on one node."""

    def __init__(self, connector: NodeConnector):
        self.db = connector

    async def migrate(self) -> list[int]:
        """Apply the missing migrations, each in its own transaction under an advisory lock.

        Idempotent and safe to run from several processes at once. Returns applied versions.
        """
        applied: list[int] = []
        async with self.db.connection() as conn:
            # CREATE ... IF NOT EXISTS is not safe against a concurrent creator: lock first.
            async with conn.transaction():
                await self.db.fetch(conn, "migrations_lock", {"key": _lock_key(self.db.schema)})
                await self.db.execute_script(conn, self.db.queries["migrations_bootstrap"])
            for migration in migrations():
                async with conn.transaction():
                    await self.db.fetch(conn, "migrations_lock", {"key": _lock_key(self.db.schema)})
                    done = {r["version"] for r in await self.db.fetch(conn, "migrations_applied")}
                    if migration.version in done:
                        continue
                    await self.db.execute_script(conn, render(migration.text, self.db.schema))
                    await self.db.fetch(
                        conn,
                        "migrations_record",
                        {"version": migration.version, "name": migration.name},
                    )
                    applied.append(migration.version)
        return applied

    async def apply_canonical_schema(self) -> None:
        """Create the schema straight from sql/schema.sql (used to prove migrations match it)."""
        async with self.db.transaction() as conn:
            await self.db.execute_script(conn, self.db.queries["migrations_bootstrap"])
            await self.db.execute_script(conn, render(canonical_schema_text(), self.db.schema))

    async def create_roles(self, *, prefix: str) -> dict[str, str]:
        """Create (or refresh the grants of) the admin, worker and client roles."""
        roles = {kind: f"{prefix}_{kind}" for kind in ("admin", "worker", "client")}
        script = render(roles_script_text(), self.db.schema, roles=roles)
        async with self.db.transaction() as conn:
            await self.db.execute_script(conn, script)
        return roles

    async def drop_schema(self) -> None:
        async with self.db.connection() as conn:
            await self.db.execute_script(conn, self.db.queries["schema_drop"])

    async def schema_catalog(self) -> list[tuple[str, str, str]]:
        rows = await self.db.run("schema_catalog", {"schema": self.db.schema})
        return [(r["kind"], r["object"], r["definition"]) for r in rows]

    async def identity(self) -> NodeIdentity | None:
        rows = await self.db.run("node_identity_get")
        return NodeIdentity(**rows[0]) if rows else None

    async def latest_placement(self) -> Placement | None:
        rows = await self.db.run("placement_latest")
        return Placement.from_record(rows[0]) if rows else None

    async def initialize(
        self, *, identity: NodeIdentity, placement: Placement, owned: list[int]
    ) -> None:
        """Record identity, the first placement and this node's partitions in one transaction.

        Idempotent: rows that exist are left alone.
        """
        record = placement.to_record()
        async with self.db.transaction() as conn:
            await self.db.fetch(
                conn,
                "node_identity_insert",
                {
                    "cluster_id": identity.cluster_id,
                    "node_name": identity.node_name,
                    "partition_count": identity.partition_count,
                },
            )
            await self.db.fetch(
                conn,
                "placement_insert",
                {
                    "version": placement.version,
                    "partition_count": placement.partition_count,
                    "nodes": jsonb(record["nodes"]),
                    "owners": record["owners"],
                },
            )
            await self.db.fetch(
                conn, "ownership_insert", {"epoch": placement.version, "partitions": owned}
            )

    async def store_placement(self, placement: Placement) -> bool:
        """Store a placement version; False if this node has that version with other owners."""
        record = placement.to_record()
        params = {
            "version": placement.version,
            "partition_count": placement.partition_count,
            "nodes": jsonb(record["nodes"]),
            "owners": record["owners"],
        }
        async with self.db.transaction() as conn:
            await self.db.fetch(conn, "placement_insert", params)
            rows = await self.db.fetch(conn, "placement_get", {"version": placement.version})
        return Placement.from_record(rows[0]) == placement

    async def audit(
        self, *, actor: str, action: str, target: str, arguments: dict[str, Any]
    ) -> None:
        """Record an administrative action (arguments must already be free of secrets)."""
        await self.db.run(
            "audit_insert",
            {"actor": actor, "action": action, "target": target, "arguments": jsonb(arguments)},
        )

    async def audit_log(self, *, limit: int) -> list[dict[str, Any]]:
        return [
            dict(r, node=self.db.name) for r in await self.db.run("audit_list", {"limit": limit})
        ]

    async def ownership(self, *, partitions: list[int] | None = None) -> list[Ownership]:
        """The ownership rows here (on Citus: of ``partitions``, those of this node's shards)."""
        rows = await self.db.run("ownership_list", {"partitions": partitions or []})
        return [Ownership(**r) for r in rows]

    async def set_partition_state(self, partition: int, state: str) -> bool:
        """Set a partition's ownership state (``owned`` or ``moving``); False if not owned here.

        ``moving`` fences the partition: it waits for in-flight writes, then every claim and
        write for it is rejected inside its own transaction.
        """
        rows = await self.db.run("ownership_set_state", {"partition": partition, "state": state})
        return bool(rows)

    async def status_counts(self, *, partitions: list[int] | None = None) -> dict[str, int]:
        """Workflows here by status (on Citus: in ``partitions``)."""
        rows = await self.db.run("workflow_status_counts", {"partitions": partitions or []})
        return {r["status"]: int(r["n"]) for r in rows}

    async def queue_depth(self, *, partitions: list[int] | None = None) -> QueueDepth:
        """Pending workflows here: runnable now, the oldest one's wait, and not yet due (on
        Citus: in ``partitions``). The same statement as the workers' metrics sampler."""
        rows = await self.db.run("queue_depth", {"partitions": partitions or []})
        return QueueDepth(**rows[0])

    async def failure_groups(
        self, *, limit: int = 100, partitions: list[int] | None = None
    ) -> list[FailureGroup]:
        """Failed and dead-lettered workflows here, grouped by name, error type and failed
        step, largest group first (on Citus: in ``partitions``)."""
        rows = await self.db.run("failure_groups", {"limit": limit, "partitions": partitions or []})
        return [FailureGroup(node=self.db.name, **r) for r in rows]

    async def recent_latencies(
        self,
        *,
        started: tuple[timedelta, timedelta],
        limit: int,
        partitions: list[int] | None = None,
    ) -> list[float]:
        """Start -> end seconds (until now for unfinished ones) of the newest workflows
        started between ``started`` = (oldest, newest) ago (at most ``limit``; on Citus: in
        ``partitions``)."""
        oldest, newest = started
        rows = await self.db.run(
            "recent_latencies",
            {"oldest": oldest, "newest": newest, "limit": limit, "partitions": partitions or []},
        )
        return [float(r["seconds"]) for r in rows]

    async def worker_claims(self, node: str) -> dict[str, WorkerClaims]:
        """Live worker -> workflows it claimed on ``node`` since it started (its last beat)."""
        rows = await self.db.run("worker_claims", {"node": node})
        return {
            r["owner"]: WorkerClaims(
                claimed=int(r["claimed"]), seen_at=r["seen_at"], started_at=r["started_at"]
            )
            for r in rows
        }

    async def connection_use(self) -> ConnectionUse:
        """Client connections this node's server has open, and how many it allows."""
        return ConnectionUse(**(await self.db.run("connection_use"))[0])

    async def live_workers(self) -> dict[str, int]:
        """app -> number of live workers registered on this node."""
        return {r["app"]: int(r["workers"]) for r in await self.db.run("workers_live")}

    async def unserved_work(
        self, *, limit: int = 20, partitions: list[int] | None = None
    ) -> list[UnservedWork]:
        """Pending workflows that no live worker runs, grouped by (app, name)."""
        params = {"limit": limit, "partitions": partitions or []}
        rows = await self.db.run("pending_without_worker", params)
        return [UnservedWork(node=self.db.name, **r) for r in rows]

    async def stalled(
        self, *, quiet: timedelta, limit: int = 20, partitions: list[int] | None = None
    ) -> tuple[list[StalledWorkflow], int]:
        """Running workflows with a live lease that recorded nothing for ``quiet``: the
        oldest ``limit`` of them, and how many there are in all."""
        params = {"quiet": quiet, "limit": limit, "partitions": partitions or []}
        rows = await self.db.run("stalled_running", params)
        total = int(rows[0]["total"]) if rows else 0
        return [
            StalledWorkflow(node=self.db.name, **{k: v for k, v in r.items() if k != "total"})
            for r in rows
        ], total

    async def hygiene(self) -> dict[str, Any]:
        rows = await self.db.run("hygiene")
        return dict(rows[0])
