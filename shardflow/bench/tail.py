"""Where a run's slowest pick-ups were, to tell the causes of a latency tail apart.

The slowest 1% of pick-ups (start -> first claim) are grouped by partition and by the 10-second
window they were started in:
- few partitions, many windows: a claim fairness problem (some partitions wait while others
  are served; the soak found one);
- many partitions, few windows: stall episodes (a checkpoint, a vacuum, a paused process);
- many partitions, many windows: plain queueing, the load is close to the maximum.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from shardflow.storage.bench_store import RunTiming

WINDOW_SECONDS = 10.0


def pickup_tail(rows: Sequence[RunTiming], fraction: float = 0.01) -> dict[str, Any]:
    if not rows:
        return {}
    by_pickup = sorted(rows, key=lambda r: r.claimed - r.created, reverse=True)
    slowest = by_pickup[: max(1, math.ceil(len(rows) * fraction))]
    first = min(r.created for r in rows)
    windows = Counter(int((r.created - first) // WINDOW_SECONDS) for r in slowest)
    partitions = Counter(r.partition for r in slowest)
    return {
        "workflows": len(slowest),
        "pickup_from_ms": round((slowest[-1].claimed - slowest[-1].created) * 1000, 2),
        "partitions": len(partitions),
        "partitions_in_run": len({r.partition for r in rows}),
        "top_partition_share": round(partitions.most_common(1)[0][1] / len(slowest), 4),
        "windows": len(windows),
        "windows_in_run": int((max(r.created for r in rows) - first) // WINDOW_SECONDS) + 1,
        "top_window_share": round(windows.most_common(1)[0][1] / len(slowest), 4),
        # [seconds after the first start, share of the slowest] of the worst windows.
        "worst_windows": [
            [window * WINDOW_SECONDS, round(count / len(slowest), 4)]
            for window, count in windows.most_common(5)
        ],
    }


def describe(tail: dict[str, Any]) -> str:
    if not tail:
        return "no workflows"
    return (
        f"slowest {tail['workflows']} pick-ups (>= {tail['pickup_from_ms']:.0f} ms) in "
        f"{tail['partitions']} of {tail['partitions_in_run']} partitions "
        f"(busiest {tail['top_partition_share']:.1%}) and {tail['windows']} of "
        f"{tail['windows_in_run']} 10-s windows (busiest {tail['top_window_share']:.1%})"
    )
