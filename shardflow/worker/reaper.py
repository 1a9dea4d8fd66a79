"""The reaper of one node: makes work whose lease expired runnable again.

One reaper per node at a time (a lease row in ``service_leases``, not an advisory lock). It
never runs work itself, so it cannot get stuck behind the work it should rescue. A workflow
whose lease has expired ``max_expiries`` times (each run killed or stalled its worker) is
dead-lettered instead: a poison workflow cannot take workers down forever.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from shardflow.errors import NodeUnavailable
from shardflow.worker.ports import ReaperStore
from shardflow.worker.service import Service, jittered

log = logging.getLogger("shardflow.worker")

DEAD_ERROR = json.dumps(
    {
        "type": "DeadLettered",
        "module": "shardflow",
        "message": "the workflow's lease expired too many times: each run killed or stalled "
        "its worker. Fix the cause, then `shardflow requeue WORKFLOW_ID`.",
    }
)


# How often the reaper forgets the registrations of long-gone workers.
_PRUNE_SECONDS = 300.0


class Reaper(Service):
    def __init__(
        self,
        *,
        store: ReaperStore,
        holder: str,
        interval: float,
        wake: Callable[[], None],
        max_expiries: int,
        **kwargs: object,
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = f"reaper:{store.node}"
        self.store = store
        self.holder = holder
        self.interval = interval
        self.max_expiries = max_expiries
        self._wake = wake
        self.requeued_total = 0
        self.dead_total = 0
        self._prune_at = 0.0

    async def run(self) -> None:
        ttl = timedelta(seconds=self.interval * 3)
        while not await self.pause(jittered(self.interval)):
            try:
                # One reaper per node: on Citus the lease table is one for the whole cluster.
                if not await self.store.acquire_service_lease(
                    service=f"reaper:{self.store.node}", holder=self.holder, ttl=ttl
                ):
                    continue
                requeued, dead = await self.store.requeue_expired(
                    max_expiries=self.max_expiries, dead_error=DEAD_ERROR
                )
                if time.monotonic() >= self._prune_at:
                    self._prune_at = time.monotonic() + _PRUNE_SECONDS
                    await self.store.prune_workers()
            except NodeUnavailable:
                continue  # the claim loop reports the outage; try again next round
            for workflow_id in dead:
                self.dead_total += 1
                log.error(
                    "dead-lettered %s: its lease expired %d times",
                    workflow_id,
                    self.max_expiries,
                    extra={
                        "action": "dead_lettered",
                        "node": self.store.node,
                        "workflow_id": workflow_id,
                    },
                )
            if requeued:
                self.requeued_total += requeued
                log.warning(
                    "requeued %d workflows whose lease expired",
                    requeued,
                    extra={"action": "requeue_expired", "node": self.store.node},
                )
                self._wake()
