"""``Queue``: a named queue's limits, declared in code with ``app.queue(...)``.

Every limit holds per node: each node admits its own workflows of the queue, in one
transaction that sees every slot held there (docs/flow-control.md says what that means for
the cluster, and how to make a limit exact cluster-wide).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from shardflow.errors import ConfigurationError
from shardflow.timebounds import parse_duration

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")

Period = str | float | int | timedelta


@dataclass(frozen=True, kw_only=True)
class Queue:
    """A named queue of an app and its limits (None: no such limit).

    ``concurrency``: at most that many of its workflows hold a slot at once on a node, from
    admission until they end (sleeping and waiting for a signal included). ``per_key``: at most
    that many with one ``concurrency_key``. ``rate``/``period_seconds``: at most ``rate``
    admissions in any window of ``period_seconds`` on a node. Waiting workflows are admitted
    smallest ``priority`` first, then oldest first.
    """

    name: str
    app: str
    concurrency: int | None = None
    per_key: int | None = None
    rate: int | None = None
    period_seconds: float | None = None

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.concurrency, self.per_key, self.rate))


def declare_queue(
    name: str,
    *,
    app: str,
    concurrency: int | None,
    per_key: int | None,
    rate: tuple[int, Period] | None,
) -> Queue:
    """A checked Queue: ConfigurationError, naming the argument to fix, for a bad one."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(f"invalid queue name {name!r}: 1-100 letters, digits or _ . : -")
    for what, value in (("concurrency", concurrency), ("per_key", per_key)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigurationError(
                f"queue {name!r}: {what} must be a positive whole number or None (no limit); "
                f"got {value!r}"
            )
    count, period = None, None
    if rate is not None:
        if not isinstance(rate, tuple) or len(rate) != 2:
            raise ConfigurationError(
                f"queue {name!r}: rate must be (count, period), like (100, '1m'); got {rate!r}"
            )
        count, period = rate[0], _period_seconds(rate[1], name)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigurationError(
                f"queue {name!r}: a rate's count must be a positive whole number; got {count!r}"
            )
    return Queue(
        name=name,
        app=app,
        concurrency=concurrency,
        per_key=per_key,
        rate=count,
        period_seconds=period,
    )


def _period_seconds(value: Period, queue: str) -> float:
    what = f"queue {queue!r}: the rate's period"
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        seconds = parse_duration(value, what=what, error=ConfigurationError).total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(f"{what} must be seconds, a timedelta or '1m'; got {value!r}")
    if not 0.1 <= seconds <= 86400:
        raise ConfigurationError(f"{what} must be between 0.1 seconds and 1 day; got {value!r}")
    return seconds
