"""``shardflow bench rebalance``: add a node to a loaded cluster and move partitions onto it
while a client keeps starting workflows and a worker keeps running them.

Reports rows copied and rows/s, the per-partition write freeze (p50/p99/max), client-visible
errors, and whether every workflow started during the move completed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shardflow.bench import workloads
from shardflow.bench.common import percentile
from shardflow.client import Client
from shardflow.cluster.admin import init_cluster
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.rebalance import MoveResult, Rebalancer
from shardflow.cluster.verify import check_cluster
from shardflow.config import WorkerSettings
from shardflow.errors import ShardflowError
from shardflow.worker import Worker


@dataclass
class RebalanceBenchResult:
    nodes_before: int
    partitions: int
    workflows_per_partition: int
    partitions_moved: int
    rows_copied: int
    seconds: float
    rows_per_second: float
    freeze_p50_ms: float
    freeze_p99_ms: float
    freeze_max_ms: float
    load_started: int
    load_completed: int
    client_errors: int
    start_p99_ms: float
    consistency_problems: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_rebalance_bench(
    *, nodes: int, partitions: int, per_partition: int, root: Path, keep: bool
) -> RebalanceBenchResult:
    local = LocalCluster(root / "cluster")
    try:
        config = local.create(nodes=nodes, partition_count=partitions, schema="shardflow")
        config = config.replace(
            worker=WorkerSettings(
                concurrency=32,
                lease_seconds=10,
                heartbeat_seconds=3,
                poll_seconds=0.5,
                reaper_seconds=0.5,
                membership_seconds=0.5,
            )
        )
        placement = await init_cluster(config)
        async with ClusterAdmin(config) as admin:

            async def fill(node: str) -> None:  # one partition at a time per node
                for p in placement.partitions_of(node):
                    await admin.bench(node).fill(p, per_partition)

            await asyncio.gather(*(fill(n.name) for n in placement.nodes))
        moves: list[MoveResult] = []
        started: list[str] = []
        latencies: list[float] = []
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def load(client: Client) -> None:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    handle = await client.start(workloads.w, 1, workflow_id=f"load-{uuid.uuid4()}")
                    started.append(handle.workflow_id)
                    latencies.append(time.monotonic() - began)
                except ShardflowError as exc:
                    errors.append(exc)
                await asyncio.sleep(0.005)

        async with Worker(workloads.app, config), Client(config, app=workloads.app) as client:
            load_task = asyncio.create_task(load(client))
            new_node = local.add_node()
            began = time.monotonic()
            async with ClusterAdmin(config) as admin:
                await admin.add_node(new_node)
                await Rebalancer(admin, on_move=moves.append).run()
                seconds = time.monotonic() - began
                stop.set()
                await load_task
                outcomes = await asyncio.gather(
                    *(client.result(i, timeout=120) for i in started), return_exceptions=True
                )
                problems = (await check_cluster(admin)).problems
        freezes = [m.freeze_seconds * 1000 for m in moves]
        rows = sum(m.rows for m in moves)
        return RebalanceBenchResult(
            nodes_before=nodes,
            partitions=partitions,
            workflows_per_partition=per_partition,
            partitions_moved=len(moves),
            rows_copied=rows,
            seconds=round(seconds, 3),
            rows_per_second=round(rows / seconds, 1) if seconds else 0.0,
            freeze_p50_ms=round(statistics.median(freezes), 1) if freezes else 0.0,
            freeze_p99_ms=round(percentile(freezes, 0.99), 1),
            freeze_max_ms=round(max(freezes, default=0.0), 1),
            load_started=len(started),
            load_completed=sum(1 for o in outcomes if o == 4),
            client_errors=len(errors),
            start_p99_ms=round(percentile([x * 1000 for x in latencies], 0.99), 1),
            consistency_problems=len(problems),
        )
    finally:
        if not keep:
            local.destroy()
