"""Cron expressions, read by croniter (a maintained library: 5 fields, or 6 with seconds
last, and DST-aware iteration in a time zone). The rest of shardflow sees only this module."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from shardflow.errors import InvalidInput


def check_cron(expression: str, timezone: str) -> ZoneInfo:
    """Refuse a malformed expression, one that never ticks (30 February) or an unknown time
    zone; the zone, checked."""
    if (
        not isinstance(expression, str)
        or len(expression.split()) not in (5, 6)
        or not croniter.is_valid(expression, strict=True)
    ):
        raise InvalidInput(
            f"schedule {expression!r} is not a cron expression: five fields (minute hour "
            "day-of-month month day-of-week, e.g. '*/5 * * * *'), or six with seconds last"
        )
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInput(
            f"time zone {timezone!r} is unknown: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    try:
        croniter(expression, datetime.now(UTC).astimezone(zone)).get_next(datetime)
    except (CroniterError, ValueError):
        raise InvalidInput(
            f"schedule {expression!r} never ticks (a day that does not exist?): check the "
            "day-of-month and month fields"
        ) from None
    return zone


def ticks(expression: str, timezone: str, *, after: datetime) -> Iterator[datetime]:
    """The ticks strictly after ``after``, in UTC, forever (the caller bounds it)."""
    zone = check_cron(expression, timezone)
    it = croniter(expression, after.astimezone(zone))
    while True:
        yield it.get_next(datetime).astimezone(UTC)


def next_tick(expression: str, timezone: str, *, after: datetime) -> datetime:
    return next(ticks(expression, timezone, after=after))


def latest_tick(expression: str, timezone: str, *, at_or_before: datetime) -> datetime:
    """The last tick at or before ``at_or_before`` (UTC)."""
    zone = check_cron(expression, timezone)
    # croniter's get_prev excludes its start: start a microsecond later to include it.
    it = croniter(expression, (at_or_before + timedelta(microseconds=1)).astimezone(zone))
    prev: datetime = it.get_prev(datetime)
    return prev.astimezone(UTC)
