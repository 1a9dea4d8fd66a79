"""The cluster as a caller sees it: its nodes, the placement in force, one connector per node.

The client, the worker, its heartbeat and the administrator all use this one object; it is
the only code that asks nodes for the placement.

- **plain** nodes each keep every published placement; the one in force is the highest
  version any reachable node reports. Nodes that answer late (down, or blackholed until the
  connect timeout) are not waited for once another node answered: a placement that is behind
  is corrected by the fence (``PartitionMoved``, then a refresh).
- **citus**: Citus owns shard placement. The placement is read from its metadata (which worker
  holds the shard of each partition), through the configured coordinator or any worker that
  answers; its version is the newest placement id, which grows with every shard move. Calls
  go straight to the worker holding the partition's shard; a stale map is only slower (Citus
  routes the statement onwards), never wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence

from shardflow.config import ClusterConfig
from shardflow.connectors import dsn_for, node_connector
from shardflow.errors import ClusterNotInitialized, NodeUnavailable, ShardflowError
from shardflow.routing import Placement, partition_for
from shardflow.storage import AdminStore, NodeConnector
from shardflow.storage.citus_store import CitusStore

_UNSET = object()
# Once one node has answered a placement read, how long the others get: at least this, or
# twice what the first answer took.
LATE_ANSWER_GRACE = 0.25


class Topology:
    """Nodes, placement and connectors of one cluster, for one kind of caller (``role``)."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        role: str,
        pool_max_size: int | None = None,
        connect_timeout: float | None = None,
        operation_timeout: float | object | None = _UNSET,
        patient: bool = False,
    ):
        config.require_nodes()
        self.config = config
        self.role = role
        # Wait for every node's placement answer (administrators, who publish new versions),
        # instead of only a grace period after the first one (clients and workers).
        self.patient = patient
        self._options: dict[str, object] = {
            "pool_max_size": pool_max_size,
            "connect_timeout": connect_timeout,
        }
        if operation_timeout is not _UNSET:
            self._options["operation_timeout"] = operation_timeout
        self._connectors: dict[str, NodeConnector] = {}
        self._placement: Placement | None = None
        self._refresh_lock: asyncio.Lock | None = None

    @property
    def backend(self) -> str:
        return self.config.backend

    def add_node(self, name: str, dsn: str) -> NodeConnector:
        """The connector of node ``name`` (made on first use)."""
        if name not in self._connectors:
            self._connectors[name] = node_connector(
                self.config,
                name,
                dsn,
                role=self.role,
                **self._options,  # type: ignore[arg-type]
            )
        return self._connectors[name]

    def _add_configured(self) -> None:
        for node in self.config.nodes:
            self.add_node(node.name, node.dsn)

    def connector(self, name: str) -> NodeConnector:
        if name not in self._connectors:
            self._add_configured()
        try:
            return self._connectors[name]
        except KeyError:
            raise ClusterNotInitialized(
                f"the placement names node {name!r} but this process has no address for it; "
                "refresh the placement (or check the configuration)"
            ) from None

    @property
    def node_names(self) -> list[str]:
        """Every node known: configured, and learnt from the placement."""
        self._add_configured()
        return sorted(self._connectors)

    def dsns(self) -> dict[str, str]:
        """node -> DSN of every node of the placement in force (for the heartbeat thread)."""
        return {n.name: dsn_for(self.config, n) for n in self.placement.nodes}

    @property
    def placement(self) -> Placement:
        if self._placement is None:
            raise ClusterNotInitialized("the placement is not loaded yet: call refresh() first")
        return self._placement

    def route(self, key: str) -> tuple[int, str]:
        """(partition, owning node name) for a workflow id or routing key."""
        placement = self.placement
        partition = partition_for(key, placement.partition_count)
        return partition, placement.owner(partition)

    async def refresh(self, *, min_version: int = 0, force: bool = False) -> Placement:
        """Read the placement in force (unless the cached one is newer than ``min_version``)
        and learn the nodes it names."""
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        self._add_configured()
        async with self._refresh_lock:
            if not force and self._placement is not None and self._placement.version > min_version:
                return self._placement
            if self.backend == "citus":
                placement = await self._read_citus()
            else:
                placement = await self._read_plain()
            for node in placement.nodes:
                self.add_node(node.name, dsn_for(self.config, node))
            current = self._placement
            # Never go back: a read that missed the node with the newest version (it answered
            # after the grace period) must not replace a newer cached placement.
            if current is not None and placement.version < current.version:
                return current
            self._placement = placement
            return placement

    async def _read_plain(self) -> Placement:
        connectors = list(self._connectors.values())
        calls = [AdminStore(c).latest_placement() for c in connectors]
        if self.patient:
            answers = list(await asyncio.gather(*calls, return_exceptions=True))
        else:
            answers = await first_answers(calls)
        found = [a for a in answers if isinstance(a, Placement)]
        if found:
            return max(found, key=lambda p: p.version)
        errors = [a for a in answers if isinstance(a, BaseException)]
        for error in errors:
            if not isinstance(error, ShardflowError):
                raise error
        if errors and all(isinstance(e, NodeUnavailable) for e in errors):
            raise NodeUnavailable(
                "no configured node is reachable to read the placement; start the nodes or "
                "check the configuration",
                node="*",
            )
        raise ClusterNotInitialized(
            "no node has a placement yet: run `shardflow cluster init` or `cluster up`"
        )

    async def _read_citus(self) -> Placement:
        """Ask the configured coordinator first, then any other node, for the shard map."""
        configured = [n.name for n in self.config.nodes]
        others = [n for n in self.node_names if n not in configured]
        last: ShardflowError | None = None
        for name in configured + others:
            try:
                return await CitusStore(self._connectors[name]).placement(
                    base_conninfo=self.config.nodes[0].dsn,
                    partition_count=self.config.partition_count,
                    via=(
                        self.config.nodes[0].name
                        if self.config.citus_routing == "coordinator"
                        else None
                    ),
                )
            except (NodeUnavailable, ClusterNotInitialized) as exc:
                last = exc
        assert last is not None
        raise last

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._connectors.values()))
        self._connectors.clear()


async def first_answers(
    calls: Sequence[Awaitable[Placement | None]],
) -> list[Placement | BaseException | None]:
    """Every call's result or exception, except calls still running a grace period after the
    first successful answer (they are cancelled and left out)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    started = time.monotonic()
    pending: set[asyncio.Future[Placement | None]] = set(tasks)
    deadline: float | None = None
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, pending = await asyncio.wait(
            pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            break  # the grace period is over
        if deadline is None and any(not t.exception() and t.result() for t in done):
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + max(LATE_ANSWER_GRACE, 2 * elapsed)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [(t.exception() or t.result()) for t in tasks if t.done() and not t.cancelled()]
