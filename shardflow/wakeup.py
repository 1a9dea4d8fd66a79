"""Coalesced wake-ups: at most one NOTIFY in flight per node, however many starts ask.

A start commits, then asks for a wake-up and returns without waiting for it. While one
NOTIFY is on its way, further requests only mark that another is wanted; one more is sent
when it lands. Under load that is one NOTIFY per round trip instead of one per start; when
idle, the NOTIFY goes out at once. A lost wake-up costs pick-up latency (the workers' poll
finds the work), never the work itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shardflow.errors import ShardflowError

log = logging.getLogger("shardflow.client")


class WakeUp:
    def __init__(self, node: str, send: Callable[[], Awaitable[None]]):
        self.node = node
        self._send = send
        self._wanted = False
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def request(self) -> None:
        self._wanted = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"wake-up:{self.node}")

    async def _run(self) -> None:
        while self._wanted:
            self._wanted = False
            try:
                await self._send()
                self.sent += 1
            except ShardflowError as exc:
                log.info("could not wake the workers of node %s: %s", self.node, exc)

    async def flush(self) -> None:
        """Wait for the wake-ups already requested (before closing the connections)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
