"""The write batcher never strands an item, whatever the order of submit, flush start, flush
end and task completion (issue 9: an item submitted between a flusher's last look at the queue
and its done-callback was never flushed, and its workflow stayed `running` forever).

No timing: every flush waits on a gate the test opens, and the test advances the event loop one
callback round at a time. An item is stranded when the loop has nothing left to do (no flush
waits, no callback is ready) while its caller still has no answer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardflow.storage.batcher import WriteBatcher
from tests.helpers import one_loop_turn, run


class GatedFlush:
    """A flush whose end the test decides: each call waits for its own gate."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Event] = []
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> set[Hashable]:
        gate = asyncio.Event()
        self.waiting.append(gate)
        self.batches.append(items)
        await gate.wait()
        return set(items)

    def open_oldest(self) -> bool:
        """End the oldest flush still waiting; False if none waits."""
        if not self.waiting:
            return False
        self.waiting.pop(0).set()
        return True


class Scenario:
    """Callers that submit items to one batcher, driven step by step."""

    def __init__(self, *, max_in_flight: int = 2, max_batch: int = 256):
        self.flush = GatedFlush()
        self.batcher: WriteBatcher[int] = WriteBatcher(
            self.flush, keys=lambda item: (item,), max_in_flight=max_in_flight, max_batch=max_batch
        )
        self.answers: dict[int, bool] = {}
        self.submitted: list[int] = []
        self.callers: list[asyncio.Task[None]] = []
        self._ids = itertools.count()

    def caller(self, submissions: int) -> None:
        """A caller that submits ``submissions`` items, each as soon as the previous is answered
        (a workflow writing its next checkpoint right after the last one)."""

        async def go() -> None:
            for _ in range(submissions):
                item = next(self._ids)
                self.submitted.append(item)
                self.answers[item] = await self.batcher.submit(item)

        self.callers.append(asyncio.create_task(go()))

    async def settle(self, rounds: int = 200) -> None:
        """Open every flush and turn the loop until nothing is left to do."""
        for _ in range(rounds):
            self.flush.open_oldest()
            await one_loop_turn()
        assert not self.flush.waiting, "a flush was still waiting after the scenario settled"

    def stranded(self) -> list[int]:
        return [item for item in self.submitted if item not in self.answers]


def test_second_write_right_after_two_flushes_end_together_is_flushed() -> None:
    """The interleaving from issue 9, step by step: callers A and B each start a flush; both
    flushes end in the same loop turn; A's next write arrives before either flusher task's
    done-callback has run. It used to wait forever."""

    async def go() -> None:
        s = Scenario(max_in_flight=2)
        s.caller(2)  # A: two checkpoints in a row
        await one_loop_turn()  # A submits; flusher 1 starts and waits on its gate
        s.caller(1)  # B: one write
        await one_loop_turn()  # B submits; flusher 2 starts and waits on its gate
        await one_loop_turn()
        assert len(s.flush.waiting) == 2
        s.flush.open_oldest()
        s.flush.open_oldest()
        # Both flushers finish in one turn; A resubmits in the next, before the done-callbacks.
        await s.settle()
        assert s.stranded() == []
        assert s.answers == {0: True, 1: True, 2: True}

    run(go(), timeout=10)


# Every ordering of a few steps: which caller submits (and how many times in a row), when a
# flush ends, and how many loop turns (flush starts, done-callbacks, resubmits) pass between.
STEPS = ("a", "b", "open", "turn")


@pytest.mark.parametrize("max_in_flight", [1, 2, 3])
def test_every_short_ordering_answers_every_item(max_in_flight: int) -> None:
    async def go() -> None:
        for script in itertools.product(STEPS, repeat=5):
            await _play(script, max_in_flight=max_in_flight, max_batch=2)

    run(go(), timeout=60)


@settings(max_examples=300, deadline=None)
@given(
    script=st.lists(st.sampled_from(STEPS), min_size=1, max_size=40),
    max_in_flight=st.integers(min_value=1, max_value=3),
    max_batch=st.integers(min_value=1, max_value=4),
)
def test_random_orderings_answer_every_item(
    script: list[str], max_in_flight: int, max_batch: int
) -> None:
    run(_play(script, max_in_flight=max_in_flight, max_batch=max_batch), timeout=10)


async def _play(script: tuple[str, ...] | list[str], *, max_in_flight: int, max_batch: int) -> None:
    s = Scenario(max_in_flight=max_in_flight, max_batch=max_batch)
    for step in script:
        if step == "a":
            s.caller(2)
        elif step == "b":
            s.caller(1)
        elif step == "open":
            s.flush.open_oldest()
        else:
            await one_loop_turn()
    await s.settle()
    assert s.stranded() == [], f"items never answered after {script}"
    assert all(s.answers.values())
    # Nothing was written twice, and batches respected their bound.
    flushed = [item for batch in s.flush.batches for item in batch]
    assert sorted(flushed) == sorted(s.submitted)
    assert all(len(batch) <= max_batch for batch in s.flush.batches)
    assert len(s.flush.batches) == s.batcher.batches


def test_a_write_whose_caller_gave_up_is_not_flushed_later() -> None:
    """A run abandoned on its write timeout cancels its wait: the write must not commit
    behind its back once the node answers again."""

    async def go() -> None:
        s = Scenario(max_in_flight=1)
        s.caller(1)  # item 0 starts the only flush, which waits
        await one_loop_turn()
        await one_loop_turn()
        waiting = asyncio.ensure_future(s.batcher.submit(100))  # queued behind it
        await one_loop_turn()
        waiting.cancel()  # its caller gave up
        await s.settle()
        assert sorted(item for batch in s.flush.batches for item in batch) == [0]

    run(go(), timeout=10)


def test_a_drain_cancelled_before_it_ran_does_not_block_later_writes() -> None:
    async def go() -> None:
        s = Scenario(max_in_flight=1)
        s.caller(1)
        for drain in list(s.batcher._drains):
            drain.cancel()  # the process is stopping: cancelled before its first step
        await one_loop_turn()
        await one_loop_turn()
        s.caller(1)
        await s.settle()
        assert s.answers.get(1) is True

    run(go(), timeout=10)


def test_a_failing_key_function_answers_every_caller_of_the_batch() -> None:
    async def go() -> None:
        flush = GatedFlush()
        batcher: WriteBatcher[int] = WriteBatcher(flush, keys=lambda item: [1 // item])
        calls = [asyncio.ensure_future(batcher.submit(n)) for n in (0, 1)]
        for _ in range(5):
            flush.open_oldest()
            await one_loop_turn()
        done, _ = await asyncio.wait(calls, timeout=5)
        assert len(done) == 2
        assert all(isinstance(c.exception(), ZeroDivisionError) for c in calls)
        later = asyncio.ensure_future(batcher.submit(1))  # the batcher still works
        for _ in range(5):
            flush.open_oldest()
            await one_loop_turn()
        assert await asyncio.wait_for(later, timeout=5) is True

    run(go(), timeout=10)
