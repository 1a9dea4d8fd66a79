"""When a claim loop admits workflows from its app's queues, and how many.

A queue is looked at again at once when the worker's slots, not the queue, ended the last
admission; when a slot may have freed (this worker ended a workflow) if its limits held work
back; when its rate window lets the next one in; when a start is announced; and at the latest
after a poll interval (slots freed by other workers' runs are found then).
"""

from __future__ import annotations

import time
from datetime import timedelta

from shardflow.errors import ShardflowError
from shardflow.queues.queue import Queue
from shardflow.storage.queue_store import QueueStore
from shardflow.storage.records import ClaimedWorkflow

# Another worker was admitting a queue on the node: look again this soon (it may have left
# room, and what it read is gone).
BUSY_RETRY_SECONDS = 0.01
# Announcements (every start on the node, every run this worker ends) make a queue due no
# sooner than this after its last admission: a busy node announces hundreds of times a
# second, and an admission is a transaction.
MIN_GAP_SECONDS = 0.02


class Admissions:
    """The admissions of one claim loop (one node) for its app's queues."""

    def __init__(self, store: QueueStore, queues: list[Queue], *, owner: str, poll_seconds: float):
        self.store = store
        self.queues = queues
        self.owner = owner
        self.poll_seconds = poll_seconds
        # Per queue: when it is worth an admission (monotonic), and whether its limits held
        # waiting work back last time (then a freed slot makes it due).
        self._due_at = {q.name: 0.0 for q in queues}
        self._last_at = {q.name: 0.0 for q in queues}
        self._held_back = {q.name: False for q in queues}
        # Rotates which queue goes first, so one busy queue cannot take every slot.
        self._turn = 0
        self.admitted_total = 0

    def announced(self) -> None:
        """Work was started on the node: every queue may have a newcomer."""
        for name in self._due_at:
            self._soon(name)

    def slot_freed(self) -> None:
        """This worker ended a run: queues whose limits held work back may admit now."""
        for name, held in self._held_back.items():
            if held:
                self._soon(name)

    def _soon(self, name: str) -> None:
        self._due_at[name] = min(self._due_at[name], self._last_at[name] + MIN_GAP_SECONDS)

    def next_in(self, now: float) -> float | None:
        """Seconds until the next queue is due (None: no queues)."""
        if not self._due_at:
            return None
        return max(0.0, min(self._due_at.values()) - now)

    async def admit(
        self, slots: int, lease: timedelta, claimed: list[ClaimedWorkflow]
    ) -> list[ClaimedWorkflow]:
        """Admit up to ``slots`` from the queues that are due, in rotation, appending them to
        ``claimed`` as each queue's admission commits: what is there is leased to this worker
        and must run, even when a later admission fails or the round is cancelled. A failure
        after an admission waits for the next round."""
        before = len(claimed)
        count = len(self.queues)
        order = [self.queues[(self._turn + i) % count] for i in range(count)]
        self._turn = (self._turn + 1) % max(1, count)
        for queue in order:
            left = slots - (len(claimed) - before)
            if left <= 0 or self._due_at[queue.name] > time.monotonic():
                continue
            try:
                outcome = await self.store.admit(queue, slots=left, owner=self.owner, lease=lease)
            except ShardflowError:
                if len(claimed) == before:
                    raise
                break
            claimed.extend(outcome.claimed)
            if not outcome.busy:
                self._last_at[queue.name] = time.monotonic()
                self._held_back[queue.name] = outcome.held_back
            if outcome.busy:
                wait = BUSY_RETRY_SECONDS
            elif len(outcome.claimed) >= left:
                wait = 0.0  # this worker's slots ended it: more may wait
            elif outcome.rate_frees_in is not None:
                wait = min(self.poll_seconds, outcome.rate_frees_in)
            else:
                wait = self.poll_seconds
            self._due_at[queue.name] = time.monotonic() + wait
        self.admitted_total += len(claimed) - before
        return claimed
