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

from shardflow.errors import ShardflowError

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
        on_batch: Callable[[int], None] | None = None,
    ):
        self._flush = flush
        # Told each batch's size as it goes out (the metrics' group-commit histogram).
        self._on_batch = on_batch
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
            started = asyncio.Event()
            drain = asyncio.create_task(self._drain(started))
            self._drains.add(drain)
            drain.add_done_callback(lambda task: self._drain_ended(task, started))
        return await future

    def _drain_ended(self, task: asyncio.Task[None], started: asyncio.Event) -> None:
        self._drains.discard(task)
        if not started.is_set():
            # Cancelled before its first step: its body (and its own decrement) never ran.
            self._draining -= 1

    async def _drain(self, started: asyncio.Event) -> None:
        """Flush batches until the queue is empty. Invariant: while an item waits in
        ``_pending``, at least one drain will still look at it."""
        started.set()
        try:
            while self._pending:
                batch = self._take_batch()
                if not batch:
                    continue
                self.batches += 1
                self.items += len(batch)
                if self._on_batch is not None:
                    self._on_batch(len(batch))
                try:
                    written = await self._flush([item for item, _ in batch])
                    answers = [all(k in written for k in self._keys(item)) for item, _ in batch]
                except asyncio.CancelledError:
                    # The loop is shutting down: nobody will flush these any more.
                    stopped = StorageStopped("the write batcher stopped before this write")
                    for _, future in batch + self._pending:
                        if not future.done():
                            future.set_exception(stopped)
                    self._pending.clear()
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._draining -= 1

    def _take_batch(self) -> list[tuple[Item, asyncio.Future[bool]]]:
        """The next batch, without items whose caller gave up waiting (a run abandoned on
        its write timeout must not commit later, behind its back)."""
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        return [(item, future) for item, future in batch if not future.cancelled()]


class StorageStopped(ShardflowError):
    """A write was not sent because its batcher stopped (the process is shutting down)."""
