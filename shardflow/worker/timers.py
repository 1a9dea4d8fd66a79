"""The timers this worker set on one node (durable sleeps and retry backoffs it released).

The node's earliest timer is read at most once per poll interval; the ones this process set
are known without asking, so a workflow this worker put to sleep is picked up on time. Each
timer remembers its partition: a Citus node's claim loop goes straight to it.
"""

from __future__ import annotations

import heapq
import time


class LocalTimers:
    """Due times (monotonic seconds) of the releases this worker made on one node."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int]] = []
        self._fell_due: set[int] = set()

    def add(self, delay_seconds: float, partition: int) -> None:
        heapq.heappush(self._due, (time.monotonic() + delay_seconds, partition))

    def next_in(self, now: float) -> float | None:
        """Seconds until the earliest pending timer (None: none pending).

        Timers that fell due are forgotten once reported (0.0): one claim picks them up.
        """
        fell_due = False
        while self._due and self._due[0][0] <= now:
            self._fell_due.add(heapq.heappop(self._due)[1])
            fell_due = True
        if fell_due:
            return 0.0
        return self._due[0][0] - now if self._due else None

    def take_due_partitions(self) -> set[int]:
        """The partitions whose timers fell due since the last call."""
        self.next_in(time.monotonic())
        due, self._fell_due = self._fell_due, set()
        return due
