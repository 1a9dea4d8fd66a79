"""Execution slots of a worker, divided among the nodes it serves.

Claims never exceed free slots, and each node gets at most its equal share of the worker's
concurrency: a slow node (its workflows hold slots for long) cannot starve the others.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter


class Slots:
    """Counters of execution slots, in total and per node, that claim loops can wait on."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.nodes = 1  # how many nodes the worker serves (set by the worker)
        self._by_node: Counter[str] = Counter()
        # Nodes whose loops wait for the worker to drain so that a suspect workflow can run
        # alone: no loop claims other work meanwhile.
        self.isolating: set[str] = set()
        self._changed = asyncio.Condition()

    @property
    def in_use(self) -> int:
        return sum(self._by_node.values())

    @property
    def free(self) -> int:
        return self.capacity - self.in_use

    def fair_share(self) -> int:
        return max(1, math.ceil(self.capacity / max(1, self.nodes)))

    def free_for(self, node: str) -> int:
        return max(0, min(self.free, self.fair_share() - self._by_node[node]))

    def reserve(self, n: int, *, node: str, whole_worker: bool = False) -> int:
        """Take up to ``n`` slots of ``node``'s share before claiming; returns how many.

        Reserving first (not counting after the claim) keeps concurrent claim loops of
        several nodes from claiming more than the worker can run. ``whole_worker`` ignores
        the share (a suspect workflow runs alone on an idle worker).
        """
        available = self.free if whole_worker else self.free_for(node)
        taken = max(0, min(n, available))
        self._by_node[node] += taken
        return taken

    async def give_back(self, n: int, *, node: str) -> None:
        if n <= 0:
            return
        self._by_node[node] -= n
        async with self._changed:
            self._changed.notify_all()

    async def wait_free(self, node: str) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.free_for(node) > 0)
