"""What the database servers did besides a run's own work, to tell a latency tail's causes.

Two sources: the servers' counters (checkpoints by trigger, WAL written, autovacuum runs),
subtracted over the run; and the checkpoint lines of each node's log (PostgreSQL logs them by
default since version 15), as seconds after the run's first start, so a report can put the
slowest windows next to the checkpoints that ran then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from shardflow.storage.bench_store import BenchStore

# "2026-12-06 05:40:01.123 UTC [123] @ LOG:  checkpoint starting: wal" (log_line_prefix '%m ...')
_CHECKPOINT_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC .*checkpoint starting: (?P<why>.+)$"
)


async def counters(servers: Sequence[BenchStore]) -> dict[str, float]:
    """The servers' maintenance counters, summed."""
    total: dict[str, float] = {}
    for server in servers:
        for key, value in (await server.maintenance()).items():
            total[key] = total.get(key, 0.0) + value
    return total


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, Any]:
    """What happened between two ``counters`` readings, in a report's units."""
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    return {
        "checkpoints_timed": int(delta["checkpoints_timed"]),
        "checkpoints_requested": int(delta["checkpoints_requested"]),
        "wal_mb": round(delta["wal_bytes"] / 2**20, 1),
        "autovacuums": int(delta["autovacuums"]),
    }


def checkpoint_starts(log_files: Iterable[Path], since: float) -> list[list[Any]]:
    """[seconds after ``since`` (epoch), trigger] of every checkpoint the logs show after it."""
    starts = []
    for path in log_files:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            found = _CHECKPOINT_LINE.match(line)
            if not found:
                continue
            at = datetime.strptime(found["at"] + " +0000", "%Y-%m-%d %H:%M:%S.%f %z")
            offset = at.timestamp() - since
            if offset >= 0:
                starts.append([round(offset, 1), found["why"].strip()])
    return sorted(starts)


def describe(work: dict[str, Any]) -> str:
    if not work:
        return "no server counters"
    return (
        f"server: {work['checkpoints_requested']} checkpoints requested (max_wal_size reached) "
        f"+ {work['checkpoints_timed']} timed, {work['wal_mb']:.0f} MB WAL, "
        f"{work['autovacuums']} autovacuums"
    )
