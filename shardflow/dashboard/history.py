"""The dashboard's last hour per node: throughput and latency, sampled in the background.

Every ``interval`` seconds the sampler reads, per node, the count of ended workflows (the
difference between two samples is the throughput), the claims each live worker made there
(from its heartbeat: the claims/s) and the start -> end times of the newest
finished workflows (a bounded read of the newest-first index, whatever the table's size).
Kept in memory for an hour; drawn as inline SVG (no JavaScript, no chart library).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from shardflow.bench.common import percentile
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig
from shardflow.errors import ShardflowError
from shardflow.storage.records import WorkerClaims

log = logging.getLogger("shardflow.dashboard")

ENDED = ("succeeded", "failed", "cancelled", "dead")
HOUR = 3600.0
# The latency sample: the newest 2,000 workflows started 20 to 10 seconds ago (one not
# finished yet counts as running until now: slow ones are in the sample, not left out).
LATENCY_STARTED = (timedelta(seconds=20), timedelta(seconds=10))
LATENCY_SAMPLE = 2000


@dataclass(frozen=True)
class Point:
    at: float  # time.time()
    ended_per_second: float | None  # None for a node's first sample
    claims_per_second: float | None  # None for a node's first sample
    p50_seconds: float | None  # None: nothing finished in the window
    p99_seconds: float | None


class History:
    """Per node, the last hour of points; ``sample()`` adds one per reachable node."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        interval: float = 10.0,
        latency_started: tuple[timedelta, timedelta] = LATENCY_STARTED,
    ):
        self.config = config
        self.interval = interval
        self.latency_started = latency_started
        self.points: dict[str, deque[Point]] = {}
        self._ended: dict[str, tuple[float, int]] = {}
        # node -> live worker -> (its last beat read, its rate then): see _claim_rate.
        self._claims: dict[str, dict[str, tuple[WorkerClaims, float | None]]] = {}
        self._sampled_at: dict[str, float] = {}

    async def sample(self) -> None:
        async with ClusterAdmin(self.config) as admin:
            placement = await admin.latest_placement()
            # The nodes that hold workflows (on Citus not the coordinator).
            names = [node.name for node in placement.nodes]
            await asyncio.gather(
                *(self._sample_node(admin, n, placement.partitions_of(n)) for n in names)
            )

    async def _sample_node(self, admin: ClusterAdmin, node: str, partitions: list[int]) -> None:
        store = admin.admin(node)
        try:
            counts = await store.status_counts(partitions=partitions)
            claims = await store.worker_claims(node)
            seconds = await store.recent_latencies(
                started=self.latency_started, limit=LATENCY_SAMPLE, partitions=partitions
            )
        except ShardflowError:
            return  # a gap in its line: the cluster page says the node is down
        now = time.time()
        ended = sum(counts.get(s, 0) for s in ENDED)
        before = self._ended.get(node)
        self._ended[node] = (now, ended)
        rate = (ended - before[1]) / (now - before[0]) if before and now > before[0] else None
        claim_rate = self._claim_rate(node, claims)
        points = self.points.setdefault(node, deque(maxlen=int(HOUR / self.interval) + 1))
        points.append(
            Point(
                at=now,
                ended_per_second=max(0.0, rate) if rate is not None else None,
                claims_per_second=claim_rate,
                p50_seconds=statistics.median(seconds) if seconds else None,
                p99_seconds=percentile(seconds, 0.99) if seconds else None,
            )
        )

    def _claim_rate(self, node: str, claims: dict[str, WorkerClaims]) -> float | None:
        """The node's claims per second: per live worker, the claims between two of its own
        heartbeats over the time between them (a sample between two beats keeps the last
        rate: the page's sampling does not alias with the beats). A worker that started
        since the previous sample counts from its start; one seen for the first time but
        older (the dashboard just started) has no rate yet. None on a node's first sample."""
        before = self._claims.get(node, {})
        first = node not in self._sampled_at
        previous_sample = self._sampled_at.get(node, 0.0)
        self._sampled_at[node] = time.time()
        rates: dict[str, tuple[WorkerClaims, float | None]] = {}
        for owner, now in claims.items():
            if owner in before:
                then, rate = before[owner]
                if now.seen_at > then.seen_at:
                    rate = max(0, now.claimed - then.claimed) / (now.seen_at - then.seen_at)
            elif not first and now.started_at >= previous_sample and now.seen_at > now.started_at:
                rate = now.claimed / (now.seen_at - now.started_at)
            else:
                rate = None
            rates[owner] = (now, rate)
        self._claims[node] = rates
        if first:
            return None
        return sum(rate for _, rate in rates.values() if rate is not None)

    def latest(self, node: str) -> Point | None:
        """The node's newest point, unless it is stale (the node stopped answering)."""
        points = self.points.get(node)
        if not points or time.time() - points[-1].at > 3 * self.interval:
            return None
        return points[-1]

    def slowest(self) -> str | None:
        """The node whose latest p99 start -> end is the highest (None: no sample yet)."""
        latest = {n: p.p99_seconds for n in self.points if (p := self.latest(n)) is not None}
        ranked = [(p99, n) for n, p99 in latest.items() if p99 is not None]
        return max(ranked)[1] if len(ranked) > 1 else None

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.sample()
            except ShardflowError as exc:
                log.warning("dashboard sample failed: %s", exc)
            except Exception:  # a bug: say so, keep sampling (the pages still work)
                log.exception("dashboard sampler crashed; it samples again next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)


def chart(
    series: dict[str, list[tuple[float, float]]],
    colours: dict[str, str],
    *,
    unit: str,
    width: int = 640,
    height: int = 160,
) -> str:
    """An inline SVG line chart: one polyline per node over the last hour (x: seconds ago)."""
    now = time.time()
    values = [v for points in series.values() for _, v in points]
    top = max(values, default=0.0) or 1.0
    pad = 28
    lines = []
    for node, points in sorted(series.items()):
        coords = " ".join(
            f"{pad + (width - pad) * (1 - min(HOUR, now - at) / HOUR):.1f},"
            f"{height - pad - (height - 2 * pad) * value / top:.1f}"
            for at, value in points
        )
        if coords:
            colour = colours.get(node, "#888")
            lines.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{coords}">'
                f"<title>{html.escape(node)}</title></polyline>"
            )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img"><rect x="{pad}" y="{pad}" width="{width - pad}" height="{height - 2 * pad}" '
        f'fill="#fff" stroke="#d5d9e0"/>'
        f'<text x="{pad}" y="{pad - 8}" font-size="11">{top:.3g} {unit}</text>'
        f'<text x="{pad}" y="{height - 8}" font-size="11">an hour ago</text>'
        f'<text x="{width - 4}" y="{height - 8}" font-size="11" text-anchor="end">now</text>'
        + "".join(lines)
        + "</svg>"
    )
