"""``client.schedules``: create, pause, resume, delete, list and backfill schedules.

A schedule lives on the partition of its name, on the node that owns it (it moves with a
rebalance), and so do its runs: their routing key is the schedule's name
(``client.get(run_id, routing_key=name)``). Changes are audited.
"""

from __future__ import annotations

import asyncio
import builtins
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shardflow.engine.app import WorkflowDef
from shardflow.engine.codec import check_identifier, encode_payload
from shardflow.errors import InvalidInput, ScheduleNotFound
from shardflow.schedules.cron import check_cron, next_tick
from shardflow.schedules.policy import DEFAULT_CATCHUP, backfill_ticks, check_missed
from shardflow.schedules.runs import run_id
from shardflow.storage.schedule_store import ScheduleRecord, ScheduleSpec, ScheduleStore, TickRun
from shardflow.timebounds import retention_seconds

if TYPE_CHECKING:
    from shardflow.client import Client

# Leaves room in a run's id (name@2026-12-06T00:05:00Z) under the 200-character id limit.
MAX_NAME_LENGTH = 160


def spec_for(
    definition: WorkflowDef,
    *,
    name: str,
    cron: str,
    timezone: str,
    input: Any,
    missed: str,
    catchup: timedelta,
    default_retention: float | None,
    source: str,
    max_payload_bytes: int,
) -> ScheduleSpec:
    """A schedule's definition, checked: nothing is written when this raises."""
    check_identifier(name, what="schedule name", max_length=MAX_NAME_LENGTH)
    check_cron(cron, timezone)
    check_missed(missed)
    if catchup <= timedelta(0):
        raise InvalidInput("catchup must be a positive duration (how far back `all` goes)")
    definition.check_input(input is not None)
    payload = encode_payload(input, max_bytes=max_payload_bytes, what="schedule input")
    return ScheduleSpec(
        name=name,
        workflow_name=definition.name,
        app=definition.app,
        cron=cron,
        timezone=timezone,
        missed=missed,
        catchup_seconds=catchup.total_seconds(),
        app_version=definition.app_version,
        input=payload.value,
        timeout_seconds=definition.timeout,
        retention_seconds=definition.retention_seconds(default_retention),
        source=source,
        queue=definition.queue,
    )


