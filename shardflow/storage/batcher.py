"""Group commit: many callers' writes of one kind on one node, in one statement.

A caller submits its row and awaits the answer. The first submission starts a flush at once
(no added delay when idle); rows submitted while a flush is in flight go together in the next
one. Under load that turns one commit per checkpoint into one commit per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

Item = TypeVar("Item")


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
    ):
        self._flush = flush
        self._keys = keys
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: Item) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
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
