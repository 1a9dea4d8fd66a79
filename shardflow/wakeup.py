"""Coalesced wake-ups: at most one NOTIFY in flight per node, however many starts ask.

A start commits, then asks for a wake-up and returns without waiting for it. While one
NOTIFY is on its way, further requests only mark that another is wanted; one more is sent
when it lands. Under load that is one NOTIFY per round trip instead of one per start; when
idle, the NOTIFY goes out at once. A lost wake-up costs pick-up latency (the workers' poll
finds the work), never the work itself.

The NOTIFY says which partitions got work (the workers of a Citus node claim partition by
partition and go straight to those); an empty payload means "look everywhere".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shardflow.errors import ShardflowError

log = logging.getLogger("shardflow.client")


# A NOTIFY payload is at most 8000 bytes: past this many partitions, say "everywhere".
MAX_LISTED = 1000


def encode_partitions(partitions: set[int]) -> str:
    """The payload naming ``partitions`` ("" when there are too many to list)."""
    return "" if len(partitions) > MAX_LISTED else ",".join(map(str, sorted(partitions)))


def decode_partitions(payload: str) -> set[int] | None:
    """The partitions a payload names; None for "look everywhere" (empty or unreadable)."""
    try:
        return {int(p) for p in payload.split(",")} if payload else None
    except ValueError:
        return None


class WakeUp:
    def __init__(self, node: str, send: Callable[[str], Awaitable[None]]):
        self.node = node
        self._send = send
        self._wanted: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def request(self, partitions: set[int]) -> None:
        self._wanted |= partitions
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"wake-up:{self.node}")

    async def _run(self) -> None:
        while self._wanted:
            partitions, self._wanted = self._wanted, set()
            try:
                await self._send(encode_partitions(partitions))
                self.sent += 1
            except ShardflowError as exc:
                log.info("could not wake the workers of node %s: %s", self.node, exc)

    async def flush(self) -> None:
        """Wait for the wake-ups already requested (before closing the connections)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
