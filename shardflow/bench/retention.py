"""`shardflow bench gc`: how fast the collector removes finished workflows.

A fresh local cluster is loaded with finished workflows (3 checkpoints each) whose retention
has passed, straight into the tables; then one collector pass on every node at once (what
`shardflow gc` does) is timed. Each removed workflow takes its checkpoints with it, so the
rows removed are 4 per workflow.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shardflow.cluster.admin import init_cluster
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.retention import collect_garbage


@dataclass
class GcBenchResult:
    nodes: int
    partitions: int
    batch: int
    workflows: int
    removed: int
    seconds: float
    workflows_per_second: float
    rows_per_second: float
    left: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_gc_bench(
    *, nodes: int, partitions: int, per_partition: int, batch: int, root: Path
) -> GcBenchResult:
    local = LocalCluster(root / "cluster")
    try:
        config = local.create(nodes=nodes, partition_count=partitions, schema="shardflow")
        placement = await init_cluster(config)
        async with ClusterAdmin(config) as admin:

            async def fill(node: str) -> None:
                for p in placement.partitions_of(node):
                    await admin.bench(node).fill(p, per_partition, due=True)

            await asyncio.gather(*(fill(n.name) for n in placement.nodes))
        began = time.monotonic()
        results = await collect_garbage(config, batch=batch)
        seconds = time.monotonic() - began
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"the collector failed: {errors}")
        removed = sum(r.removed for r in results)
        left = sum(r.due for r in await collect_garbage(config, dry_run=True))
        return GcBenchResult(
            nodes=nodes,
            partitions=partitions,
            batch=batch,
            workflows=per_partition * partitions,
            removed=removed,
            seconds=round(seconds, 3),
            workflows_per_second=round(removed / seconds, 1),
            rows_per_second=round(4 * removed / seconds, 1),
            left=left,
        )
    finally:
        local.destroy()
