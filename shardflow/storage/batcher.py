"""Group commit: many callers' writes of one kind on one node, in one statement.

A caller submits its row and awaits the answer. The first submission starts a flush at once
(no added delay when idle); rows submitted while a flush is in flight go together in the next
one. Under load that turns one commit per checkpoint into one commit per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class WriteBatcher(Generic[Item]):
    """Writes items in batches of up to ``max_batch`` with ``flush``.

    ``flush`` returns the keys (``key(item)``) of the items it wrote; an item whose key is
    missing was refused (its guard failed) and its caller gets False. If ``flush`` raises,
    every caller of that batch gets the exception.
    """

    def __init__(
        self,
        flush: Callable[[list[Item]], Awaitable[set[Hashable]]],
        key: Callable[[Item], Hashable],
        *,
        max_batch: int = 256,
    ):
        self._flush = flush
        self._key = key
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
                    future.set_result(self._key(item) in written)
