"""The relay of one node: delivers what its workflows sent to other partitions.

Two kinds of work, both idempotent on the receiving side, so a relay killed between a
delivery and its acknowledgement only causes a repeat that changes nothing:

- the outbox: a child started on another partition (a start is idempotent by workflow id),
  a cancellation cascading to a child (cancelling an ended workflow is a no-op);
- ended children whose parent has not been told: the end goes to the parent as the signal
  ``shardflow.child`` with id ``shardflow.child:<child id>`` (a resend stores nothing), then
  the child is marked told.

One relay per node at a time (a service lease, like the reaper); a run's writes to the outbox
and the end of a child of this worker wake it at once, otherwise it looks every poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from shardflow.client import Client
from shardflow.errors import NodeUnavailable, ShardflowError, WorkflowNotFound
from shardflow.faults import WORKER_FAULT_ENV, fault_point
from shardflow.storage.relay_store import EndedChild, OutboxMessage, RelayStore
from shardflow.worker.service import Service, jittered

log = logging.getLogger("shardflow.worker")

# Deliveries in flight at once (each is a round trip to another node).
IN_FLIGHT = 8
BATCH = 200


class Relay(Service):
    def __init__(
        self,
        *,
        store: RelayStore,
        acquire_lease: Callable[[str, timedelta], Awaitable[bool]],
        client: Callable[[], Awaitable[Client]],
        holder: str,
        interval: float,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.name = f"relay:{store.node}"
        self.store = store
        self.holder = holder
        self.interval = interval
        self._acquire_lease = acquire_lease
        self._client = client
        self._woken = asyncio.Event()
        self.delivered_total = 0
        self.told_total = 0
        self.lease_writes = 0

    def wake(self) -> None:
        self._woken.set()

    async def run(self) -> None:
        ttl = timedelta(seconds=max(self.interval * 3, 1.0))
        held_until = 0.0  # monotonic: ours until then
        next_try = 0.0  # the lease is renewed, or tried again, once half its TTL has passed
        while not self.stopping.is_set():
            more = False
            try:
                # A wake-up per ended child must not cost a lease write each, held or not (on
                # Citus the lease table is a reference table: every write is a two-phase
                # commit); another worker's relay delivers while it holds the lease.
                now = time.monotonic()
                if now >= next_try:
                    self.lease_writes += 1
                    next_try = now + ttl.total_seconds() / 2
                    held = await self._acquire_lease(f"relay:{self.store.node}", ttl)
                    held_until = now + ttl.total_seconds() if held else 0.0
                if now < held_until:
                    client = await self._client()
                    more = await self._deliver_outbox(client) | await self._tell_parents(client)
            except NodeUnavailable as exc:
                log.warning(
                    "relay waiting for node: %s",
                    exc,
                    extra={"action": "node_unavailable", "node": self.store.node},
                )
            if more:
                continue  # a full batch: there may be more at once
            await self._idle()

    async def _idle(self) -> None:
        waiter = asyncio.ensure_future(self._woken.wait())
        stopper = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait(
            {waiter, stopper}, timeout=jittered(self.interval), return_when=asyncio.FIRST_COMPLETED
        )
        for fut in (waiter, stopper):
            fut.cancel()
        self._woken.clear()

    async def _deliver_outbox(self, client: Client) -> bool:
        messages = await self.store.pending_messages(limit=BATCH)
        await _each(messages, lambda m: self._deliver(client, m))
        return len(messages) == BATCH

    async def _deliver(self, client: Client, message: OutboxMessage) -> None:
        fault_point(WORKER_FAULT_ENV, "relay_before_deliver")
        body = message.body
        try:
            if message.kind == "start_child":
                await client.deliver_child_start(body)
            else:  # cancel_child
                await client.cancel(body["workflow_id"], routing_key=body["routing_key"])
        except WorkflowNotFound:
            pass  # a cancellation for a child that was never started: nothing to do
        except NodeUnavailable:
            raise
        except ShardflowError as exc:
            # Not deliverable as written (the receiver refuses it): keep it and say so.
            log.error(
                "outbox message %s on partition %d refused: %s",
                message.message_id,
                message.partition,
                exc,
                extra={"action": "relay_refused", "node": self.store.node},
            )
            return
        fault_point(WORKER_FAULT_ENV, "relay_before_ack")
        await self.store.delete_message(message)
        self.delivered_total += 1

    async def _tell_parents(self, client: Client) -> bool:
        ended = await self.store.untold_children(limit=BATCH)
        await _each(ended, lambda c: self._tell(client, c))
        return len(ended) == BATCH

    async def _tell(self, client: Client, child: EndedChild) -> None:
        fault_point(WORKER_FAULT_ENV, "relay_before_deliver")
        end = {
            "workflow_id": child.workflow_id,
            "status": child.status,
            "output": child.output,
            "error": child.error,
        }
        if not await client.tell_parent(
            parent_id=child.parent_id, parent_key=child.parent_key, child=end
        ):
            log.info(
                "child %s ended %s; its parent %s no longer waits",
                child.workflow_id,
                child.status,
                child.parent_id,
                extra={"action": "parent_gone", "node": self.store.node},
            )
        fault_point(WORKER_FAULT_ENV, "relay_before_ack")
        await self.store.mark_told(child)
        self.told_total += 1


async def _each(items: list[Any], deliver: Callable[[Any], Awaitable[None]]) -> None:
    """Deliver every item, at most IN_FLIGHT at once; the first error stops the batch (what
    was not acknowledged is delivered again next time)."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(item: Any) -> None:
        async with gate:
            await deliver(item)

    await asyncio.gather(*(one(item) for item in items))
