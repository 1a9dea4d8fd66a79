"""Schedules on one node (sql/queries/schedules.sql): their definitions, and the tick that
starts a schedule's runs and advances it in one transaction on its partition."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from shardflow.storage.client_store import ClientStore
from shardflow.storage.connector import NodeConnector, jsonb


@dataclass(frozen=True)
class ScheduleSpec:
    """What a schedule starts, and when."""

    name: str
    workflow_name: str
    app: str
    cron: str
    timezone: str
    missed: str
    catchup_seconds: float
    app_version: str | None = None
    input: Any = None
    timeout_seconds: float | None = None
    retention_seconds: float | None = None
    source: str = "api"
    # The queue its runs wait in (the workflow's; None: none).
    queue: str | None = None

    def same_definition(self, other: ScheduleSpec) -> bool:
        return asdict(self) == asdict(other)


@dataclass(frozen=True)
class ScheduleRecord:
    """A stored schedule: its definition and where it stands."""

    partition: int
    spec: ScheduleSpec
    paused: bool
    next_tick_at: datetime
    last_tick_at: datetime | None
    last_run_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TickRun:
    """One run a tick starts: its id and the tick it stands for."""

    workflow_id: str
    tick: datetime


def _record(row: dict[str, Any]) -> ScheduleRecord:
    spec = ScheduleSpec(
        name=row["name"],
        workflow_name=row["workflow_name"],
        app=row["app"],
        cron=row["cron"],
        timezone=row["timezone"],
        missed=row["missed"],
        catchup_seconds=row["catchup_seconds"],
        app_version=row["app_version"],
        input=row["input"],
        timeout_seconds=row["timeout_seconds"],
        retention_seconds=row["retention_seconds"],
        source=row["source"],
        queue=row["queue"],
    )
    return ScheduleRecord(
        partition=row["partition"],
        spec=spec,
        paused=row["paused"],
        next_tick_at=row["next_tick_at"],
        last_tick_at=row["last_tick_at"],
        last_run_id=row["last_run_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _spec_params(spec: ScheduleSpec) -> dict[str, Any]:
    params = asdict(spec)
    params["input"] = None if spec.input is None else json.dumps(spec.input)
    return params


class ScheduleStore:
    def __init__(
        self,
        connector: NodeConnector,
        partitions: Callable[[], list[int]] = list,
        *,
        citus: bool = False,
    ):
        self.db = connector
        self._client = ClientStore(connector)
        # On Citus the partitions this node holds now (none: it holds no schedules); plain
        # nodes: [] (a node's rows are its own partitions').
        self._partitions = partitions
        self._citus = citus

    @property
    def node(self) -> str:
        return self.db.name

    async def put(
        self,
        partition: int,
        spec: ScheduleSpec,
        *,
        next_tick_at: Callable[[], datetime],
        replace: bool,
        paused: bool = False,
        actor: str | None = None,
    ) -> tuple[ScheduleRecord, bool]:
        """Create the schedule, or (``replace``) give an existing one this definition; an
        existing one with another definition and no ``replace`` is returned unchanged. A
        changed cron or time zone starts from the next tick after now; a pause is kept.
        (record, changed)."""
        key = {"partition": partition, "name": spec.name}
        async with self.db.transaction() as conn:
            first = next_tick_at()
            inserted = await self.db.fetch(
                conn,
                "schedule_insert",
                {**key, **_spec_params(spec), "paused": paused, "next_tick_at": first},
            )
            changed = bool(inserted)
            if not inserted:
                rows = await self.db.fetch(conn, "schedule_lock", key)
                if not rows:
                    await self._client._raise_moved(conn, partition)
                existing = _record(rows[0])
                if replace and not existing.spec.same_definition(spec):
                    when_changed = (existing.spec.cron, existing.spec.timezone) != (
                        spec.cron,
                        spec.timezone,
                    )
                    await self.db.fetch(
                        conn,
                        "schedule_replace",
                        {
                            **key,
                            **_spec_params(spec),
                            "paused": existing.paused,
                            "next_tick_at": first if when_changed else existing.next_tick_at,
                        },
                    )
                    changed = True
            if changed and actor is not None:
                await self._audit(conn, actor, "schedule_put", spec.name, partition, asdict(spec))
            rows = await self.db.fetch(conn, "schedule_lock", key)
        return _record(rows[0]), changed

    async def get(self, partition: int, name: str) -> ScheduleRecord | None:
        async with self.db.transaction() as conn:
            rows = await self.db.fetch(
                conn, "schedule_lock", {"partition": partition, "name": name}
            )
            if not rows:
                await self._raise_if_not_owned(conn, partition)
                return None
            return _record(rows[0])

    async def set_paused(
        self, partition: int, name: str, *, paused: bool, next_tick_at: datetime | None, actor: str
    ) -> ScheduleRecord | None:
        """Pause, or resume from ``next_tick_at`` (the ticks of the pause are not run)."""
        key = {"partition": partition, "name": name}
        async with self.db.transaction() as conn:
            rows = await self.db.fetch(conn, "schedule_lock", key)
            if not rows:
                await self._raise_if_not_owned(conn, partition)
                return None
            current = _record(rows[0])
            await self.db.fetch(
                conn,
                "schedule_set_paused",
                {**key, "paused": paused, "next_tick_at": next_tick_at or current.next_tick_at},
            )
            await self._audit(
                conn, actor, "schedule_pause" if paused else "schedule_resume", name, partition, {}
            )
            rows = await self.db.fetch(conn, "schedule_lock", key)
            return _record(rows[0])

    async def delete(self, partition: int, name: str, *, actor: str) -> bool:
        key = {"partition": partition, "name": name}
        async with self.db.transaction() as conn:
            if not await self.db.fetch(conn, "schedule_lock", key):
                await self._raise_if_not_owned(conn, partition)
                return False
            await self.db.fetch(conn, "schedule_delete", key)
            await self._audit(conn, actor, "schedule_delete", name, partition, {})
            return True

    async def all(self) -> list[ScheduleRecord]:
        partitions = self._partitions()
        if self._citus and not partitions:
            return []
        rows = await self.db.run("schedule_list", {"partitions": partitions})
        return [_record(r) for r in rows]

    async def due_partitions(self) -> tuple[list[int], datetime | None]:
        """Partitions with a schedule due now, and the earliest next tick of this node."""
        partitions = self._partitions()
        if self._citus and not partitions:
            return [], None
        rows = await self.db.run("schedule_due_partitions", {"partitions": partitions})
        due = [int(r["partition"]) for r in rows if r["due"]]
        upcoming = min((r["next_tick_at"] for r in rows), default=None)
        return due, upcoming

    async def tick(
        self,
        partition: int,
        plan: Callable[[ScheduleRecord, datetime], tuple[list[TickRun], datetime]],
        *,
        limit: int,
    ) -> list[TickRun]:
        """Lock the partition's due schedules, insert the runs ``plan`` says (an existing id
        is skipped: that tick was started), advance each schedule, commit; the runs created."""
        created: list[TickRun] = []
        async with self.db.transaction() as conn:
            rows = await self.db.fetch(
                conn, "schedule_lock_due", {"partition": partition, "limit": limit}
            )
            for row in rows:
                record = _record(row)
                runs, next_tick_at = plan(record, row["now"])
                if runs:
                    made = await self.db.fetch(
                        conn, "workflow_insert_many", _run_rows(partition, record.spec, runs)
                    )
                    ids = {r["workflow_id"] for r in made}
                    created += [run for run in runs if run.workflow_id in ids]
                await self.db.fetch(
                    conn,
                    "schedule_advance",
                    {
                        "partition": partition,
                        "name": record.spec.name,
                        "next_tick_at": next_tick_at,
                        "last_tick_at": runs[-1].tick if runs else None,
                        "last_run_id": runs[-1].workflow_id if runs else None,
                    },
                )
        if created:
            await self._client.notify_work(str(partition))
        return created

    async def start_runs(
        self,
        partition: int,
        spec: ScheduleSpec,
        runs: Sequence[TickRun],
        *,
        actor: str | None = None,
    ) -> list[str]:
        """Start these runs now (a backfill): the ids created (an existing one is skipped).
        Audited; PartitionMoved when this node does not own the schedule's partition."""
        async with self.db.transaction() as conn:
            await self._raise_if_not_owned(conn, partition)
            rows = await self.db.fetch(
                conn, "workflow_insert_many", _run_rows(partition, spec, list(runs))
            )
            if rows and actor is not None:
                first, last = runs[0].tick.isoformat(), runs[-1].tick.isoformat()
                details = {"first_tick": first, "last_tick": last, "started": len(rows)}
                await self._audit(conn, actor, "schedule_backfill", spec.name, partition, details)
        if rows:
            await self._client.notify_work(str(partition))
        return [r["workflow_id"] for r in rows]

    async def _raise_if_not_owned(self, conn: Any, partition: int) -> None:
        """PartitionMoved (the client follows the move) unless this node owns ``partition``."""
        rows = await self.db.fetch(conn, "ownership_get", {"partition": partition})
        if not rows or rows[0]["state"] != "owned":
            await self._client._raise_moved(conn, partition)

    async def _audit(
        self,
        conn: Any,
        actor: str,
        action: str,
        name: str,
        partition: int,
        arguments: dict[str, Any],
    ) -> None:
        details = {"partition": partition, "node": self.db.name, **arguments}
        await self.db.fetch(
            conn,
            "audit_insert",
            {"actor": actor, "action": action, "target": name, "arguments": jsonb(details)},
        )


def _run_rows(partition: int, spec: ScheduleSpec, runs: list[TickRun]) -> dict[str, Any]:
    """workflow_insert_many's parameters for a schedule's runs: they live on the schedule's
    partition (its name is their routing key)."""
    count = len(runs)
    timeout = None if spec.timeout_seconds is None else timedelta(seconds=spec.timeout_seconds)
    text = None if spec.input is None else json.dumps(spec.input)
    return {
        "partition_list": [partition] * count,
        "workflow_id_list": [run.workflow_id for run in runs],
        "name_list": [spec.workflow_name] * count,
        "app_list": [spec.app] * count,
        "routing_key_list": [spec.name] * count,
        "input_list": [text] * count,
        "timeout_list": [timeout] * count,
        "trace_context_list": [None] * count,
        "retention_list": [spec.retention_seconds] * count,
        "app_version_list": [spec.app_version] * count,
        "queue_list": [spec.queue] * count,
        "priority_list": [0] * count,
        "concurrency_key_list": [None] * count,
    }
