"""``shardflow bench drain PREFIX``: after a load run, wait for its workflows to end and say
how many completed, how many failed, what backlog is left, and the slowest start -> end.

A load run names its workflows with a common id prefix (``make load`` passes one to Locust).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig


@dataclass
class DrainReport:
    started: int
    completed: int
    failed: int
    backlog: int
    waited_seconds: float
    latency_max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        line = (
            f"{self.started} workflows started, {self.completed} ended ({self.failed} failed) "
            f"after waiting {self.waited_seconds:.1f}s; backlog left: {self.backlog}"
        )
        if self.completed:
            line += f"; slowest start -> end {self.latency_max_ms / 1000:.2f}s (database clock)"
        return line


async def drain_report(config: ClusterConfig, prefix: str, *, wait: float) -> DrainReport:
    """Wait up to ``wait`` seconds for every workflow whose id starts with ``prefix`` to end."""
    began = time.monotonic()
    async with ClusterAdmin(config) as admin:
        placement = await admin.latest_placement()
        nodes = [admin.bench(node.name) for node in placement.nodes]
        while True:
            counts = [await node.progress(prefix) for node in nodes]
            done, failed, total = (sum(c[i] for c in counts) for i in range(3))
            if done >= total or time.monotonic() - began >= wait:
                break
            await asyncio.sleep(0.5)
        timings = [t for node in nodes for t in await node.timings(prefix)]
    return DrainReport(
        started=total,
        completed=done,
        failed=failed,
        backlog=total - done,
        waited_seconds=round(time.monotonic() - began, 1),
        latency_max_ms=round(
            max(((t.completed - t.created) * 1000 for t in timings), default=0.0), 1
        ),
    )
