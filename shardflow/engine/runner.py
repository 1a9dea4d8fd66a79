"""Runs one claimed workflow to its next resting point: done, failed, suspended or lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from shardflow.engine.app import App, WorkflowDef
from shardflow.engine.codec import encode_error, encode_payload, error_text
from shardflow.engine.context import (
    LeaseLost,
    Release,
    RunAbandoned,
    WorkflowContext,
    bind_context,
    bounded_write,
    unbind_context,
)
from shardflow.engine.ports import RunStore, StepObserver
from shardflow.errors import NonDeterminismError, UnknownWorkflow, WorkflowTimeout
from shardflow.storage.records import ClaimedWorkflow

log = logging.getLogger("shardflow.runner")

# A workflow whose code this worker does not have is given back for a while: a newer worker
# in a rolling deploy may know it.
UNKNOWN_WORKFLOW_DELAY = timedelta(seconds=30)


class Outcome(StrEnum):
    """Where a run left the workflow."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUSPENDED = "suspended"
    CANCELLED = "cancelled"
    LOST = "lost"
    # Parked: the code no longer matches the recorded history (NonDeterminismError).
    STUCK = "stuck"


@dataclass(frozen=True)
class RunResult:
    """How a run ended, and for a suspended one, after how long it is due again."""

    outcome: Outcome
    due_in: timedelta | None = None