class Schedules:
    def __init__(self, client: Client):
        self._client = client

    def _store(self, store: Any) -> ScheduleStore:
        return ScheduleStore(store.db)

    async def create(
        self,
        name: str,
        workflow: WorkflowDef | str,
        cron: str,
        *,
        timezone: str = "UTC",
        input: Any = None,
        missed: str = "skip",
        catchup: timedelta | str = DEFAULT_CATCHUP,
        paused: bool = False,
        replace: bool = False,
    ) -> ScheduleRecord:
        """Start ``workflow`` on every tick of ``cron`` (5 fields, or 6 with seconds last) in
        ``timezone``. ``missed``: what to do with ticks missed while no worker ran (``skip``,
        ``once``, ``all`` within ``catchup``). An existing schedule of that name is returned
        unchanged, unless ``replace`` (a changed cron or zone starts from the next tick)."""
        span = _duration(catchup, "catchup")
        spec = spec_for(
            self._client._definition(workflow),
            name=name,
            cron=cron,
            timezone=timezone,
            input=input,
            missed=missed,
            catchup=span,
            default_retention=self._client.config.retention_seconds,
            source="api",
            max_payload_bytes=self._client.config.limits.max_payload_bytes,
        )
        record, _ = await self.put(spec, replace=replace, paused=paused)
        return record

    async def put(
        self, spec: ScheduleSpec, *, replace: bool, paused: bool = False
    ) -> tuple[ScheduleRecord, bool]:
        """Store a checked definition (workers declare their code's schedules with it)."""

        def first_tick() -> datetime:
            return next_tick(spec.cron, spec.timezone, after=datetime.now(UTC))

        return await self._client._routed(
            spec.name,
            lambda store, partition: self._store(store).put(
                partition,
                spec,
                next_tick_at=first_tick,
                replace=replace,
                paused=paused,
                actor=self._client.actor,
            ),
        )

    async def get(self, name: str) -> ScheduleRecord:
        check_identifier(name, what="schedule name", max_length=MAX_NAME_LENGTH)
        found = await self._client._routed(
            name, lambda store, partition: self._store(store).get(partition, name), read=True
        )
        if found is None:
            raise ScheduleNotFound(f"no schedule {name!r}: `shardflow schedule list` shows them")
        return found

    async def pause(self, name: str) -> ScheduleRecord:
        """No ticks start while paused."""
        return await self._set_paused(name, paused=True)

    async def resume(self, name: str) -> ScheduleRecord:
        """Ticks start again from the next one after now (those of the pause do not run)."""
        return await self._set_paused(name, paused=False)

    async def _set_paused(self, name: str, *, paused: bool) -> ScheduleRecord:
        current = await self.get(name)
        if current.paused == paused:
            return current  # resuming an active schedule must not drop its due ticks
        after = None
        if not paused:
            after = next_tick(current.spec.cron, current.spec.timezone, after=datetime.now(UTC))
        found = await self._client._routed(
            name,
            lambda store, partition: self._store(store).set_paused(
                partition, name, paused=paused, next_tick_at=after, actor=self._client.actor
            ),
        )
        if found is None:
            raise ScheduleNotFound(f"no schedule {name!r}: `shardflow schedule list` shows them")
        return found

    async def delete(self, name: str) -> bool:
        """Remove the schedule (its runs stay); False when there was none."""
        check_identifier(name, what="schedule name", max_length=MAX_NAME_LENGTH)
        return await self._client._routed(
            name,
            lambda store, partition: self._store(store).delete(
                partition, name, actor=self._client.actor
            ),
        )

    async def list(self) -> list[ScheduleRecord]:
        """Every schedule of every node, by name."""
        client = self._client
        placement = client.placement
        citus = client.config.backend == "citus"
        stores = [
            ScheduleStore(
                client._connector_for(n),
                lambda n=n: placement.partitions_of(n),  # type: ignore[misc]
                citus=citus,
            )
            if citus
            else ScheduleStore(client._connector_for(n))
            for n in placement.counts()
        ]
        answers = await asyncio.gather(*(s.all() for s in stores))
        return sorted((r for found in answers for r in found), key=lambda r: r.spec.name)

    async def backfill(self, name: str, since: datetime, until: datetime) -> builtins.list[str]:
        """Start a run for every tick in [since, until) that has none (a tick that ran keeps
        its run); the ids started. At most 10,000 ticks at a time."""
        if since.tzinfo is None or until.tzinfo is None:
            raise InvalidInput("since and until must be timezone-aware datetimes")
        if until > datetime.now(UTC):
            raise InvalidInput(
                "a backfill covers the past: `until` is in the future (the schedule starts "
                "the coming ticks itself)"
            )
        record = await self.get(name)
        spec = record.spec
        ticks = backfill_ticks(spec.cron, spec.timezone, since=since, until=until)
        runs = [TickRun(run_id(name, tick), tick) for tick in ticks]
        started: builtins.list[str] = []
        for i in range(0, len(runs), 500):
            chunk = runs[i : i + 500]
            started += await self._client._routed(
                name,
                lambda store, partition, chunk=chunk: self._store(store).start_runs(  # type: ignore[misc]
                    partition, spec, chunk, actor=self._client.actor
                ),
            )
        return started

    @staticmethod
    def run_id(name: str, tick: datetime) -> str:
        """The id of the run a schedule starts for ``tick``."""
        return run_id(name, tick)


def _duration(value: timedelta | str, what: str) -> timedelta:
    if isinstance(value, timedelta):
        return value
    seconds = retention_seconds(value, what=what)
    if seconds is None:
        raise InvalidInput(f"{what} must be a duration like 1h or 7d")
    return timedelta(seconds=seconds)
