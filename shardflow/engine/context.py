"""The workflow context: replay from checkpoints, step execution, durable sleep and time.

Running a workflow means calling its function from the top. Each step call takes the next
sequence number: a recorded checkpoint at that number is returned (or its error raised)
without running the step; otherwise the step runs and its outcome is recorded, guarded by
the lease. Anything that would make replay diverge is either recorded (``now``, ``uuid``)
or detected (a different step name at a recorded position raises NonDeterminismError).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from shardflow.engine.codec import encode_error, encode_payload, error_text
from shardflow.errors import (
    InvalidInput,
    NonDeterminismError,
    ShardflowError,
    StepFailedError,
    WriteStalled,
)
from shardflow.faults import WORKER_FAULT_ENV, fault_point
from shardflow.storage.records import ClaimedWorkflow, StepRecord

if TYPE_CHECKING:
    from shardflow.engine.app import StepDef
    from shardflow.engine.ports import RunStore

T = TypeVar("T")

SLEEP_STEP = "shardflow.sleep"
NOW_STEP = "shardflow.now"
UUID_STEP = "shardflow.uuid"

# A buffered checkpoint that no step start, end or release has sent yet goes out after this.
WRITE_LINGER_SECONDS = 0.005

_current_context: contextvars.ContextVar[WorkflowContext | None] = contextvars.ContextVar(
    "shardflow_workflow_context", default=None
)
_current_step: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "shardflow_step", default=None
)


def current_context() -> WorkflowContext | None:
    """The context of the workflow running in this task, if any."""
    return _current_context.get()


def current_step() -> StepInfo | None:
    """Inside a step body: which step and attempt this is, and its idempotency key."""
    return _current_step.get()


@dataclass(frozen=True)
class StepInfo:
    """What a running step knows about itself.

    ``idempotency_key`` (``workflow_id:step_seq``) is the same on every attempt and every
    replay: pass it to external services so a re-run step does not act twice.
    """

    workflow_id: str
    step_name: str
    step_seq: int
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}:{self.step_seq}"


class Release(BaseException):
    """Suspend the workflow and give it back until ``delay`` from now.

    A BaseException so that ``except Exception`` in workflow code cannot swallow it.
    """

    def __init__(
        self,
        delay: timedelta,
        *,
        retry_step_seq: int | None = None,
        retry_attempts: int = 0,
        error: dict[str, Any] | None = None,
    ):
        super().__init__(delay)
        self.delay = delay
        self.retry_step_seq = retry_step_seq
        self.retry_attempts = retry_attempts
        self.error = error


class LeaseLost(BaseException):
    """This worker no longer holds the workflow (lease expired, cancelled, partition moved)."""


class RunAbandoned(BaseException):
    """Recording failed for an infrastructure reason (node unreachable, ambiguous commit).

    Not the workflow's fault, so it must not fail the workflow, and workflow code must not
    catch it: the run stops, its lease expires, and the workflow resumes from its checkpoints.
    ``cause`` is the storage error.
    """

    def __init__(self, cause: ShardflowError):
        super().__init__(str(cause))
        self.cause = cause


class _StepBodyFailed(Exception):
    """Carries a transactional step's own exception out of its (rolled back) transaction."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


