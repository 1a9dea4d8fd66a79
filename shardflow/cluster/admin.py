"""Cluster-wide administration: migrate every node, initialise the placement, report status."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from shardflow.cluster.citus import CitusAdmin, init_citus, migrate_citus
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.rebalance import plan_moves
from shardflow.config import ClusterConfig
from shardflow.connectors import node_connector
from shardflow.errors import ConfigurationError, ShardflowError
from shardflow.routing import Placement, PlacementNode, target_placement
from shardflow.storage import AdminStore
from shardflow.storage.citus_store import RebalanceProgress
from shardflow.storage.conninfo import public_conninfo
from shardflow.storage.records import (
    ConnectionUse,
    NodeIdentity,
    QueueDepth,
    StalledWorkflow,
    UnservedWork,
)


@asynccontextmanager
async def admin_stores(config: ClusterConfig) -> AsyncIterator[dict[str, AdminStore]]:
    """An AdminStore per configured node, closed on exit."""
    config.require_nodes()
    connectors = [
        node_connector(config, n.name, n.dsn, role="admin", pool_max_size=2, operation_timeout=None)
        for n in config.nodes
    ]
    try:
        yield {c.name: AdminStore(c) for c in connectors}
    finally:
        await asyncio.gather(*(c.close() for c in connectors))


async def migrate_all(config: ClusterConfig) -> dict[str, list[int]]:
    """Apply missing migrations on every node; returns the versions applied per node.

    On Citus, on the coordinator (it propagates the DDL), then new tables are distributed.
    """
    if config.backend == "citus":
        async with ClusterAdmin(config) as admin:
            return {config.nodes[0].name: await migrate_citus(admin)}
    async with admin_stores(config) as stores:
        results = await asyncio.gather(*(s.migrate() for s in stores.values()))
        return dict(zip(stores, results, strict=True))


async def init_cluster(config: ClusterConfig) -> Placement:
    """Migrate every node and give the cluster its first placement. Idempotent.

    A node already in another cluster, or a cluster initialised with other nodes or another
    partition count, is refused with what to do instead. On Citus, the configured node is
    the coordinator: see ``shardflow.cluster.citus.init_citus``.
    """
    if config.backend == "citus":
        async with ClusterAdmin(config) as admin:
            return await init_citus(admin)
    await migrate_all(config)
    async with admin_stores(config) as stores:
        identities = dict(
            zip(stores, await asyncio.gather(*(s.identity() for s in stores.values())), strict=True)
        )
        placements = [
            p
            for p in await asyncio.gather(*(s.latest_placement() for s in stores.values()))
            if p is not None
        ]
        cluster_ids = {i.cluster_id for i in identities.values() if i is not None}
        if len(cluster_ids) > 1:
            raise ConfigurationError(
                "the configured nodes belong to different shardflow clusters; "
                "list only the nodes of one cluster"
            )
        if placements:
            placement = max(placements, key=lambda p: p.version)
            _check_matches(config, placement)
        else:
            weights = {n.name: n.weight for n in config.nodes}
            owners = target_placement(weights, config.partition_count)
            placement = Placement(
                version=1,
                nodes=tuple(
                    PlacementNode(name=n.name, conninfo=public_conninfo(n.dsn), weight=n.weight)
                    for n in config.nodes
                ),
                owners=tuple(owners),
            )
        cluster_id = cluster_ids.pop() if cluster_ids else str(uuid.uuid4())
        await asyncio.gather(
            *(
                store.initialize(
                    identity=NodeIdentity(
                        cluster_id=cluster_id,
                        node_name=name,
                        partition_count=placement.partition_count,
                    ),
                    placement=placement,
                    owned=placement.partitions_of(name) if placement.version == 1 else [],
                )
                for name, store in stores.items()
            )
        )
        return placement


def _check_matches(config: ClusterConfig, placement: Placement) -> None:
    configured = {n.name for n in config.nodes}
    placed = {n.name for n in placement.nodes}
    if configured != placed:
        raise ConfigurationError(
            f"the cluster is already initialised with nodes {sorted(placed)}, not "
            f"{sorted(configured)}; change membership with the add-node/remove-node commands"
        )
    if placement.partition_count != config.partition_count:
        raise ConfigurationError(
            f"the cluster has {placement.partition_count} partitions, fixed at init; "
            f"set partition_count = {placement.partition_count} in the configuration"
        )


@dataclass
class NodeStatus:
    """What ``cluster status`` shows for one node.

    ``partitions_placed`` is what the placement gives the node: for a node that cannot be
    reached it is the best answer to "which partitions are unavailable now".
    """

    name: str
    address: str
    reachable: bool
    error: str = ""
    weight: int | None = None
    partitions_owned: int = 0
    partitions_moving: int = 0
    partitions_placed: int = 0
    unfinished_moves: int = 0
    placement_version: int | None = None
    workflows: dict[str, int] = field(default_factory=dict)
    # app -> live workers registered on this node.
    workers: dict[str, int] = field(default_factory=dict)
    # Pending work: runnable now (and the oldest one's wait), and not yet due.
    queue: QueueDepth | None = None
    # The node's server: client connections open and allowed (on Citus the coordinator's).
    connections: ConnectionUse | None = None
    # Plain: partition moves this node gave partitions away in, ever and in the last hour.
    moves_done: int = 0
    moves_done_last_hour: int = 0


@dataclass
class ClusterStatus:
    """The cluster at a glance: nodes, whether a rebalance is due or in progress, and the
    watchdog's findings (stalled runs, pending work that no live worker runs)."""

    placement_version: int | None
    nodes: list[NodeStatus]
    # Plain: partitions a rebalance would move; Citus: shard moves Citus's plan holds.
    partitions_to_move: int
    stalled_after_seconds: float
    backend: str = "plain"
    stalled: list[StalledWorkflow] = field(default_factory=list)
    stalled_total: int = 0
    unserved: list[UnservedWork] = field(default_factory=list)
    rebalance_in_progress: bool = False
    # Citus: the background rebalance job under way (its shard moves done of total).
    citus_rebalance: RebalanceProgress | None = None

    def __post_init__(self) -> None:
        self.rebalance_in_progress = self.citus_rebalance is not None or any(
            n.unfinished_moves or n.partitions_moving for n in self.nodes
        )

    def rebalance_progress(self) -> tuple[int, int] | None:
        """(moved, of) while a rebalance is in progress, else None. Citus: its job's shard
        moves; plain: partitions moved in the last hour, of those plus the moves unfinished
        and those still due for balance."""
        if not self.rebalance_in_progress:
            return None
        if self.citus_rebalance is not None:
            return self.citus_rebalance.done, self.citus_rebalance.total
        moved = sum(n.moves_done_last_hour for n in self.nodes)
        unfinished = sum(n.unfinished_moves for n in self.nodes)
        return moved, moved + unfinished + self.partitions_to_move

    def to_json(self) -> dict[str, Any]:
        """Everything the text view shows, for machines (timestamps as ISO 8601)."""
        return cast(dict[str, Any], json.loads(json.dumps(asdict(self), default=_iso)))


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {value!r}")


