"""Follows the cluster's membership: when the placement gains a node, the worker starts
serving it; when a node leaves the placement, the worker stops claiming from it; on Citus,
when shards move, each node's claim loop follows its partitions."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from shardflow.errors import ShardflowError
from shardflow.routing import Placement
from shardflow.topology import Topology
from shardflow.worker.service import Service, jittered

log = logging.getLogger("shardflow.worker")


class MembershipWatcher(Service):
    name = "membership"

    def __init__(
        self,
        *,
        topology: Topology,
        apply: Callable[[Placement], Awaitable[None]],
        interval: float,
        **kwargs: object,
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._topology = topology
        self._apply = apply
        self.interval = interval
        self.current: Placement | None = None

    async def follow_once(self) -> None:
        """Read the placement and apply it if it is newer; a failed read is logged, and the
        next round tries again."""
        try:
            placement = await self._topology.refresh(force=True)
        except ShardflowError as exc:
            log.warning("could not read the placement: %s", exc, extra={"action": "membership"})
            return
        if _newer(placement, self.current):
            self.current = placement
            await self._apply(placement)

    async def run(self) -> None:
        while not self.stopping.is_set():
            await self.follow_once()
            if await self.pause(jittered(self.interval)):
                return


def _newer(placement: Placement, current: Placement | None) -> bool:
    """A higher version, or (Citus: a node joined or left without a shard move) the same
    version with other contents. A late answer with a lower version is never applied."""
    if current is None or placement.version > current.version:
        return True
    return placement.version == current.version and placement != current
