"""Notice when this process itself stopped running: paused (SIGSTOP, a VM freeze, swapping) or
an event loop blocked by a callback that never yields.

A timeout measured across such a pause fires at once when the process runs again, and the
node it was waiting on gets the blame. A ticker on the event loop records each pause, so an
error can say "this process was paused for 40 s" instead of "node2 did not answer".
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque

# How often the ticker runs, and the gap past which a tick counts as a pause.
TICK_SECONDS = 0.1
PAUSE_SECONDS = 1.0

_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopPauseMonitor] = (
    weakref.WeakKeyDictionary()
)


class LoopPauseMonitor:
    """Records the pauses of one event loop (the newest few)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._pauses: deque[tuple[float, float]] = deque(maxlen=16)  # (ended at, seconds)
        self._expected = time.monotonic() + TICK_SECONDS
        self._handle: asyncio.TimerHandle | None = loop.call_later(TICK_SECONDS, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        late = now - self._expected
        if late > PAUSE_SECONDS:
            self._pauses.append((now, late))
        self._expected = now + TICK_SECONDS
        self._handle = self._loop.call_later(TICK_SECONDS, self._tick)

    def paused_since(self, since: float) -> float:
        """Seconds this loop did not run, in pauses that ended after ``since`` (monotonic),
        including one still going on (the ticker is overdue)."""
        total = sum(seconds for ended, seconds in self._pauses if ended > since)
        overdue = time.monotonic() - self._expected
        return total + (overdue if overdue > PAUSE_SECONDS else 0.0)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def watch_running_loop() -> LoopPauseMonitor:
    """Start (once per loop) noticing pauses of the running event loop."""
    loop = asyncio.get_running_loop()
    monitor = _monitors.get(loop)
    if monitor is None:
        monitor = _monitors[loop] = LoopPauseMonitor(loop)
    return monitor


def paused_since(since: float) -> float:
    """How long the running loop was paused since ``since`` (0.0 when it is not watched)."""
    try:
        monitor = _monitors.get(asyncio.get_running_loop())
    except RuntimeError:
        return 0.0
    return monitor.paused_since(since) if monitor is not None else 0.0