class WorkflowContext:
    """Passed as the first argument of every workflow function."""

    def __init__(
        self,
        *,
        work: ClaimedWorkflow,
        store: RunStore,
        checkpoints: list[StepRecord],
        max_payload_bytes: int,
        write_timeout: float,
    ):
        self._work = work
        self._store = store
        self._write_timeout = write_timeout
        self._recorded = {cp.step_seq: cp for cp in checkpoints}
        self._max_payload_bytes = max_payload_bytes
        self._next_seq = 0
        self._claimed_mono = time.monotonic()
        # Checkpoints not yet handed to the store, the timer and the background write that
        # send them if nothing else does, and why this run can no longer record anything
        # (raised at the next step or settle()).
        self._unsent: list[dict[str, Any]] = []
        self._linger: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self._settle_lock = asyncio.Lock()
        self._broken: LeaseLost | RunAbandoned | None = None

    @property
    def workflow_id(self) -> str:
        return self._work.workflow_id

    @property
    def workflow_name(self) -> str:
        return self._work.name

    @property
    def partition(self) -> int:
        return self._work.partition

    @property
    def attempt(self) -> int:
        """How many times this workflow has been claimed (1 on the first run)."""
        return self._work.claim_count

    def database_now(self) -> datetime:
        """The node's clock, estimated from the claim time: not recorded, not for branching."""
        elapsed = time.monotonic() - self._claimed_mono
        return self._work.claimed_at + timedelta(seconds=elapsed)

    async def now(self) -> datetime:
        """The current time, recorded on first run so every replay sees the same value."""
        recorded = await self._deterministic(NOW_STEP, lambda: self.database_now().isoformat())
        return datetime.fromisoformat(recorded)

    async def uuid(self) -> uuid.UUID:
        """A random UUID, recorded on first run so every replay sees the same value."""
        return uuid.UUID(await self._deterministic(UUID_STEP, lambda: str(uuid.uuid4())))

    async def sleep(self, seconds: float) -> None:
        """Durable sleep: the workflow is released and resumes (on any worker) when due."""
        if seconds < 0:
            raise InvalidInput("sleep seconds must be >= 0")
        wake_at_text = await self._deterministic(
            SLEEP_STEP, lambda: (self.database_now() + timedelta(seconds=seconds)).isoformat()
        )
        remaining = datetime.fromisoformat(wake_at_text) - self.database_now()
        if remaining > timedelta(0):
            raise Release(remaining)

    async def _deterministic(self, name: str, make: Any) -> str:
        seq = self._take_seq()
        recorded = self._replayed(seq, name)
        if recorded is not None:
            return str(recorded.output)
        value: str = make()
        await self._record(
            seq,
            name,
            "succeeded",
            output=encode_payload(value, max_bytes=self._max_payload_bytes, what=name).text,
        )
        return value

    async def run_step(self, step: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``step`` at the next position, or replay its recorded outcome."""
        self._raise_if_broken()
        seq = self._take_seq()
        recorded = self._replayed(seq, step.name)
        if recorded is not None:
            if recorded.status == "succeeded":
                return recorded.output
            raise StepFailedError(step.name, recorded.error or {})

        # Earlier positions are durable before this step's body runs.
        await self.settle()
        work = self._work
        attempt = work.retry_attempts + 1 if work.retry_step_seq == seq else 1
        info = StepInfo(work.workflow_id, step.name, seq, attempt)
        if step.transactional:
            return await self._run_transaction(step, info, args, kwargs)
        try:
            result = await self._invoke(step, info, args, kwargs)
            encoded = encode_payload(
                result, max_bytes=self._max_payload_bytes, what=f"result of step {step.name!r}"
            )
        except Exception as exc:
            await self._step_failed(step, info, exc)
        await self._record(seq, step.name, "succeeded", output=encoded.text, attempts=attempt)
        return encoded.value

    async def _run_transaction(
        self, step: StepDef, info: StepInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run a transactional step and write its checkpoint in one transaction on the node.

        Either both commit or neither does: a crash before the commit leaves no effect and
        the step runs again; after it, replay finds the checkpoint and does not run it again.
        """
        try:
            async with self._store.step_transaction() as conn:
                try:
                    result = await self._invoke(step, info, (conn, *args), kwargs)
                    encoded = encode_payload(
                        result,
                        max_bytes=self._max_payload_bytes,
                        what=f"result of step {step.name!r}",
                    )
                except Exception as exc:
                    if conn.broken or conn.closed:
                        raise  # the node went away, not the step's fault
                    raise _StepBodyFailed(exc) from exc
                recorded = await self._store.record_step_in(
                    conn,
                    self._work,
                    step_seq=info.step_seq,
                    step_name=step.name,
                    output=encoded.text,
                    attempts=info.attempt,
                )
                if not recorded:
                    raise LeaseLost()  # rolls the step's writes back with it
                fault_point(WORKER_FAULT_ENV, "tx_before_commit")
        except _StepBodyFailed as failed:
            await self._step_failed(step, info, failed.cause)
        except ShardflowError as exc:
            # Includes a commit whose outcome is unknown: the resumed run finds out by
            # replaying, because the checkpoint committed if and only if the effect did.
            raise RunAbandoned(exc) from exc
        fault_point(WORKER_FAULT_ENV, "tx_after_commit")
        return encoded.value

    async def _step_failed(self, step: StepDef, info: StepInfo, exc: Exception) -> NoReturn:
        """Schedule a retry of a failed attempt, or record the step as failed and raise."""
        error = encode_error(exc)
        # A result that cannot be stored fails the same way every time: no retries.
        if not isinstance(exc, InvalidInput) and info.attempt < step.max_attempts:
            raise Release(
                timedelta(seconds=step.retry_delay(info.attempt)),
                retry_step_seq=info.step_seq,
                retry_attempts=info.attempt,
                error=error,
            ) from None
        await self._record(info.step_seq, step.name, "failed", error=error, attempts=info.attempt)
        raise StepFailedError(step.name, error) from None

    async def _invoke(
        self, step: StepDef, info: StepInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        token = _current_step.set(info)
        # The step body is user code: it must not see the workflow context (a step called
        # from inside a step simply runs).
        ctx_token = _current_context.set(None)
        try:
            if step.is_async:
                call = step.fn(*args, **kwargs)
            else:
                call = asyncio.to_thread(step.fn, *args, **kwargs)
            if step.timeout is None:
                return await call
            try:
                async with asyncio.timeout(step.timeout):
                    return await call
            except TimeoutError:
                raise TimeoutError(
                    f"step {step.name!r} ran past its {step.timeout}s timeout"
                ) from None
        finally:
            _current_context.reset(ctx_token)
            _current_step.reset(token)

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _replayed(self, seq: int, name: str) -> StepRecord | None:
        recorded = self._recorded.get(seq)
        if recorded is not None and recorded.step_name != name:
            raise NonDeterminismError(
                f"workflow {self.workflow_id!r}: position {seq} was recorded as step "
                f"{recorded.step_name!r} but the code now calls {name!r}; in-flight workflows "
                "need code that calls the same steps in the same order"
            )
        return recorded

    async def _record(
        self,
        seq: int,
        name: str,
        status: str,
        *,
        output: str | None = None,
        error: dict[str, Any] | None = None,
        attempts: int = 1,
    ) -> None:
        """Checkpoint position ``seq``: buffered until the next durable point.

        The write goes out when the next step is about to run (its body starts only once
        every earlier position is durable, so a completed step is never re-run once a later
        one has started), or with the workflow's end or release (the last checkpoints share
        that commit), or after ``WRITE_LINGER_SECONDS`` in the background, whichever comes
        first. Crash semantics are those of writing each checkpoint at once.
        """
        self._raise_if_broken()
        self._unsent.append(
            {
                "step_seq": seq,
                "step_name": name,
                "status": status,
                "output": output,
                "error": error_text(error) if error else None,
                "attempts": attempts,
            }
        )
        if self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(
                WRITE_LINGER_SECONDS, self._write_in_background
            )

    def _write_in_background(self) -> None:
        self._linger = None
        if self._unsent and (self._writer is None or self._writer.done()):
            self._writer = asyncio.create_task(self._write_behind())

    async def _write_behind(self) -> None:
        while self._unsent and self._broken is None:
            batch, self._unsent = self._unsent, []
            await self._send(batch, None)

    async def _send(self, batch: list[dict[str, Any]], finish: dict[str, Any] | None) -> None:
        """Write, and remember why this run can record nothing more if that failed.

        The wait (group-commit queue and commit) is bounded: a write that never comes back
        abandons the run, so its lease expires and another worker resumes the workflow.
        """
        what = [f"checkpoint {c['step_seq']} ({c['step_name']})" for c in batch]
        if finish is not None:
            what.append(f"its end ({finish['status']})")
        try:
            ok = await bounded_write(
                self._store.write_progress(self._work, batch, finish),
                timeout=self._write_timeout,
                node=self._store.node,
                workflow_id=self.workflow_id,
                what=", ".join(what) or "nothing",
            )
        except ShardflowError as exc:
            self._broken = RunAbandoned(exc)
            return
        if not ok:
            self._broken = LeaseLost()

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    async def settle(self, *, finish: dict[str, Any] | None = None) -> None:
        """Make every checkpoint of this run durable, and the terminal state if ``finish``
        (status, output, error) is given, in one commit. Raises LeaseLost or RunAbandoned."""
        # Steps run concurrently (asyncio.gather) settle one at a time: each returns only
        # once everything recorded before it is durable.
        async with self._settle_lock:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            if self._writer is not None:
                await asyncio.shield(self._writer)
            self._raise_if_broken()
            if not self._unsent and finish is None:
                return
            batch, self._unsent = self._unsent, []
            await self._send(batch, finish)
            self._raise_if_broken()


async def bounded_write(
    write: Awaitable[T], *, timeout: float, node: str, workflow_id: str, what: str
) -> T:
    """Wait for one of a run's writes (queue and commit) at most ``timeout`` seconds;
    past it, WriteStalled: the run is abandoned, its lease left to expire."""
    try:
        async with asyncio.timeout(timeout):
            return await write
    except TimeoutError:
        raise WriteStalled(
            f"workflow {workflow_id!r} on node {node}: the write of {what} got no answer "
            f"within {timeout}s; abandoning the run so its lease expires and another worker "
            "resumes it",
            node=node,
            workflow_id=workflow_id,
        ) from None


def bind_context(ctx: WorkflowContext) -> contextvars.Token[WorkflowContext | None]:
    return _current_context.set(ctx)


def unbind_context(token: contextvars.Token[WorkflowContext | None]) -> None:
    _current_context.reset(token)


def utcnow() -> datetime:
    """Wall-clock UTC; only for logs and reports, never for leases or timers."""
    return datetime.now(UTC)
