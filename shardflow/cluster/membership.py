"""The administrator's view of the whole cluster: every node, the placement in force, and
the operations that change membership (add, drain, remove a node).

Membership changes and partition moves publish new placement versions; they all run under
one cluster-wide lease so two administrators cannot publish conflicting versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any

from shardflow.audit import default_actor
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.errors import (
    ClusterNotInitialized,
    ConfigurationError,
    NodeUnavailable,
    ShardflowError,
)
from shardflow.routing import Placement, PlacementNode
from shardflow.storage import AdminStore, NodeConnector, WorkerStore
from shardflow.storage.bench_store import BenchStore
from shardflow.storage.conninfo import public_conninfo, redact
from shardflow.storage.rebalance_store import RebalanceStore
from shardflow.storage.records import NodeIdentity
from shardflow.topology import Topology

log = logging.getLogger("shardflow.cluster")

LOCK_TTL = timedelta(seconds=60)


class ClusterAdmin:
    """Connections to every node of the configuration and of the latest placement."""

    def __init__(self, config: ClusterConfig, *, force: bool = False, actor: str | None = None):
        config.require_nodes()
        self.config = config
        self.actor = actor or default_actor()
        # Take the rebalance lease even from a live-looking holder (the operator knows it
        # is dead, e.g. on another host).
        self.force = force
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Administrative calls (a partition copy) may run long: no operation timeout.
        self.topology = Topology(
            config, role="admin", pool_max_size=3, operation_timeout=None, patient=True
        )

    async def __aenter__(self) -> ClusterAdmin:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.topology.close()

    def _add_connector(self, name: str, dsn: str) -> NodeConnector:
        return self.topology.add_node(name, dsn)

    def connector(self, name: str) -> NodeConnector:
        if name not in self.topology.node_names:
            raise ConfigurationError(f"unknown node {name!r}")
        return self.topology.connector(name)

    def admin(self, name: str) -> AdminStore:
        return AdminStore(self.connector(name))

    def mover(self, name: str) -> RebalanceStore:
        return RebalanceStore(self.connector(name))

    def bench(self, name: str) -> BenchStore:
        return BenchStore(self.connector(name))

    @property
    def node_names(self) -> list[str]:
        return self.topology.node_names

    async def latest_placement(self) -> Placement:
        """The placement in force (re-read every time); learns new nodes from it."""
        try:
            return await self.topology.refresh(force=True)
        except ClusterNotInitialized as exc:
            raise NodeUnavailable(
                f"no node answered with a placement ({exc}): start the nodes, or initialise "
                "the cluster with `shardflow cluster init`",
                node="*",
            ) from exc

    async def publish(self, placement: Placement, *, extra_nodes: tuple[str, ...] = ()) -> None:
        """Store ``placement`` on every node of it (and ``extra_nodes``) that can be reached.

        A version can be written once; if a node already has this version with other
        owners, another administrator published concurrently and this one stops.
        """
        names = {n.name for n in placement.nodes} | set(extra_nodes)
        results = await asyncio.gather(
            *(self.admin(n).store_placement(placement) for n in sorted(names)),
            return_exceptions=True,
        )
        stored = 0
        for name, result in zip(sorted(names), results, strict=True):
            if isinstance(result, NodeUnavailable):
                log.warning(
                    "placement v%d not stored on %s (down): it will learn it later",
                    placement.version,
                    name,
                    extra={"node": name},
                )
            elif isinstance(result, BaseException):
                raise result
            elif result is False:
                raise ShardflowError(
                    f"node {name} already has a different placement v{placement.version}: "
                    "another rebalance is running; wait for it, then run this again"
                )
            else:
                stored += 1
        if stored == 0:
            raise NodeUnavailable("the placement could not be stored on any node", node="*")

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[Placement]:
        """Hold the cluster's rebalance lease (on the first node by name) while changing it."""
        placement = await self.latest_placement()
        lock_node = min(n.name for n in placement.nodes)
        await self.renew_lock(placement)
        try:
            yield placement
        finally:
            with contextlib.suppress(NodeUnavailable):
                await WorkerStore(self.connector(lock_node)).release_service_lease(
                    service="rebalance", holder=self.holder
                )

    async def renew_lock(self, placement: Placement) -> None:
        lock_node = min(n.name for n in placement.nodes)
        store = WorkerStore(self.connector(lock_node))
        if await store.acquire_service_lease(service="rebalance", holder=self.holder, ttl=LOCK_TTL):
            return
        previous = await store.service_lease_holder("rebalance")
        if previous is not None and (self.force or _holder_is_dead(previous)):
            log.warning("taking over the rebalance lease from %s", previous)
            if await store.steal_service_lease(
                service="rebalance", holder=self.holder, previous=previous, ttl=LOCK_TTL
            ):
                return
        raise ShardflowError(
            f"{previous or 'another administrator'} holds the cluster's rebalance lease (on "
            f"{lock_node}); wait for it to finish, or if that process is gone, re-run with "
            "--force (the lease also expires 60 s after its holder stops)"
        )

    async def audit(self, action: str, target: str, **arguments: Any) -> None:
        """Record an administrative action on the lock node (no secrets in ``arguments``)."""
        placement = await self.latest_placement()
        await self.admin(min(n.name for n in placement.nodes)).audit(
            actor=self.actor, action=action, target=target, arguments=arguments
        )

    async def audit_log(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """The newest audit rows of every reachable node, newest first."""
        await self.latest_placement()
        # On Citus the audit log is one (reference) table: read it once.
        names = [self.config.nodes[0].name] if self.config.backend == "citus" else self.node_names
        answers = await asyncio.gather(
            *(self.admin(n).audit_log(limit=limit) for n in names),
            return_exceptions=True,
        )
        rows = [r for a in answers if isinstance(a, list) for r in a]
        return sorted(rows, key=lambda r: r["at"], reverse=True)[:limit]

    # -- membership ---------------------------------------------------------------------

    async def add_node(self, node: NodeConfig) -> Placement:
        """Join an empty PostgreSQL database to the cluster (no partitions yet). Idempotent."""
        async with self.exclusive() as placement:
            if any(n.name == node.name for n in placement.nodes):
                return placement
            await self.audit("add-node", node.name, dsn=redact(node.dsn), weight=node.weight)
            connector = self._add_connector(node.name, node.dsn)
            store = AdminStore(connector)
            await store.migrate()
            identity = await store.identity()
            cluster = await self.admin(placement.nodes[0].name).identity()
            assert cluster is not None
            if identity is not None and identity.cluster_id != cluster.cluster_id:
                raise ConfigurationError(
                    f"{node.name} already belongs to another shardflow cluster; use an empty "
                    "database or drop its shardflow schema first"
                )
            if (await RebalanceStore(connector).node_rows())["workflows"]:
                raise ConfigurationError(f"{node.name} already holds workflows; use an empty one")
            new = placement.with_nodes(
                (
                    *placement.nodes,
                    PlacementNode(
                        name=node.name, conninfo=public_conninfo(node.dsn), weight=node.weight
                    ),
                )
            )
            await store.initialize(
                identity=NodeIdentity(
                    cluster_id=cluster.cluster_id,
                    node_name=node.name,
                    partition_count=placement.partition_count,
                ),
                placement=new,
                owned=[],
            )
            await self.publish(new)
            return new

    async def set_weight(self, name: str, weight: int) -> Placement:
        """Change a node's weight (0 = drain it); partitions move at the next rebalance."""
        if weight < 0:
            raise ConfigurationError("a node's weight must be >= 0")
        async with self.exclusive() as placement:
            if not any(n.name == name for n in placement.nodes):
                raise ConfigurationError(f"{name} is not a node of this cluster")
            if weight == 0 and all(n.weight == 0 for n in placement.nodes if n.name != name):
                raise ConfigurationError(f"cannot drain {name}: no other node would own anything")
            nodes = tuple(
                PlacementNode(
                    name=n.name, conninfo=n.conninfo, weight=weight if n.name == name else n.weight
                )
                for n in placement.nodes
            )
            if nodes == placement.nodes:
                return placement
            await self.audit("drain" if weight == 0 else "set-weight", name, weight=weight)
            new = placement.with_nodes(nodes)
            await self.publish(new)
            return new

    async def remove_node(self, name: str) -> Placement:
        """Remove a drained node. Refused while it owns a partition or holds any row."""
        async with self.exclusive() as placement:
            if not any(n.name == name for n in placement.nodes):
                raise ConfigurationError(f"{name} is not a node of this cluster")
            if owned := placement.partitions_of(name):
                raise ConfigurationError(
                    f"{name} still owns {len(owned)} partitions: run `shardflow cluster drain "
                    f"{name}` first (it moves them away)"
                )
            try:
                counts = await self.mover(name).node_rows()
                active = await self.mover(name).active_moves()
            except NodeUnavailable:
                raise ConfigurationError(
                    f"{name} is unreachable, so it cannot be checked for data; bring it back "
                    "up (its data cannot be moved while it is down), then remove it"
                ) from None
            if any(counts.values()) or active:
                raise ConfigurationError(
                    f"{name} still holds {counts['workflows']} workflows, {counts['steps']} steps "
                    f"and {counts['partitions']} ownership rows ({len(active)} unfinished moves): "
                    "run `shardflow cluster rebalance` to finish moving them, then retry"
                )
            await self.audit("remove-node", name)
            new = placement.with_nodes(tuple(n for n in placement.nodes if n.name != name))
            await self.publish(new, extra_nodes=(name,))
            return new


def _holder_is_dead(holder: str) -> bool:
    """True when ``holder`` (host:pid:nonce) was a process on this host that has exited."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
