"""The collector of one node: removes finished workflows past their retention.

One collector per node at a time (a lease row in ``service_leases``, like the reaper). Each
round walks the node's partitions and removes what is due in batches of ``batch``, each its
own short transaction, so a backlog of millions drains without a long lock or a long
transaction. ``shardflow gc`` runs the same pass from the command line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from shardflow.errors import NodeUnavailable, ShardflowError
from shardflow.storage.retention_store import RetentionStore, collect
from shardflow.worker.service import Service, jittered

log = logging.getLogger("shardflow.worker")


class Collector(Service):
    def __init__(
        self,
        *,
        store: RetentionStore,
        acquire_lease: Callable[[str, timedelta], Awaitable[bool]],
        interval: float,
        batch: int,
        **kwargs: object,
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = f"collector:{store.node}"
        self.store = store
        self.interval = interval
        self.batch = batch
        self._acquire = acquire_lease
        self.removed_total = 0

    async def run(self) -> None:
        service = f"gc:{self.store.node}"
        ttl = timedelta(seconds=max(3 * self.interval, 30.0))

        async def keep_lease() -> bool:
            return await self._acquire(service, ttl)

        while not await self.pause(jittered(self.interval)):
            started = time.monotonic()
            try:
                if not await keep_lease():
                    continue  # another worker collects on this node
                removed = await collect(
                    self.store, batch=self.batch, stopping=self.stopping, keep_lease=keep_lease
                )
            except NodeUnavailable:
                continue  # the claim loop reports the outage; try again next round
            except ShardflowError as exc:
                # Running work matters more than removing old work: say so, keep the worker.
                log.error(
                    "could not remove finished workflows on %s: %s; they are kept until this "
                    "works (a missing grant? run `shardflow roles create` after a migration)",
                    self.store.node,
                    exc,
                    extra={"action": "gc_failed", "node": self.store.node},
                )
                continue
            if removed:
                self.removed_total += removed
                seconds = time.monotonic() - started
                log.info(
                    "removed %d finished workflows past their retention in %.1fs",
                    removed,
                    seconds,
                    extra={"action": "gc", "node": self.store.node},
                )
