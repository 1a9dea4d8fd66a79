"""Cluster operations on a Citus backend, where Citus owns placement and shard moves.

The same commands as on plain nodes (`cluster init`, `add-node`, `rebalance`, `drain`,
`remove-node`, `check`) map to Citus's own functions on the coordinator: shardflow's
partition mover is not used, and the placement shardflow routes by is read back from Citus's
metadata. Partitions are hash-distributed over ``min(32, partition_count)`` shards; all of a
partition's rows share one shard group, so one partition's transaction is local to one node.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig
from shardflow.errors import ConfigurationError, NodeUnavailable, ShardflowError
from shardflow.routing import Placement, PlacementNode
from shardflow.storage import AdminStore
from shardflow.storage.citus_store import CitusStore, RebalanceProgress, citus_node_name
from shardflow.storage.connector import StorageError
from shardflow.storage.conninfo import parse_conninfo
from shardflow.storage.records import NodeIdentity

log = logging.getLogger("shardflow.cluster")

# Shards per distributed table: enough to spread over a few dozen workers, few enough that a
# small cluster is not thousands of tables.
MAX_SHARDS = 32
# How often a running rebalance is polled for progress.
POLL_SECONDS = 0.5


def shard_count(partition_count: int) -> int:
    return min(MAX_SHARDS, partition_count)


async def init_citus(admin: ClusterAdmin) -> Placement:
    """Install shardflow on a Citus cluster through its coordinator. Idempotent.

    The migrations are the plain ones (Citus propagates the DDL); then the tables are
    distributed by partition and co-located, and every partition gets its ownership row.
    """
    config = admin.config
    store = AdminStore(admin.connector(config.nodes[0].name))
    await migrate_citus(admin)
    identity = await store.identity()
    if identity is not None and identity.partition_count != config.partition_count:
        raise ConfigurationError(
            f"the cluster has {identity.partition_count} partitions, fixed at init; set "
            f"partition_count = {identity.partition_count} in the configuration"
        )
    placement = await admin.latest_placement()
    await store.initialize(
        identity=identity
        or NodeIdentity(
            cluster_id=str(uuid.uuid4()),
            node_name="citus",
            partition_count=config.partition_count,
        ),
        placement=placement,
        owned=list(range(config.partition_count)),
    )
    return placement


async def migrate_citus(admin: ClusterAdmin) -> list[int]:
    """Apply missing migrations through the coordinator (Citus propagates the DDL), then
    distribute the tables that are not distributed yet. Returns the versions applied."""
    config = admin.config
    db = admin.connector(config.nodes[0].name)
    citus = CitusStore(db)
    await citus.require_citus()
    applied = await AdminStore(db).migrate()
    await citus.distribute(schema=config.schema, shard_count=shard_count(config.partition_count))
    return applied


def _address(node: PlacementNode) -> tuple[str, int]:
    return str(node.conninfo["host"]), int(node.conninfo["port"])


class CitusAdmin:
    """add-node, rebalance, drain and remove-node as Citus operations on the coordinator."""

    def __init__(self, admin: ClusterAdmin):
        self.admin = admin
        self.citus = CitusStore(admin.connector(admin.config.nodes[0].name))

    async def add_node(self, dsn: str) -> Placement:
        """Add a worker (a PostgreSQL server with the citus extension in the same database).

        It holds no shards until a rebalance moves some onto it.
        """
        params = parse_conninfo(dsn)
        host, port = str(params.get("host", "localhost")), int(params.get("port", 5432))
        await self.admin.audit("add-node", citus_node_name(host, port), host=host, port=port)
        await self.citus.add_node(host, port)
        return await self.admin.latest_placement()

    async def node_address(self, name: str) -> tuple[str, int]:
        placement = await self.admin.latest_placement()
        for node in placement.nodes:
            if node.name == name:
                return _address(node)
        known = ", ".join(n.name for n in placement.nodes)
        raise ConfigurationError(f"{name} is not a node of this Citus cluster (known: {known})")

    async def plan(self) -> list[str]:
        """The shard moves a rebalance would make, one line each."""
        return [
            f"shard {m['shardid']} of {m['table_name']}: {m['sourcename']}:{m['sourceport']} -> "
            f"{m['targetname']}:{m['targetport']}"
            for m in await self.citus.rebalance_plan()
        ]

    async def rebalance(
        self, *, progress: Callable[[RebalanceProgress], None] | None = None
    ) -> RebalanceProgress | None:
        """Run Citus's rebalancer (online shard moves) and wait for it; None when nothing
        needed to move. Raises when a move failed."""
        job = await self.citus.rebalance_running()
        if job is None:  # else: an earlier command started it; follow that one to its end
            await self.admin.audit("rebalance", "cluster", backend="citus")
            try:
                job = await self.citus.rebalance_start()
            except StorageError as exc:
                if "REPLICA IDENTITY" not in str(exc):
                    raise
                raise ConfigurationError(
                    f"{exc}. Citus moves shards online only for tables with a primary key or a "
                    "replica identity: give that table one (ALTER TABLE ... REPLICA IDENTITY "
                    "FULL), then run the rebalance again"
                ) from exc
        if job is None:
            return None
        return await self._wait(job, progress)

    async def drain(self, name: str) -> None:
        """Move every shard off a node and stop placing new ones there."""
        host, port = await self.node_address(name)
        await self.admin.audit("drain", name, host=host, port=port)
        await self.citus.drain_node(host, port)

    async def remove(self, name: str) -> Placement:
        """Remove a drained worker; refused while it holds a shard."""
        host, port = await self.node_address(name)
        if shards := await self.citus.node_shards(host, port):
            raise ConfigurationError(
                f"{name} still holds {shards} shards: run `shardflow cluster drain {name}` "
                "first (it moves them away)"
            )
        await self.admin.audit("remove-node", name, host=host, port=port)
        await self.citus.remove_node(host, port)
        return await self.admin.latest_placement()

    async def _wait(
        self, job: int, progress: Callable[[RebalanceProgress], None] | None
    ) -> RebalanceProgress:
        # No deadline: moving big shards takes as long as it takes; interrupting this
        # command leaves the job running, and running `rebalance` again follows it.
        while True:
            state = await self.citus.rebalance_progress(job)
            if progress is not None:
                progress(state)
            if state.finished:
                if state.state != "finished":
                    raise ShardflowError(
                        f"the Citus rebalance (job {job}) ended {state.state}: "
                        f"{state.error or 'see the coordinator log'}; run it again"
                    )
                return state
            await asyncio.sleep(POLL_SECONDS)


@dataclass
class CitusCheck:
    problems: list[str]
    placement_version: int
    workflows: int


async def check_citus(admin: ClusterAdmin) -> CitusCheck:
    """What `cluster check` verifies on Citus: every node answers, every partition is placed
    on an active node, nodes reach each other, and no rebalance is left half done."""
    placement = await admin.latest_placement()
    problems: list[str] = []
    workflows = 0
    unreachable = []
    for node in placement.nodes:
        partitions = placement.partitions_of(node.name)
        try:
            counts = await admin.admin(node.name).status_counts(partitions=partitions)
        except NodeUnavailable as exc:
            unreachable.append(node.name)
            problems.append(
                f"{node.name} is unreachable, its {len(partitions)} partitions could not be "
                f"checked: {str(exc).split(';')[0]}"
            )
            continue
        workflows += sum(counts.values())
    names = {n.name for n in placement.nodes}
    if orphans := [p for p, owner in enumerate(placement.owners) if owner not in names]:
        problems.append(f"partitions on inactive nodes: {orphans[:20]}")
    if not unreachable:  # Citus's own checks need every node
        citus = CitusStore(admin.connector(admin.config.nodes[0].name))
        problems += [f"nodes cannot reach each other: {x}" for x in await citus.unhealthy_links()]
        if await citus.rebalance_running() is not None:
            problems.append("a rebalance is running (or stopped half way): wait, or run it again")
    return CitusCheck(problems=problems, placement_version=placement.version, workflows=workflows)


def require_citus_config(config: ClusterConfig) -> None:
    if config.backend != "citus":
        raise ConfigurationError("this operation is for a Citus cluster (backend = 'citus')")
