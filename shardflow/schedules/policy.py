"""Which ticks a schedule starts now: the missed-tick policies, as a pure function.

A schedule's row says when its next tick is due (``next_tick_at``). When the scheduler of its
node looks (about every second), every tick from there up to now is due. Normally that is one
tick, a fraction of a second late. After every worker of the node was down for a while there
are more, and the schedule's ``missed`` policy decides:

- ``skip``: start only the ticks at most ``LATE_GRACE`` late; the older ones are dropped;
- ``once``: start one run, for the latest due tick, whatever was missed before it;
- ``all``: start every due tick within the schedule's ``catchup`` window (older ones are
  dropped), oldest first, ``limit`` per pass (the next pass goes on from there).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shardflow.errors import InvalidInput
from shardflow.schedules.cron import latest_tick, next_tick, ticks

MISSED_POLICIES = ("skip", "once", "all")
# A tick started later than this counts as missed (the scheduler looks every second).
LATE_GRACE = timedelta(seconds=60)
# Bounds of the `all` policy: how far back it catches up, and a backfill's size.
DEFAULT_CATCHUP = timedelta(days=1)
MAX_BACKFILL_TICKS = 10_000


@dataclass(frozen=True)
class TickPlan:
    """The ticks to start now (oldest first) and where the schedule goes on."""

    start: list[datetime]
    next_tick_at: datetime


def check_missed(missed: str) -> str:
    if missed not in MISSED_POLICIES:
        raise InvalidInput(
            f"missed must be one of {', '.join(MISSED_POLICIES)} (what to do with the ticks "
            f"missed while no worker ran), got {missed!r}"
        )
    return missed


def plan_ticks(
    expression: str,
    timezone: str,
    *,
    next_tick_at: datetime,
    now: datetime,
    missed: str,
    catchup: timedelta = DEFAULT_CATCHUP,
    limit: int = 100,
) -> TickPlan:
    if next_tick_at > now:
        return TickPlan([], next_tick_at)
    after_now = next_tick(expression, timezone, after=now)
    if missed == "once":
        return TickPlan([latest_tick(expression, timezone, at_or_before=now)], after_now)
    window = LATE_GRACE if missed == "skip" else catchup
    oldest = max(next_tick_at, now - window)
    start: list[datetime] = []
    for tick in ticks(expression, timezone, after=oldest - timedelta(microseconds=1)):
        if tick > now:
            return TickPlan(start, tick)
        if len(start) == limit:
            return TickPlan(start, tick)  # the next pass goes on from this one
        start.append(tick)
    return TickPlan(start, after_now)  # pragma: no cover (ticks() never ends)


def backfill_ticks(
    expression: str, timezone: str, *, since: datetime, until: datetime
) -> list[datetime]:
    """Every tick in [since, until), at most MAX_BACKFILL_TICKS (more is refused)."""
    if until <= since:
        raise InvalidInput("the backfill range is empty: `until` must be after `since`")
    found: list[datetime] = []
    for tick in ticks(expression, timezone, after=since - timedelta(microseconds=1)):
        if tick >= until:
            return found
        if len(found) == MAX_BACKFILL_TICKS:
            raise InvalidInput(
                f"the backfill range holds more than {MAX_BACKFILL_TICKS} ticks: backfill a "
                "shorter range at a time"
            )
        found.append(tick)
    return found  # pragma: no cover