class WorkflowRunner:
    """Replays a claimed workflow against its checkpoints and records how the run ended."""

    def __init__(
        self,
        app: App,
        *,
        max_payload_bytes: int,
        write_timeout: float,
        route: Callable[[str], Awaitable[int]] | None = None,
        max_id_length: int = 200,
        on_step: StepObserver | None = None,
        default_retention: float | None = None,
    ):
        self.app = app
        # Seconds a finished child is kept when its workflow names no retention (None: ever).
        self.default_retention = default_retention
        self.on_step = on_step
        self.max_payload_bytes = max_payload_bytes
        # The partition of a routing key: where a child workflow will live.
        self.route = route
        self.max_id_length = max_id_length
        # Bounds each of a run's writes: a run never waits forever on a write (issue 9).
        self.write_timeout = write_timeout

    async def run(self, store: RunStore, work: ClaimedWorkflow) -> RunResult:
        try:
            definition = self.app.get_workflow(work.name)
        except UnknownWorkflow as exc:
            log.error(
                "unknown workflow %s; giving it back",
                work.name,
                extra={
                    "action": "unknown_workflow",
                    "node": store.node,
                    "partition": work.partition,
                    "workflow_id": work.workflow_id,
                },
            )
            released = await bounded_write(
                store.release(
                    work, delay=UNKNOWN_WORKFLOW_DELAY, error=error_text(encode_error(exc))
                ),
                timeout=self.write_timeout,
                node=store.node,
                workflow_id=work.workflow_id,
                what="its release (unknown workflow)",
            )
            return _released(released, UNKNOWN_WORKFLOW_DELAY)

        ctx = WorkflowContext(
            work=work,
            store=store,
            # Checkpoints are written only under a claim (a fork copies some and counts as
            # claimed once): a first claim has none to read.
            checkpoints=(
                await store.steps(work.partition, work.workflow_id) if work.claim_count > 1 else []
            ),
            max_payload_bytes=self.max_payload_bytes,
            write_timeout=self.write_timeout,
            route=self.route,
            max_id_length=self.max_id_length,
            on_step=self.on_step,
            default_retention=self.default_retention,
        )
        try:
            return await self._run(ctx, definition, work, store)
        except LeaseLost:
            return RunResult(Outcome.LOST)
        except RunAbandoned as abandoned:
            raise abandoned.cause from None
        except NonDeterminismError as exc:  # also from a saga's undo
            return await self._park(ctx, work, exc)

    async def _run(
        self,
        ctx: WorkflowContext,
        definition: WorkflowDef,
        work: ClaimedWorkflow,
        store: RunStore,
    ) -> RunResult:
        if work.cancel_requested:
            return await self._undo_and_cancel(ctx, work, store)
        remaining = None
        if work.deadline_at is not None:
            remaining = (work.deadline_at - ctx.database_now()).total_seconds()
            if remaining <= 0:
                return await self._fail(ctx, _timeout_error(work))
        token = bind_context(ctx)
        try:
            async with asyncio.timeout(remaining) as deadline:
                if definition.takes_input:
                    result = await definition.fn(ctx, work.input)
                else:
                    result = await definition.fn(ctx)
            output = encode_payload(
                result, max_bytes=self.max_payload_bytes, what=f"result of workflow {work.name!r}"
            )
        except Release as release:
            return await self._release(ctx, work, store, release)
        except (LeaseLost, RunAbandoned, NonDeterminismError):
            raise
        except TimeoutError as exc:
            if deadline.expired():
                return await self._fail(ctx, _timeout_error(work))
            return await self._undo_and_fail(ctx, work, store, exc)  # its own (a wait's)
        except Exception as exc:
            if ctx.nondeterminism is not None:  # the code caught it and raised something else
                raise ctx.nondeterminism from exc
            return await self._undo_and_fail(ctx, work, store, exc)
        finally:
            unbind_context(token)
        if ctx.nondeterminism is not None:  # the code caught it and went on regardless
            raise ctx.nondeterminism
        # The last checkpoints and the terminal state share one commit.
        await self._end(ctx, "succeeded", output.text, None)
        return RunResult(Outcome.SUCCEEDED)

    async def _end(
        self, ctx: WorkflowContext, status: str, output: str | None, error: str | None
    ) -> None:
        """Record the run's end with its last checkpoints in one commit."""
        await ctx.settle(finish={"status": status, "output": output, "error": error})

    async def _release(
        self, ctx: WorkflowContext, work: ClaimedWorkflow, store: RunStore, release: Release
    ) -> RunResult:
        await ctx.settle()  # the checkpoints of this run are durable before it lets go
        delay = release.delay
        if work.deadline_at is not None:
            # Wake no later than the deadline, so a timeout is noticed on time.
            until_deadline = work.deadline_at - ctx.database_now()
            delay = until_deadline if delay is None else min(delay, until_deadline)
        if delay is not None:
            delay = max(delay, timedelta(0))
        due_now = await bounded_write(
            store.release(
                work,
                delay=delay,
                retry_step_seq=release.retry_step_seq,
                retry_attempts=release.retry_attempts,
                error=error_text(release.error) if release.error else None,
                waiting_for=release.waiting_for,
                seen_signal_seq=release.seen_signal_seq,
            ),
            timeout=self.write_timeout,
            node=store.node,
            workflow_id=work.workflow_id,
            what=(
                f"its release (waiting for signal {release.waiting_for!r})"
                if release.waiting_for
                else "its release (sleep or retry)"
            ),
        )
        return _released(due_now, timedelta(0) if due_now else delay)

    async def _undo_and_fail(
        self, ctx: WorkflowContext, work: ClaimedWorkflow, store: RunStore, exc: Exception
    ) -> RunResult:
        """A saga's failure: run its compensations (durable steps, newest first), then end
        ``failed`` with the original error and what was undone. A compensation's retry
        releases the workflow like any step's; the next run replays to here and goes on."""
        if not ctx.has_compensations:
            return await self._fail(ctx, exc)
        try:
            ran, failures = await ctx.run_compensations()
        except Release as release:
            return await self._release(ctx, work, store, release)
        error = encode_error(exc)
        error["compensations"] = ran
        if failures:
            error["compensation_failures"] = failures
        await self._end(ctx, "failed", None, error_text(error))
        return RunResult(Outcome.FAILED)

    async def _undo_and_cancel(
        self, ctx: WorkflowContext, work: ClaimedWorkflow, store: RunStore
    ) -> RunResult:
        """A cancelled saga: run its recorded compensations, then end ``cancelled``."""
        try:
            ran, failures = await ctx.undo_for_cancel(self.app)
        except Release as release:
            return await self._release(ctx, work, store, release)
        error: dict[str, Any] = {
            "type": "Cancelled",
            "module": "shardflow",
            "message": "the workflow was cancelled; its compensations ran",
            "compensations": ran,
        }
        if failures:
            error["compensation_failures"] = failures
        await self._end(ctx, "cancelled", None, error_text(error))
        return RunResult(Outcome.CANCELLED)

    async def _park(
        self, ctx: WorkflowContext, work: ClaimedWorkflow, exc: NonDeterminismError
    ) -> RunResult:
        """The code does not match the history: park the workflow as ``stuck`` (visible,
        holding nothing, kept) rather than fail it; `shardflow resume` runs it again once
        code that matches is deployed. Nothing after the mismatch was recorded."""
        log.error(
            "workflow %s parked as stuck: %s; deploy code that matches its history (or guard "
            "the change with ctx.patched()), then run `shardflow resume %s`",
            work.workflow_id,
            exc,
            work.workflow_id,
            extra={"action": "parked_stuck", "workflow_id": work.workflow_id},
        )
        await self._end(ctx, "stuck", None, error_text(encode_error(exc)))
        return RunResult(Outcome.STUCK)

    async def _fail(self, ctx: WorkflowContext, exc: BaseException) -> RunResult:
        error = error_text(encode_error(exc))
        await self._end(ctx, "failed", None, error)
        return RunResult(Outcome.FAILED)


def _released(due_now: bool | None, delay: timedelta | None) -> RunResult:
    """A release's result: LOST if the workflow was no longer held (``due_now`` None);
    otherwise due after ``delay`` (None: when a signal wakes it)."""
    if due_now is None:
        return RunResult(Outcome.LOST)
    return RunResult(Outcome.SUSPENDED, due_in=delay)


def _timeout_error(work: ClaimedWorkflow) -> WorkflowTimeout:
    deadline = work.deadline_at.isoformat() if work.deadline_at else "?"
    return WorkflowTimeout(f"workflow {work.workflow_id!r} passed its deadline {deadline}")
