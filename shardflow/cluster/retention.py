"""``shardflow gc``: one collector pass over every node, from the command line.

The workers' collectors do the same every ``worker.gc_seconds``; this is for a cluster whose
workers are stopped, for a backlog after retention was shortened, and to measure the rate.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig
from shardflow.errors import ShardflowError
from shardflow.storage.retention_store import RetentionStore, collect


@dataclass(frozen=True)
class NodeCollection:
    """What one node's pass did (``removed``) or would do (``due``, a dry run)."""

    node: str
    due: int = 0
    removed: int = 0
    seconds: float = 0.0
    error: str = ""


async def collect_garbage(
    config: ClusterConfig, *, dry_run: bool = False, batch: int | None = None
) -> list[NodeCollection]:
    """Every node of the placement at once; a node that fails is reported, not raised."""
    size = batch or config.worker.gc_batch
    async with ClusterAdmin(config) as admin:
        placement = await admin.latest_placement()

        async def one(name: str) -> NodeCollection:
            # Citus: the node's partitions from the placement; plain: its ownership rows.
            mine = placement.partitions_of(name) if config.backend == "citus" else []
            store = RetentionStore(
                admin.connector(name), lambda: mine, citus=config.backend == "citus"
            )
            started = time.monotonic()
            try:
                if dry_run:
                    return NodeCollection(node=name, due=await store.due())
                removed = await collect(store, batch=size)
            except ShardflowError as exc:
                return NodeCollection(node=name, error=str(exc))
            return NodeCollection(node=name, removed=removed, seconds=time.monotonic() - started)

        return list(await asyncio.gather(*(one(n.name) for n in placement.nodes)))
