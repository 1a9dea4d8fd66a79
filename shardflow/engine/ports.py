"""What the engine needs from storage: the narrow interface a run writes through.

The engine depends on this protocol, not on a concrete store: ``WorkerStore`` provides it on
plain nodes and on Citus alike (it picks the statements for its dialect), and a test or a
future backend can provide another.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any, Protocol

from shardflow.storage.records import ClaimedWorkflow, StepRecord

# Told each step body's name, duration in seconds, and whether it returned (not raised).
StepObserver = Callable[[str, float, bool], None]


class RunStore(Protocol):
    """The node that holds a claimed workflow, as its run sees it."""

    @property
    def node(self) -> str: ...

    async def steps(self, partition: int, workflow_id: str) -> list[StepRecord]:
        """The workflow's checkpoints, in order."""
        ...

    async def write_progress(
        self,
        work: ClaimedWorkflow,
        checkpoints: list[dict[str, Any]],
        finish: dict[str, Any] | None,
    ) -> bool:
        """Checkpoints and, if ``finish``, the terminal state, in one commit, guarded by the
        lease and the fence; False when the lease or the partition was lost."""
        ...

    async def release(
        self,
        work: ClaimedWorkflow,
        *,
        delay: timedelta | None,
        retry_step_seq: int | None = None,
        retry_attempts: int = 0,
        error: str | None = None,
        waiting_for: str | None = None,
        seen_signal_seq: int | None = None,
    ) -> bool | None:
        """Give the workflow back, due again after ``delay`` (None: only when a signal
        ``waiting_for`` arrives); None if no longer held, True if due at once (a signal came
        in since the run saw ``seen_signal_seq`` signals), else False."""
        ...

    def step_transaction(self) -> AbstractAsyncContextManager[Any]:
        """A connection inside one transaction on the node (a transactional step's)."""
        ...

    async def record_step_in(
        self,
        conn: Any,
        work: ClaimedWorkflow,
        *,
        step_seq: int,
        step_name: str,
        output: str | None,
        attempts: int,
    ) -> bool:
        """A transactional step's checkpoint inside its transaction; False if lost."""
        ...

    async def unread_signal(
        self,
        conn: Any,
        work: ClaimedWorkflow,
        *,
        name: str,
        signal_ids: list[str] | None = None,
        peek: bool = False,
    ) -> tuple[int, str | None, Any] | None:
        """In one snapshot: (signals ever sent to the workflow, the oldest unread signal
        ``name``'s id or None, its payload), among ``signal_ids`` only if given (``peek``:
        read ones too); None when the workflow left this node."""
        ...

    async def insert_child_in(
        self, conn: Any, work: ClaimedWorkflow, start: dict[str, Any]
    ) -> None:
        """Inside the parent's checkpoint transaction: insert a child on its partition."""
        ...

    async def send_in(
        self, conn: Any, work: ClaimedWorkflow, *, message_id: str, kind: str, body: dict[str, Any]
    ) -> None:
        """Inside the sender's transaction: queue a message to another partition."""
        ...

    async def announce(self, partition: int, *, local: bool) -> None:
        """After the commit: wake whoever runs the new work (claim loops or the relay)."""
        ...

    async def mark_signal_received(
        self, conn: Any, work: ClaimedWorkflow, *, signal_id: str, step_seq: int
    ) -> bool:
        """Mark a signal read by the wait at ``step_seq``; False if it was read already."""
        ...

    async def set_event_in(
        self, conn: Any, work: ClaimedWorkflow, *, key: str, value: str | None, step_seq: int
    ) -> None:
        """Inside a transaction: publish event ``key`` (``value`` is JSON text)."""
        ...
