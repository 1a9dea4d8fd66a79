"""The scheduler of one node: starts the runs of its due schedules.

One scheduler per node at a time (a lease row, like the reaper and the collector). It looks
every second (sooner when a tick is due sooner): for each partition with a due schedule, one
transaction locks the due schedules (skipping any another scheduler holds), inserts one run
per tick the missed-tick policy keeps (``schedules/policy.py``; the run's id is the schedule's
name and the tick, so a tick started twice is one workflow), and advances each schedule. A
scheduler killed mid-tick rolls back; the next one, once the lease expired, starts the tick.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from shardflow.errors import InvalidInput, NodeUnavailable, ShardflowError
from shardflow.schedules.policy import plan_ticks
from shardflow.schedules.runs import run_id
from shardflow.storage.schedule_store import ScheduleRecord, ScheduleStore, TickRun
from shardflow.worker.service import Service

log = logging.getLogger("shardflow.worker")

# The longest the scheduler sleeps between looks, and the ticks one pass starts per schedule.
LOOK_SECONDS = 1.0
TICKS_PER_PASS = 100


class Scheduler(Service):
    def __init__(
        self,
        *,
        store: ScheduleStore,
        acquire_lease: Callable[[str, timedelta], Awaitable[bool]],
        declare: Callable[[], Awaitable[None]] | None = None,
        **kwargs: object,
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = f"scheduler:{store.node}"
        self.store = store
        self._acquire = acquire_lease
        # Registers the app's @app.workflow(schedule=...) schedules (once, at start).
        self._declare = declare
        self.started_runs = 0

    async def run(self) -> None:
        service = f"sched:{self.store.node}"
        ttl = timedelta(seconds=5 * LOOK_SECONDS)
        declared = self._declare is None
        while not self.stopping.is_set():
            sleep = LOOK_SECONDS
            if not declared and self._declare is not None:
                try:
                    await self._declare()
                    declared = True
                except ShardflowError as exc:  # a node down: the other nodes tick meanwhile
                    log.warning(
                        "could not store this app's declared schedules yet: %s; retrying",
                        exc,
                        extra={"action": "schedules_declare_failed", "node": self.store.node},
                    )
            try:
                if await self._acquire(service, ttl):
                    sleep = await self._pass()
            except NodeUnavailable:
                pass  # the claim loop reports the outage; look again
            except ShardflowError as exc:
                log.error(
                    "scheduler on node %s failed a pass: %s; it tries again in a second",
                    self.store.node,
                    exc,
                    extra={"action": "scheduler_failed", "node": self.store.node},
                )
            if await self.pause(sleep):
                return

    async def _pass(self) -> float:
        """Start what is due; how long to sleep before the next look."""
        due, upcoming = await self.store.due_partitions()
        for partition in due:
            started = await self.store.tick(partition, _plan, limit=TICKS_PER_PASS)
            self.started_runs += len(started)
        if due:
            return 0.05  # look again at once: a schedule catching up may be due again
        if upcoming is None:
            return LOOK_SECONDS
        until = (upcoming - datetime.now(UTC)).total_seconds()
        return min(LOOK_SECONDS, max(0.01, until))


def _plan(record: ScheduleRecord, now: datetime) -> tuple[list[TickRun], datetime]:
    try:
        return _planned(record, now)
    except (InvalidInput, ValueError) as exc:
        # A definition that cannot tick (stored before a check existed): say so, look again
        # in an hour, keep ticking every other schedule.
        name = record.spec.name
        log.error(
            "schedule %s cannot tick: %s; give it a valid cron with `shardflow schedule create "
            "%s ... --replace`, or delete it",
            name,
            exc,
            name,
            extra={"action": "schedule_broken", "schedule": name},
        )
        return [], now + timedelta(hours=1)


def _planned(record: ScheduleRecord, now: datetime) -> tuple[list[TickRun], datetime]:
    spec = record.spec
    plan = plan_ticks(
        spec.cron,
        spec.timezone,
        next_tick_at=record.next_tick_at,
        now=now,
        missed=spec.missed,
        catchup=timedelta(seconds=spec.catchup_seconds),
        limit=TICKS_PER_PASS,
    )
    return [TickRun(run_id(spec.name, tick), tick) for tick in plan.start], plan.next_tick_at
