"""Time bounds as people type them (``list --since``, the dashboard's time range)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shardflow.errors import InvalidInput
from shardflow.timebounds import parse_time_bound

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - timedelta(seconds=30)),
        ("15m", NOW - timedelta(minutes=15)),
        (" 2H ", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-12-06T14:00", datetime(2026, 12, 6, 14, 0, tzinfo=UTC)),
        ("2026-12-06", datetime(2026, 12, 6, tzinfo=UTC)),
        (
            "2026-12-06T14:00:00+02:00",
            datetime(2026, 12, 6, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
)
def test_the_forms_people_type(text: str, expected: datetime) -> None:
    parsed = parse_time_bound(text, what="--since", now=NOW)
    assert parsed == expected and parsed.tzinfo is not None


@pytest.mark.parametrize(
    "text", ["yesterday", "15", "m15", "-5m", "1y", "", "2026-13-01", "5 mins"]
)
def test_anything_else_is_refused_with_the_forms(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"--since must be a duration ago like 30s.*got"):
        parse_time_bound(text, what="--since", now=NOW)


def test_now_is_a_bound() -> None:
    at = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert parse_time_bound(" NOW ", what="--until", now=at) == at
