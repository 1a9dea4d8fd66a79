"""Worker services: claim loop, executor, heartbeat, reaper, listener, and the Worker."""

from __future__ import annotations

from shardflow.worker.worker import Worker

__all__ = ["Worker"]
