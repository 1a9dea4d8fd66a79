"""What the worker's services need from storage, one narrow protocol each.

``WorkerStore`` provides all of them, for plain nodes and Citus alike; the services depend
only on what they use (the claim loop claims, the reaper requeues, the listener listens).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Protocol

from shardflow.engine.ports import RunStore
from shardflow.storage.records import ClaimedWorkflow


class NodeBound(Protocol):
    @property
    def node(self) -> str: ...


class ClaimStore(NodeBound, Protocol):
    """The claim loop's view of one node."""

    async def next_due_seconds(self) -> float | None: ...

    async def suspect_partitions(self) -> list[int]: ...

    async def claim(
        self, *, partition: int, limit: int, owner: str, lease: timedelta, suspect: bool = False
    ) -> list[ClaimedWorkflow]: ...

    async def claim_ready(
        self, *, limit: int, owner: str, lease: timedelta, backlog: bool = True
    ) -> list[ClaimedWorkflow]: ...

    @property
    def claims_by_partition(self) -> bool: ...

    async def runnable_partitions(self, *, limit: int) -> list[int]: ...

    async def claim_from(
        self, partitions: list[int], *, limit: int, owner: str, lease: timedelta
    ) -> tuple[list[ClaimedWorkflow], list[int]]: ...


class NodeStore(ClaimStore, RunStore, Protocol):
    """A node as the claim loop hands it to the executor: claims come from it, and the runs
    of what it claimed write to it."""


class ReaperStore(NodeBound, Protocol):
    """The reaper's view of one node."""

    async def acquire_service_lease(self, *, service: str, holder: str, ttl: timedelta) -> bool: ...

    async def requeue_expired(
        self, *, max_expiries: int, dead_error: str, limit: int = 500
    ) -> tuple[int, list[str]]: ...

    async def prune_workers(self) -> None: ...


class ListenStore(NodeBound, Protocol):
    """The listener's view of one node."""

    def notifications(self, *, timeout: float) -> AsyncIterator[str | None]: ...
