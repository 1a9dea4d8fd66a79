"""One lifecycle for every background service: start, idempotent stop, a started event.

A service whose ``run`` raises stops its worker loudly (``on_failure``) instead of dying
silently in a forgotten task.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

log = logging.getLogger("shardflow.worker")


class Service:
    """Base class: subclasses implement ``run()`` and return from it once ``stopping`` is set."""

    name = "service"
    # Services that only wait (a LISTEN loop) are cancelled at once on stop: nothing to finish.
    cancel_on_stop = False

    def __init__(self, *, on_failure: Callable[[Service, BaseException], None] | None = None):
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        self.failure: BaseException | None = None
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._guarded(), name=self.name)

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Ask the service to stop and wait for it; cancel it after ``timeout``. Idempotent."""
        self.stopping.set()
        task = self._task
        if task is None or task.done():
            return
        if self.cancel_on_stop:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stopping; True when it is time to stop."""
        try:
            await asyncio.wait_for(self.stopping.wait(), max(0.0, seconds))
        except TimeoutError:
            return False
        return True

    async def _guarded(self) -> None:
        self.started.set()
        try:
            await self.run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = exc
            log.critical(
                "%s crashed: %r", self.name, exc, exc_info=exc, extra={"action": "service_crashed"}
            )
            if self._on_failure is not None:
                self._on_failure(self, exc)


def jittered(seconds: float, spread: float = 0.2) -> float:
    """``seconds`` plus or minus ``spread`` of itself, so that many workers do not align."""
    return seconds * random.uniform(1 - spread, 1 + spread)


class Backoff:
    """Exponential delays for retrying a node that is down: 0.1 s doubling to ``cap``."""

    def __init__(self, *, cap: float = 5.0):
        self.cap = cap
        self._next = 0.1

    def next(self) -> float:
        delay = jittered(self._next)
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = 0.1
