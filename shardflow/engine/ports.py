"""What the engine needs from storage: the narrow interface a run writes through.

The engine depends on this protocol, not on a concrete store: ``WorkerStore`` provides it on
plain nodes and on Citus alike (it picks the statements for its dialect), and a test or a
future backend can provide another.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any, Protocol

from shardflow.storage.records import ClaimedWorkflow, StepRecord


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
        delay: timedelta,
        retry_step_seq: int | None = None,
        retry_attempts: int = 0,
        error: str | None = None,
    ) -> bool:
        """Give the workflow back, due again after ``delay``; False if no longer held."""
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
