"""Follows the cluster's membership: when the placement gains a node, the worker starts
serving it; when a node leaves the placement, the worker stops claiming from it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shardflow.errors import ShardflowError
from shardflow.routing import Placement
from shardflow.storage import AdminStore, NodeConnector
from shardflow.worker.service import Service, jittered

log = logging.getLogger("shardflow.worker")


class MembershipWatcher(Service):
    name = "membership"

    def __init__(
        self,
        *,
        connectors: Callable[[], list[NodeConnector]],
        apply: Callable[[Placement], Awaitable[None]],
        interval: float,
        **kwargs: object,
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._connectors = connectors
        self._apply = apply
        self.interval = interval
        self.version = 0

    async def run(self) -> None:
        while not self.stopping.is_set():
            answers = await asyncio.gather(
                *(AdminStore(c).latest_placement() for c in self._connectors()),
                return_exceptions=True,
            )
            for answer in answers:
                if isinstance(answer, BaseException) and not isinstance(answer, ShardflowError):
                    raise answer
            found = [a for a in answers if isinstance(a, Placement)]
            if found:
                newest = max(found, key=lambda p: p.version)
                if newest.version > self.version:
                    self.version = newest.version
                    await self._apply(newest)
            if await self.pause(jittered(self.interval)):
                return
