"""LISTEN for work on one node and wake its claim loop; reconnects when the link drops.

Only a speed-up: the claim loop's poll finds the same work when notifications are lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shardflow.errors import NodeUnavailable
from shardflow.worker.ports import ListenStore
from shardflow.worker.service import Backoff, Service

log = logging.getLogger("shardflow.worker")


class Listener(Service):
    cancel_on_stop = True

    def __init__(
        self,
        *,
        store: ListenStore,
        wake: Callable[[str | None], None],
        poll_seconds: float,
        **kwargs: object,
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = f"listener:{store.node}"
        self.store = store
        self._wake = wake
        self._poll = poll_seconds
        self.notifications = 0

    async def run(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                async for payload in self.store.notifications(timeout=min(self._poll, 1.0)):
                    if self.stopping.is_set():
                        return
                    backoff.reset()
                    if payload is not None:
                        self.notifications += 1
                        self._wake(payload)
            except NodeUnavailable as exc:
                log.info(
                    "listener reconnecting: %s",
                    exc,
                    extra={"action": "listen_reconnect", "node": self.store.node},
                )
                # The claim loop cannot have been woken while we were away: look everywhere.
                self._wake(None)
                if await self.pause(backoff.next()):
                    return