# How many stalled runs and unserved (app, name) groups a status lists per node.
_LISTED = 20


async def cluster_status(
    config: ClusterConfig, *, stalled_after: float | None = None
) -> ClusterStatus:
    """Every node of the configuration and of the placement; never raises for one node.

    ``stalled_after`` (seconds, default the config's ``stall_seconds``): a running workflow
    whose lease is live but that recorded nothing for longer is reported as stalled.
    """
    quiet = config.stall_seconds if stalled_after is None else stalled_after
    async with ClusterAdmin(config) as admin:
        try:
            placement: Placement | None = await admin.latest_placement()
        except ShardflowError:
            placement = None
        weights = placement.weights() if placement else {}
        found = await asyncio.gather(
            *(
                _node_status(
                    admin,
                    name,
                    weights.get(name),
                    placement.partitions_of(name) if placement else [],
                    quiet,
                )
                for name in _status_nodes(config, admin, placement)
            )
        )
        return ClusterStatus(
            placement_version=placement.version if placement else None,
            nodes=[node for node, _, _, _ in found],
            partitions_to_move=await _moves_due(admin, placement),
            citus_rebalance=await _citus_job(admin),
            backend=config.backend,
            stalled_after_seconds=quiet,
            stalled=sorted(
                (s for _, stalled, _, _ in found for s in stalled),
                key=lambda s: s.last_progress_at,
            )[:_LISTED],
            stalled_total=sum(total for _, _, total, _ in found),
            unserved=[u for _, _, _, unserved in found for u in unserved],
        )


async def _moves_due(admin: ClusterAdmin, placement: Placement | None) -> int:
    if placement is None:
        return 0
    if admin.config.backend == "citus":
        try:
            return len(await CitusAdmin(admin).plan())
        except ShardflowError:
            return 0
    return len(plan_moves(placement))


async def _citus_job(admin: ClusterAdmin) -> RebalanceProgress | None:
    if admin.config.backend != "citus":
        return None
    try:
        citus = CitusAdmin(admin).citus
        job = await citus.rebalance_running()
        progress = await citus.rebalance_progress(job) if job is not None else None
    except ShardflowError:
        return None  # the coordinator is down: its node row says so
    return None if progress is None or progress.finished else progress


def _status_nodes(
    config: ClusterConfig, admin: ClusterAdmin, placement: Placement | None
) -> list[str]:
    """Plain: every node known. Citus: the nodes holding shards (the configured coordinator
    is only the way in, unless it is all the placement could be read from)."""
    if config.backend == "citus" and placement is not None:
        return sorted(n.name for n in placement.nodes)
    return admin.node_names


async def _node_status(
    admin: ClusterAdmin, name: str, weight: int | None, placed: list[int], quiet: float
) -> tuple[NodeStatus, list[StalledWorkflow], int, list[UnservedWork]]:
    store = admin.admin(name)
    status = NodeStatus(
        name=name,
        address=store.db.address,
        reachable=False,
        weight=weight,
        partitions_placed=len(placed),
    )
    try:
        ownership = await store.ownership(partitions=placed)
        placement = await store.latest_placement()
        status.workflows = await store.status_counts(partitions=placed)
        status.workers = await store.live_workers()
        status.queue = await store.queue_depth(partitions=placed)
        status.connections = await store.connection_use()
        status.unfinished_moves = len(await admin.mover(name).active_moves())
        if admin.config.backend != "citus":  # Citus moves shards itself: no journal
            status.moves_done, status.moves_done_last_hour = await admin.mover(name).moves_done()
        stalled, total = await store.stalled(
            quiet=timedelta(seconds=quiet), limit=_LISTED, partitions=placed
        )
        unserved = await store.unserved_work(limit=_LISTED, partitions=placed)
    except ShardflowError as exc:
        status.error = str(exc)
        return status, [], 0, []
    status.reachable = True
    status.partitions_owned = sum(1 for o in ownership if o.state == "owned")
    status.partitions_moving = sum(1 for o in ownership if o.state == "moving")
    status.placement_version = placement.version if placement else None
    return status, stalled, total, unserved
