"""The reaper of one node: makes work whose lease expired runnable again.

One reaper per node at a time (a lease row in ``service_leases``, not an advisory lock). It
never runs work itself, so it cannot get stuck behind the work it should rescue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from shardflow.errors import NodeUnavailable
from shardflow.storage import WorkerStore
from shardflow.worker.service import Service, jittered

log = logging.getLogger("shardflow.worker")


class Reaper(Service):
    def __init__(
        self,
        *,
        store: WorkerStore,
        holder: str,
        interval: float,
        wake: Callable[[], None],
        **kwargs: object,
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = f"reaper:{store.node}"
        self.store = store
        self.holder = holder
        self.interval = interval
        self._wake = wake
        self.requeued_total = 0

    async def run(self) -> None:
        ttl = timedelta(seconds=self.interval * 3)
        while not await self.pause(jittered(self.interval)):
            try:
                if not await self.store.acquire_service_lease(
                    service="reaper", holder=self.holder, ttl=ttl
                ):
                    continue
                requeued = await self.store.requeue_expired()
            except NodeUnavailable:
                continue  # the claim loop reports the outage; try again next round
            if requeued:
                self.requeued_total += requeued
                log.warning(
                    "requeued %d workflows whose lease expired",
                    requeued,
                    extra={"action": "requeue_expired", "node": self.store.node},
                )
                self._wake()
