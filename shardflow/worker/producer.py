"""The claim loop of one node: claim up to the free slots, hand work to the executor.

Wakes on NOTIFY (``wake()``), on the next known due time, or on a jittered poll, which is
always running as the safety net.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from shardflow import tracing
from shardflow.config import WorkerSettings
from shardflow.errors import NodeUnavailable
from shardflow.storage.records import ClaimedWorkflow
from shardflow.wakeup import decode_partitions
from shardflow.worker.ports import NodeStore
from shardflow.worker.service import Backoff, Service, jittered
from shardflow.worker.slots import Slots
from shardflow.worker.timers import LocalTimers

if TYPE_CHECKING:
    from shardflow.worker.admissions import Admissions

log = logging.getLogger("shardflow.worker")


class ClaimLoop(Service):
    """Claims runnable workflows of one node: up to the free slots in one statement."""

    def __init__(
        self,
        *,
        store: NodeStore,
        owner: str,
        slots: Slots,
        settings: WorkerSettings,
        execute: Callable[[NodeStore, ClaimedWorkflow, int], None],
        on_claim: Callable[[float, int], None] | None = None,
        admissions: Admissions | None = None,
        **kwargs: object,
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = f"claim-loop:{store.node}"
        self.store = store
        self.owner = owner
        self.slots = slots
        self.settings = settings
        self._execute = execute
        # Told each claim's duration (seconds) and size (the worker's metrics).
        self._on_claim = on_claim
        # The app's queues (None: it declares none): admitted before the plain claim.
        self.admissions = admissions
        self._woken = asyncio.Event()
        self.claimed_total = 0
        # Suspects appear only when a reaper requeues expired leases: look for them when this
        # node's reaper says so, and otherwise once per poll interval, not on every claim.
        self._suspects_due = True
        self._suspects_checked_at = 0.0
        self._due_checked_at = 0.0
        self._backlog = False
        # The releases (sleeps, retry backoffs) this worker made here, to wake on time.
        self.timers = LocalTimers()
        # Citus: partitions worth a claim (named by notifications, timers, or a claim that
        # came back full), and when the node-wide look for runnable partitions is due.
        self._hints: set[int] = set()
        self._scan_due = True
        self._scanned_at = 0.0

    def wake(self) -> None:
        """Look for work now (called when the executor frees a slot)."""
        if self.admissions is not None:
            self.admissions.slot_freed()
        self._woken.set()

    def notified(self, payload: str | None) -> None:
        """A NOTIFY (``payload`` names partitions that got work) or a lost listener (None:
        look everywhere)."""
        partitions = decode_partitions(payload) if payload is not None else None
        if self.admissions is not None:
            self.admissions.announced()
        if partitions is None:
            self._scan_due = True
        else:
            self._hints |= partitions
        self._woken.set()

    def wake_for_suspects(self) -> None:
        """Expired leases were requeued here: look for suspects on the next round."""
        self._suspects_due = True
        self._woken.set()

    def _should_check_suspects(self) -> bool:
        now = time.monotonic()
        if (
            self._suspects_due
            or self.store.node in self.slots.isolating
            or now - self._suspects_checked_at >= self.settings.poll_seconds
        ):
            self._suspects_due = False
            self._suspects_checked_at = now
            return True
        return False

    async def run(self) -> None:
        backoff = Backoff()
        lease = timedelta(seconds=self.settings.lease_seconds)
        while not self.stopping.is_set():
            try:
                await self._wait_for_slot()
                if self.stopping.is_set():
                    return
                self._woken.clear()
                claimed, drained = await self._claim_round(lease)
                backoff.reset()
                if claimed and not drained:
                    continue  # there may be more: claim again at once
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

    async def _claim_round(self, lease: timedelta) -> tuple[int, bool]:
        """Claim what the free slots allow: (how many, whether that drained the node)."""
        if self._should_check_suspects() and await self.store.suspect_partitions():
            return await self._claim_suspect(lease), True
        self.slots.isolating.discard(self.store.node)
        if self.slots.isolating:
            return 0, True  # another node's loop is draining the worker for a suspect
        reserved = self.slots.reserve(self.settings.claim_batch, node=self.store.node)
        if reserved == 0:
            return 0, False
        admitted: list[ClaimedWorkflow] = []
        claimed: list[ClaimedWorkflow] = []
        started = time.monotonic()
        started_ns = time.time_ns()
        try:
            if self.admissions is not None:
                # With a backlog of pending work (sleepers coming back, workflows of no
                # queue), admissions take at most half the slots: neither side starves.
                share = max(1, reserved // 2) if self._backlog else reserved
                await self.admissions.admit(share, lease, admitted)
            asked = reserved - len(admitted)
            if asked > 0 and self.store.claims_by_partition:
                claimed = await self._claim_where_hinted(asked, lease)
            elif asked > 0:
                claimed = await self.store.claim_ready(
                    limit=asked, owner=self.owner, lease=lease, backlog=self._backlog
                )
        except BaseException:
            # Admitted workflows are leased to this worker: run them (the claim after them
            # failed) rather than leave their slots held until the leases lapse.
            self._run(admitted)
            raise
        finally:
            await self.slots.give_back(
                reserved - len(admitted) - len(claimed), node=self.store.node
            )
        batch = admitted + claimed
        if self._on_claim is not None:
            self._on_claim(time.monotonic() - started, len(batch))
        tracing.claim_span(
            self.store.node, started_ns, [(w.workflow_id, w.trace_context) for w in batch]
        )
        self._run(batch)
        # A full claim means a backlog: the next claim walks partitions; otherwise it takes
        # the oldest few. Each query is cheap in its own regime, whatever the statistics say.
        self._backlog = asked > 0 and len(claimed) == asked
        # Fewer than asked for: nothing else is runnable now; wait for a wake-up.
        return len(batch), len(batch) < reserved

    def _run(self, batch: list[ClaimedWorkflow]) -> None:
        for work in batch:
            self._execute(self.store, work, 1)
        self.claimed_total += len(batch)

    async def _claim_where_hinted(self, limit: int, lease: timedelta) -> list[ClaimedWorkflow]:
        """Citus: a statement spanning shards costs tens of milliseconds, one naming a
        partition a fraction of one. Claim partition by partition where work was announced
        (notifications, this worker's timers, claims that came back full); look node-wide
        for runnable partitions only once per poll interval, or when told to look everywhere.
        """
        now = time.monotonic()
        if self._scan_due or now - self._scanned_at >= self.settings.poll_seconds:
            self._scan_due = False
            self._scanned_at = now
            self._hints |= set(await self.store.runnable_partitions(limit=limit))
        self._hints |= self.timers.take_due_partitions()
        batch, maybe_more = await self.store.claim_from(
            sorted(self._hints), limit=limit, owner=self.owner, lease=lease
        )
        self._hints = set(maybe_more)
        return batch

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
        """How long to wait for a wake-up: until the next timer, at most a poll interval.

        Timers (sleeps, retry backoff) are picked up on time rather than at the next poll:
        those this worker set are known locally; the node's earliest one (set by anyone) is
        read at most once per poll interval, not on every idle moment of a busy loop.
        """
        poll = jittered(self.settings.poll_seconds)
        now = time.monotonic()
        due = self.timers.next_in(now)
        if now - self._due_checked_at >= self.settings.poll_seconds:
            self._due_checked_at = now
            node_due = await self.store.next_due_seconds()
            if node_due is not None:
                due = node_due if due is None else min(due, node_due)
        if self.admissions is not None:
            queues_due = self.admissions.next_in(now)
            if queues_due is not None:
                due = queues_due if due is None else min(due, queues_due)
        if due is None:
            return poll
        return max(0.0, min(poll, due + 0.005))

    async def _idle(self, seconds: float) -> None:
        if seconds <= 0:
            return
        waker = asyncio.ensure_future(self._woken.wait())
        stopper = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({waker, stopper}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for fut in (waker, stopper):
            fut.cancel()
