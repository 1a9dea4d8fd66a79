"""Which waiting workflows of a queue one admission takes: a pure function of the queue's
limits, the slots held on the node and the waiting workflows in admission order (smallest
priority, then oldest). The store runs it inside the transaction that holds the node's
admission lock for the queue, so what it counts cannot change under it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shardflow.queues.queue import Queue


@dataclass(frozen=True, kw_only=True)
class Waiting:
    """A queued workflow, as the admission reads it."""

    partition: int
    workflow_id: str
    concurrency_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class Usage:
    """What a queue holds on a node: slots per concurrency key (None: workflows without one),
    and the admissions inside the rate window."""

    held_by_key: Mapping[str | None, int]
    admitted_in_window: int = 0

    @property
    def held(self) -> int:
        return sum(self.held_by_key.values())


def room(queue: Queue, usage: Usage, slots: int) -> int:
    """How many one admission may take: the worker's free ``slots``, the queue's free slots
    on the node and what is left of its rate window, whichever is least (never negative)."""
    free = slots
    if queue.concurrency is not None:
        free = min(free, queue.concurrency - usage.held)
    if queue.rate is not None:
        free = min(free, queue.rate - usage.admitted_in_window)
    return max(0, free)


def saturated_keys(queue: Queue, usage: Usage) -> list[str]:
    """Concurrency keys at their limit: the read of waiting workflows skips them, so a long
    line of one busy key does not hide the others behind it."""
    if queue.per_key is None:
        return []
    return sorted(
        key for key, held in usage.held_by_key.items() if key is not None and held >= queue.per_key
    )


def choose(queue: Queue, usage: Usage, waiting: Sequence[Waiting], slots: int) -> list[Waiting]:
    """The workflows to admit, in admission order: at most ``room`` of them, and per
    concurrency key at most what the key has left (a workflow whose key is full is passed
    over, the next one may go)."""
    left = room(queue, usage, slots)
    held = Counter({k: v for k, v in usage.held_by_key.items() if k is not None})
    chosen: list[Waiting] = []
    for work in waiting:
        if len(chosen) >= left:
            break
        key = work.concurrency_key
        if key is not None and queue.per_key is not None:
            if held[key] >= queue.per_key:
                continue
            held[key] += 1
        chosen.append(work)
    return chosen
