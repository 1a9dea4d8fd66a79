"""The claim loop of one node: claim up to the free slots, hand work to the executor.

Wakes on NOTIFY (``wake()``), on the next known due time, or on a jittered poll, which is
always running as the safety net.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from shardflow.config import WorkerSettings
from shardflow.errors import NodeUnavailable
from shardflow.storage import WorkerStore
from shardflow.storage.records import ClaimedWorkflow
from shardflow.worker.service import Backoff, Service, jittered
from shardflow.worker.slots import Slots

log = logging.getLogger("shardflow.worker")


class ClaimLoop(Service):
    """Claims runnable workflows of one node, one partition per claim statement."""

    def __init__(
        self,
        *,
        store: WorkerStore,
        owner: str,
        slots: Slots,
        settings: WorkerSettings,
        execute: Callable[[WorkerStore, ClaimedWorkflow, int], None],
        **kwargs: object,
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = f"claim-loop:{store.node}"
        self.store = store
        self.owner = owner
        self.slots = slots
        self.settings = settings
        self._execute = execute
        self._woken = asyncio.Event()
        self.claimed_total = 0

    def wake(self) -> None:
        """Look for work now (called on NOTIFY, or when the executor frees a slot)."""
        self._woken.set()

    async def run(self) -> None:
        backoff = Backoff()
        lease = timedelta(seconds=self.settings.lease_seconds)
        while not self.stopping.is_set():
            try:
                await self._wait_for_slot()
                if self.stopping.is_set():
                    return
                self._woken.clear()
                claimed = await self._claim_round(lease)
                backoff.reset()
                if claimed:
                    continue
                await self._idle(await self._idle_seconds())
            except NodeUnavailable as exc:
                self.slots.isolating.discard(self.store.node)  # do not hold others back
                log.warning(
                    "claim loop waiting for node: %s",
                    exc,
                    extra={"action": "node_unavailable", "node": self.store.node},
                )
                if await self.pause(backoff.next()):
                    return

    async def _wait_for_slot(self) -> None:
        if self.slots.free_for(self.store.node) > 0:
            return
        waiter = asyncio.ensure_future(self.slots.wait_free(self.store.node))
        stopper = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for fut in (waiter, stopper):
            fut.cancel()

    async def _claim_round(self, lease: timedelta) -> int:
        if await self.store.suspect_partitions():
            return await self._claim_suspect(lease)
        self.slots.isolating.discard(self.store.node)
        if self.slots.isolating:
            return 0  # another node's loop is draining the worker for a suspect
        claimed = 0
        for partition in await self.store.ready_partitions():
            if self.stopping.is_set():
                break
            reserved = self.slots.reserve(self.settings.claim_batch, node=self.store.node)
            if reserved == 0:
                break
            batch: list[ClaimedWorkflow] = []
            try:
                batch = await self.store.claim(
                    partition=partition, limit=reserved, owner=self.owner, lease=lease
                )
            finally:
                await self.slots.give_back(reserved - len(batch), node=self.store.node)
            for work in batch:
                self._execute(self.store, work, 1)
            claimed += len(batch)
        self.claimed_total += claimed
        return claimed

    async def _claim_suspect(self, lease: timedelta) -> int:
        """Run one suspect alone: wait until the worker is idle, then claim it with every slot.

        If it kills the process again, no innocent workflow dies with it.
        """
        self.slots.isolating.add(self.store.node)
        if self.slots.in_use:
            return 0  # in-flight work drains first; the executor wakes this loop
        self.slots.isolating.discard(self.store.node)
        reserved = self.slots.reserve(self.slots.capacity, node=self.store.node, whole_worker=True)
        batch: list[ClaimedWorkflow] = []
        try:
            for partition in await self.store.suspect_partitions():
                batch = await self.store.claim(
                    partition=partition, limit=1, owner=self.owner, lease=lease, suspect=True
                )
                if batch:
                    break
        finally:
            if not batch:
                await self.slots.give_back(reserved, node=self.store.node)
        if batch:
            self._execute(self.store, batch[0], reserved)
        return len(batch)

    async def _idle_seconds(self) -> float:
        poll = jittered(self.settings.poll_seconds)
        due = await self.store.next_due_seconds()
        if due is None:
            return poll
        # Timers (sleeps, retry backoff) are picked up on time rather than at the next poll.
        return max(0.0, min(poll, due + 0.005))

    async def _idle(self, seconds: float) -> None:
        if seconds <= 0:
            return
        waker = asyncio.ensure_future(self._woken.wait())
        stopper = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({waker, stopper}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for fut in (waker, stopper):
            fut.cancel()
