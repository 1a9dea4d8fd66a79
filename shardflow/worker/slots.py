"""Execution slots shared by every claim loop of a worker: claims never exceed free slots."""

from __future__ import annotations

import asyncio


class Slots:
    """A counter of free execution slots that claim loops can wait on."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._in_use = 0
        # Set while a claim loop waits for the worker to drain so that a suspect workflow
        # can run alone: no loop claims other work meanwhile.
        self.isolating: set[str] = set()  # nodes whose loops wait to run a suspect
        self._changed = asyncio.Condition()

    @property
    def free(self) -> int:
        return self.capacity - self._in_use

    @property
    def in_use(self) -> int:
        return self._in_use

    def reserve(self, n: int) -> int:
        """Take up to ``n`` free slots before claiming; returns how many were taken.

        Reserving first (not counting after the claim) keeps concurrent claim loops of
        several nodes from claiming more than the worker can run.
        """
        taken = max(0, min(n, self.free))
        self._in_use += taken
        return taken

    async def give_back(self, n: int = 1) -> None:
        if n <= 0:
            return
        self._in_use -= n
        async with self._changed:
            self._changed.notify_all()

    async def wait_free(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.free > 0)

    async def wait_idle(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_use == 0)
