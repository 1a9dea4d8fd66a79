"""Retention on one node: remove finished workflows past their ``purge_at``.

Every delete names one partition and removes a bounded batch in its own short transaction
(rows another transaction holds are skipped, never waited for), so the collector runs beside
live traffic on both backends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from shardflow.storage.connector import NodeConnector


class RetentionStore:
    """``partitions()``: on Citus the partitions this node holds now (none known yet: none
    collected); plain: [] (the node's ownership rows say)."""

    def __init__(
        self,
        connector: NodeConnector,
        partitions: Callable[[], list[int]],
        *,
        citus: bool = False,
    ):
        self.db = connector
        self._partitions = partitions
        # On Citus the ownership rows are the whole cluster's: never fall back to them.
        self._citus = citus

    @property
    def node(self) -> str:
        return self.db.name

    async def partitions(self) -> list[int]:
        listed = self._partitions()
        if listed or self._citus:
            return listed
        return [int(r["partition"]) for r in await self.db.run("gc_owned_partitions")]

    async def purge(self, partition: int, *, limit: int) -> int:
        """Remove up to ``limit`` removable workflows of ``partition``; how many went."""
        rows = await self.db.run("gc_purge_partition", {"partition": partition, "limit": limit})
        return len(rows)

    async def due(self) -> int:
        """Finished workflows of this node the collector may remove now."""
        rows = await self.db.run("gc_due", {"partitions": await self.partitions()})
        return int(rows[0]["due"])


async def collect(
    store: RetentionStore,
    *,
    batch: int,
    stopping: asyncio.Event | None = None,
    keep_lease: Callable[[], Awaitable[bool]] | None = None,
) -> int:
    """One pass over the node's partitions; how many workflows it removed. Stops early when
    ``stopping`` is set or ``keep_lease`` says the lease was lost."""
    removed = 0
    renewed = time.monotonic()
    for partition in await store.partitions():
        while True:
            if stopping is not None and stopping.is_set():
                return removed
            if keep_lease is not None and time.monotonic() - renewed > 5.0:
                if not await keep_lease():
                    return removed
                renewed = time.monotonic()
            gone = await store.purge(partition, limit=batch)
            removed += gone
            if gone < batch:
                break
    return removed
