"""The id of a schedule's run: the schedule's name and the tick, so starting a tick twice (two
schedulers, a retry after a crash, a backfill over a tick that ran) makes one workflow."""

from __future__ import annotations

from datetime import UTC, datetime

SEPARATOR = "@"


def run_id(schedule: str, tick: datetime) -> str:
    return f"{schedule}{SEPARATOR}{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def tick_of(workflow_id: str) -> datetime | None:
    """The tick a run's id stands for (None for another workflow's id)."""
    _, sep, stamp = workflow_id.rpartition(SEPARATOR)
    if not sep:
        return None
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
