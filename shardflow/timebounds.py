"""Durations and time bounds typed by people: ``15m`` (that long, or that long ago) or an
ISO 8601 instant.

The CLI's ``list --since/--until`` and the dashboard's time-range filter read bounds, the
retention settings read durations: all accept the same text and refuse the same mistakes
with the same advice.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from shardflow.errors import InvalidInput, ShardflowError

_AGO = re.compile(r"^(\d{1,9})\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FORMS = "a duration ago like 30s, 15m, 2h, 7d, 1w, an ISO 8601 time like 2026-12-06T14:00, or now"


FOREVER = "forever"
# Longer than anything a workflow is kept or looked back at: past it, dates overflow (Python's
# at year 9999, PostgreSQL's intervals) and a retention would break its node's finish writes.
_LONGEST = timedelta(days=100 * 365)


def parse_duration(
    text: str, *, what: str, error: type[ShardflowError] = InvalidInput
) -> timedelta:
    """A duration like ``30s``, ``15m``, ``2h``, ``7d`` or ``1w`` (at most 100 years)."""
    match = _AGO.match(text.strip().lower())
    if not match:
        raise error(f"{what} must be a duration like 30s, 15m, 2h, 7d or 1w; got {text!r}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > _LONGEST.total_seconds():
        raise error(f"{what} {text!r} is longer than 100 years; for no limit use {FOREVER!r}")
    return timedelta(seconds=seconds)


def retention_seconds(
    value: str | timedelta | None, *, what: str, error: type[ShardflowError] = InvalidInput
) -> float | None:
    """How long a finished workflow is kept, in seconds; None keeps it for ever."""
    if value is None or (isinstance(value, str) and value.strip().lower() == FOREVER):
        return None
    if isinstance(value, timedelta):
        span = value
    elif isinstance(value, str) and _AGO.match(value.strip().lower()):
        span = parse_duration(value, what=what, error=error)
    else:
        raise error(
            f"{what} must be a duration like 30s, 15m, 2h, 7d or 1w, or {FOREVER!r}; got {value!r}"
        )
    if span > _LONGEST:
        raise error(f"{what} {value!r} is longer than 100 years; for no limit use {FOREVER!r}")
    if span < timedelta(0):
        raise error(f"{what} must not be negative; got {value!r}")
    return span.total_seconds()


def parse_time_bound(text: str, *, what: str, now: datetime | None = None) -> datetime:
    """The instant ``text`` names, timezone-aware. A time without an offset is UTC (the
    database's clock, whatever the machine's local zone is)."""
    cleaned = text.strip()
    if cleaned.lower() == "now":
        return now or datetime.now(UTC)
    if _AGO.match(cleaned.lower()):
        try:
            return (now or datetime.now(UTC)) - parse_duration(cleaned, what=what)
        except InvalidInput:
            raise InvalidInput(
                f"{what} {text!r} reaches back more than 100 years; leave it out to list from "
                "the first workflow"
            ) from None
    try:
        instant = datetime.fromisoformat(cleaned)
    except ValueError:
        raise InvalidInput(f"{what} must be {_FORMS}; got {text!r}") from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


def check_time_range(
    since: datetime | None,
    until: datetime | None,
    *,
    labels: tuple[str, str] = ("created_since", "created_until"),
) -> None:
    """Refuse naive datetimes (their meaning depends on the machine) and empty ranges;
    ``labels`` name the two bounds as the caller's user typed them."""
    for label, value in zip(labels, (since, until), strict=True):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(
                f"{label} must be timezone-aware (e.g. datetime.now(UTC)); a naive datetime "
                "means different instants on different machines"
            )
    if since is not None and until is not None and since >= until:
        raise InvalidInput(
            f"{labels[0]} ({since.isoformat()}) must be before {labels[1]} "
            f"({until.isoformat()}); swap them or widen the range"
        )
