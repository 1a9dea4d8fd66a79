"""Group commit: many callers' writes of one kind on one node, in one statement.

A caller submits its row and awaits the answer. A submission starts a flush at once when fewer
than ``max_in_flight`` are under way (no added delay when idle); otherwise it waits with the
others for the next free flush, and they go together. Under load that turns one commit per
row into one commit per batch, and a row waits for at most one flush ahead of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

Item = TypeVar("Item")

# Two flushes in flight: PostgreSQL merges their WAL flushes, and a row never queues behind a
# whole commit it could have joined.
MAX_IN_FLIGHT = 2


class WriteBatcher(Generic[Item]):
    """Writes items in batches of up to ``max_batch`` with ``flush``.

    ``flush`` returns the keys of the rows it wrote; an item is written when all its keys
    (``keys(item)``) are among them, else it was refused (a guard failed) and its caller gets
    False. If ``flush`` raises, every caller of that batch gets the exception.
    """

    def __init__(
        self,
        flush: Callable[[list[Item]], Awaitable[set[Hashable]]],
        keys: Callable[[Item], Iterable[Hashable]],
        *,
        max_batch: int = 256,
        max_in_flight: int = MAX_IN_FLIGHT,
    ):
        self._flush = flush
        self._keys = keys
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[Item, asyncio.Future[bool]]] = []
        # Drain tasks that have not yet taken their last look at ``_pending``. Counted by the
        # drain itself, with no await between its last look and the decrement: a task's
        # done-callback runs a loop turn after it finished, and counting tasks until then left
        # an item submitted in that gap with no flush to carry it (issue 9).
        self._draining = 0
        # Strong references to running drains (the event loop keeps only weak ones).
        self._drains: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.items = 0

    async def submit(self, item: Item) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._draining < self._max_in_flight:
            self._draining += 1
            drain = asyncio.create_task(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await future

    async def _drain(self) -> None:
        """Flush batches until the queue is empty. Invariant: while an item waits in
        ``_pending``, at least one drain will still look at it."""
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                self.batches += 1
                self.items += len(batch)
                try:
                    written = await self._flush([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch + self._pending:
                        future.cancel()
                    self._pending.clear()
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for item, future in batch:
                    if not future.done():
                        future.set_result(all(k in written for k in self._keys(item)))
        finally:
            self._draining -= 1
