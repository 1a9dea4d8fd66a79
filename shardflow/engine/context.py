"""The workflow context: replay from checkpoints, step execution, durable sleep and time,
signals and events.

Running a workflow means calling its function from the top. Each step call takes the next
sequence number: a recorded checkpoint at that number is returned (or its error raised)
without running the step; otherwise the step runs and its outcome is recorded, guarded by
the lease. Anything that would make replay diverge is either recorded (``now``, ``uuid``)
or detected (a different step name at a recorded position raises NonDeterminismError).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from shardflow import tracing
from shardflow.engine.codec import (
    check_identifier,
    check_name,
    encode_error,
    encode_payload,
    error_text,
)
from shardflow.errors import (
    ChildWorkflowFailed,
    InvalidInput,
    NonDeterminismError,
    ShardflowError,
    SignalTimeout,
    StepFailedError,
    WorkflowConflict,
    WriteStalled,
)
from shardflow.faults import WORKER_FAULT_ENV, fault_point
from shardflow.storage.records import ClaimedWorkflow, StepRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from shardflow.engine.app import App, StepDef, WorkflowDef
    from shardflow.engine.ports import RunStore, StepObserver

T = TypeVar("T")

SLEEP_STEP = "shardflow.sleep"
NOW_STEP = "shardflow.now"
UUID_STEP = "shardflow.uuid"
# A wait for a signal takes two positions: its deadline (recorded when first reached, so a
# replay waits for the same instant), then what it received (the signal, or a timeout).
WAIT_DEADLINE_STEP = "shardflow.wait_deadline"
SIGNAL_STEP_PREFIX = "shardflow.signal:"
EVENT_STEP_PREFIX = "shardflow.event:"
# ctx.compensate records each registration (step and JSON arguments) at its position.
COMPENSATE_STEP_PREFIX = "shardflow.compensate:"
# A child's start (its id and routing key), and the parent's receipt of its end, which the
# relay delivers as a signal of this name (signal id CHILD_SIGNAL + ":" + child id).
# Where a cancelled saga's undo begins (the compensations follow it).
CANCELLED_STEP = "shardflow.cancelled"
# ctx.patched(id) records this marker where a run first took the patched path.
PATCH_STEP_PREFIX = "shardflow.patch:"
START_CHILD_STEP_PREFIX = "shardflow.start_child:"
CHILD_RESULT_STEP_PREFIX = "shardflow.child_result:"
CHILD_SIGNAL = "shardflow.child"
FIRST_TO_END_STEP = "shardflow.first_to_end"

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
    """Suspend the workflow and give it back until ``delay`` from now (``None``: until a
    signal wakes it).

    A BaseException so that ``except Exception`` in workflow code cannot swallow it.
    ``waiting_for``: the signal name that wakes it earlier; ``seen_signal_seq``: how many
    signals the run had seen, so one sent while it lets go wakes it at once.
    """

    def __init__(
        self,
        delay: timedelta | None,
        *,
        retry_step_seq: int | None = None,
        retry_attempts: int = 0,
        error: dict[str, Any] | None = None,
        waiting_for: str | None = None,
        seen_signal_seq: int | None = None,
    ):
        super().__init__(delay)
        self.delay = delay
        self.retry_step_seq = retry_step_seq
        self.retry_attempts = retry_attempts
        self.error = error
        self.waiting_for = waiting_for
        self.seen_signal_seq = seen_signal_seq


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
        route: Callable[[str], Awaitable[int]] | None = None,
        max_id_length: int = 200,
        on_step: StepObserver | None = None,
        default_retention: float | None = None,
    ):
        self._work = work
        # A child's retention when its workflow names none (the cluster's; None: for ever).
        self._default_retention = default_retention
        # Told each step body's duration and whether it raised (the worker's metrics).
        self._on_step = on_step
        self._store = store
        # The partition of a routing key (where a child will live).
        self._route = route
        self._max_id_length = max_id_length
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
        # Saga: the undo steps registered so far (step, args, kwargs), oldest first.
        self._compensations: list[tuple[StepDef, tuple[Any, ...], dict[str, Any]]] = []
        # Set when the code stopped matching the recorded history (the runner parks the run).
        self.nondeterminism: NonDeterminismError | None = None
        # ctx.patched() answers of this run, by patch id (asked again: the same answer).
        self._patches: dict[str, bool] = {}

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

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new path of a code change named ``patch_id``.

        A run that reaches this point for the first time takes it (True) and records a
        marker, so its replays take it too. A run whose recorded history reached this point
        before the change was deployed finds another checkpoint here: it keeps the old path
        (False) and the call takes no position in its history, so the old code's checkpoints
        replay as they were. Asking again in the same run gives the same answer::

            if ctx.patched("charge-v2"):
                await charge_v2(order)
            else:
                await charge(order)

        Once no run from before the change is left (``shardflow list --version OLD``), the
        old branch can go; keep the ``patched`` call while runs that recorded it exist.
        """
        check_name(patch_id, what="patch id")
        if patch_id in self._patches:
            return self._patches[patch_id]
        self._raise_if_broken()
        seq = self._next_seq
        name = PATCH_STEP_PREFIX + patch_id
        recorded = self._recorded.get(seq)
        if recorded is not None and recorded.step_name != name:
            self._patches[patch_id] = False  # history from before the change
            return False
        self._next_seq += 1
        if recorded is None:
            self._record(seq, name, "succeeded", output="true")
        self._patches[patch_id] = True
        return True

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

    async def wait_for_signal(self, name: str, *, timeout: float | None = None) -> Any:
        """Wait durably for the next signal ``name`` sent to this workflow; return its payload.

        Signals sent before the wait are kept: each call receives the oldest unread one of
        that name (in the order they were sent), exactly once. While it waits the workflow is
        released and holds no worker slot; a send wakes it at once (the node's notification).
        With ``timeout`` (seconds, measured from the first time this wait is reached) it
        raises SignalTimeout when none arrived in time; catch it to take another path.
        """
        check_name(name, what="signal name")
        deadline = await self._wait_deadline(timeout)
        seq = self._take_seq()
        step_name = SIGNAL_STEP_PREFIX + name
        recorded = self._replayed(seq, step_name)
        if recorded is not None:
            return _received(recorded.output, name, timeout)
        await self.settle()  # earlier positions are durable before the signal is taken
        seen, output = await self._take_signal(name, seq, step_name)
        if output is not None:
            return _received(output, name, timeout)
        if deadline is not None and deadline <= self.database_now():
            self._record(seq, step_name, "succeeded", output=json.dumps({"timed_out": True}))
            raise SignalTimeout(name, timeout or 0.0)
        raise Release(
            None if deadline is None else deadline - self.database_now(),
            waiting_for=name,
            seen_signal_seq=seen,
        )

    async def _wait_deadline(self, timeout: float | None) -> datetime | None:
        """A wait's deadline, recorded at its own position the first time the wait is reached
        (so a replay waits for the same instant); None without a timeout."""
        if timeout is not None and not (isinstance(timeout, int | float) and timeout >= 0):
            raise InvalidInput(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        deadline_text = await self._deterministic(
            WAIT_DEADLINE_STEP,
            lambda: (
                ""
                if timeout is None
                else (self.database_now() + timedelta(seconds=timeout)).isoformat()
            ),
        )
        return datetime.fromisoformat(deadline_text) if deadline_text else None

    async def _take_signal(
        self,
        name: str,
        seq: int,
        step_name: str,
        *,
        signal_ids: list[str] | None = None,
        peek: bool = False,
    ) -> tuple[int, dict[str, Any] | None]:
        """Receive the oldest unread signal ``name`` into position ``seq``: the checkpoint
        and the signal's "read" mark commit together. Returns the signal count the node had,
        and the recorded output (None: no unread signal of that name). ``signal_ids``: only
        those (children's ends); ``peek``: record which one arrived first without marking it
        read (a race: the winner's ``result()`` receives it). Locks in the global order, like
        a send: ownership row, workflow row (both by the checkpoint), signal."""
        try:
            async with self._store.step_transaction() as conn:
                found = await self._store.unread_signal(
                    conn, self._work, name=name, signal_ids=signal_ids, peek=peek
                )
                if found is None:
                    raise LeaseLost()  # the partition moved away
                seen, signal_id, payload = found
                if signal_id is None:
                    return seen, None
                output = {"signal_id": signal_id, "payload": payload}
                recorded = await self._store.record_step_in(
                    conn,
                    self._work,
                    step_seq=seq,
                    step_name=step_name,
                    output=json.dumps(output, ensure_ascii=False),
                    attempts=1,
                )
                received = recorded and (
                    peek
                    or await self._store.mark_signal_received(
                        conn, self._work, signal_id=signal_id, step_seq=seq
                    )
                )
                if not received:
                    raise LeaseLost()  # rolls back: the signal stays unread
        except ShardflowError as exc:
            raise RunAbandoned(exc) from exc
        return seen, output

    async def start_child(
        self,
        workflow: WorkflowDef,
        input: Any = None,
        *,
        workflow_id: str | None = None,
        routing_key: str | None = None,
    ) -> ChildHandle:
        """Start ``workflow`` as a child of this one; ``await handle.result()`` waits for it.

        The child's id is deterministic (default ``<parent id>:<position>``), so a replay
        starts it once. By default it gets this workflow's routing key: it lives on the
        same partition and its start commits in this workflow's own transaction. With
        another ``routing_key`` it may live on another node: the start is written to the
        outbox in the same transaction and the relay delivers it.
        """
        from shardflow.engine.app import WorkflowDef

        if not isinstance(workflow, WorkflowDef):
            raise InvalidInput(
                "start_child() takes a workflow registered with @app.workflow, got "
                f"{type(workflow).__name__}"
            )
        workflow.check_input(input is not None)
        seq = self._take_seq()
        step_name = START_CHILD_STEP_PREFIX + workflow.name
        recorded = self._replayed(seq, step_name)
        if recorded is not None:
            out = recorded.output
            return ChildHandle(self, out["workflow_id"], out["routing_key"])
        child_id = workflow_id if workflow_id is not None else f"{self.workflow_id}:{seq}"
        check_identifier(child_id, what="child workflow_id", max_length=self._max_id_length)
        key = routing_key if routing_key is not None else self._work.key
        check_identifier(key, what="child routing_key", max_length=self._max_id_length)
        encoded = encode_payload(
            input,
            max_bytes=self._max_payload_bytes,
            what=f"input of child workflow {workflow.name!r}",
        )
        if self._route is None:
            raise RuntimeError("this context cannot route children (no route function)")
        partition = await self._route(key)
        start = {
            "workflow_id": child_id,
            "routing_key": key,
            "partition": partition,
            "name": workflow.name,
            "app": workflow.app,
            "input": encoded.value,
            "timeout": workflow.timeout,
            "parent_id": self.workflow_id,
            "parent_key": self._work.key,
            # The child's runs continue this run's trace (None when nothing is traced).
            "trace_context": tracing.current_context(),
            "retention": workflow.retention_seconds(self._default_retention),
            "app_version": workflow.app_version,
            # A child of a queued workflow waits in its queue like any start.
            "queue": workflow.queue,
        }
        output = {"workflow_id": child_id, "routing_key": key}
        await self.settle()
        try:
            async with self._store.step_transaction() as conn:
                recorded_now = await self._store.record_step_in(
                    conn,
                    self._work,
                    step_seq=seq,
                    step_name=step_name,
                    output=json.dumps(output, ensure_ascii=False),
                    attempts=1,
                )
                if not recorded_now:
                    raise LeaseLost()
                if partition == self.partition:
                    await self._store.insert_child_in(conn, self._work, start)
                else:
                    await self._store.send_in(
                        conn,
                        self._work,
                        message_id=f"start:{child_id}",
                        kind="start_child",
                        body=start,
                    )
        except WorkflowConflict:
            raise  # the id is another workflow's: the parent's own error
        except ShardflowError as exc:
            raise RunAbandoned(exc) from exc
        await self._store.announce(partition, local=partition == self.partition)
        return ChildHandle(self, child_id, key)

    async def child_result(self, child_id: str) -> Any:
        """Wait durably for child ``child_id`` to end (holding no slot); its output, or
        ChildWorkflowFailed. Used by ``ChildHandle.result()``."""
        seq = self._take_seq()
        step_name = CHILD_RESULT_STEP_PREFIX + child_id
        recorded = self._replayed(seq, step_name)
        if recorded is None:
            await self.settle()
            seen, recorded_output = await self._take_signal(
                CHILD_SIGNAL, seq, step_name, signal_ids=[f"{CHILD_SIGNAL}:{child_id}"]
            )
            if recorded_output is None:
                raise Release(None, waiting_for=CHILD_SIGNAL, seen_signal_seq=seen)
            ended = recorded_output["payload"]
        else:
            ended = recorded.output["payload"]
        if ended["status"] == "succeeded":
            return ended["output"]
        raise ChildWorkflowFailed(child_id, ended["status"], ended.get("error"))

    async def first_to_end(
        self, children: list[ChildHandle], *, timeout: float | None = None
    ) -> ChildHandle | None:
        """Race children: the first of ``children`` to end (then ``await its.result()``),
        or None when none ended within ``timeout`` seconds. Durable and replayed like a
        signal wait (the parent holds no slot meanwhile); the others go on running (cancel
        them with the client if their work is no longer wanted)."""
        if not children:
            raise InvalidInput("first_to_end() needs at least one child")
        deadline = await self._wait_deadline(timeout)
        seq = self._take_seq()
        step_name = FIRST_TO_END_STEP
        by_signal = {f"{CHILD_SIGNAL}:{c.workflow_id}": c for c in children}
        recorded = self._replayed(seq, step_name)
        if recorded is None:
            await self.settle()
            seen, output = await self._take_signal(
                CHILD_SIGNAL, seq, step_name, signal_ids=sorted(by_signal), peek=True
            )
            if output is None:
                if deadline is None or deadline > self.database_now():
                    raise Release(
                        None if deadline is None else deadline - self.database_now(),
                        waiting_for=CHILD_SIGNAL,
                        seen_signal_seq=seen,
                    )
                output = {"timed_out": True}
                self._record(seq, step_name, "succeeded", output=json.dumps(output))
        else:
            output = recorded.output
        if output.get("timed_out"):
            return None
        return by_signal[output["signal_id"]]

    async def set_event(self, key: str, value: Any) -> None:
        """Publish ``value`` under ``key`` for clients (``client.get_event``): durable and
        visible when this returns; the latest value of a key wins. Recorded with the
        workflow's history, so a replay does not publish it again."""
        check_name(key, what="event key")
        seq = self._take_seq()
        step_name = EVENT_STEP_PREFIX + key
        if self._replayed(seq, step_name) is not None:
            return
        encoded = encode_payload(value, max_bytes=self._max_payload_bytes, what=f"event {key!r}")
        await self.settle()
        try:
            async with self._store.step_transaction() as conn:
                recorded = await self._store.record_step_in(
                    conn,
                    self._work,
                    step_seq=seq,
                    step_name=step_name,
                    output=encoded.text,
                    attempts=1,
                )
                if not recorded:
                    raise LeaseLost()
                await self._store.set_event_in(
                    conn, self._work, key=key, value=encoded.text, step_seq=seq
                )
        except ShardflowError as exc:
            raise RunAbandoned(exc) from exc

    def compensate(self, step: StepDef, *args: Any, **kwargs: Any) -> None:
        """Register ``step(*args, **kwargs)`` as the undo of what the workflow did so far.

        If the workflow then fails (a step used all its attempts, or its own exception), the
        registered compensations run newest first, each as a durable step (a crash resumes
        them where they stopped; a compensation that fails does not stop the others), and
        the workflow ends ``failed`` with their names in its error. The arguments must be
        JSON: they are recorded with the workflow.
        """
        from shardflow.engine.app import StepDef

        if not isinstance(step, StepDef):
            raise InvalidInput(
                "compensate() takes a step registered with @app.step or @app.transaction, got "
                f"{type(step).__name__}; register the undo function as a step"
            )
        encoded = encode_payload(
            {"args": list(args), "kwargs": kwargs},
            max_bytes=self._max_payload_bytes,
            what=f"arguments of compensation {step.name!r}",
        )
        seq = self._take_seq()
        name = COMPENSATE_STEP_PREFIX + step.name
        if self._replayed(seq, name) is None:
            self._record(seq, name, "succeeded", output=encoded.text)
        # The encoded value, on the first run and on replay alike (tuples become lists).
        self._compensations.append((step, tuple(encoded.value["args"]), encoded.value["kwargs"]))

    @property
    def has_compensations(self) -> bool:
        return bool(self._compensations)

    async def run_compensations(self) -> tuple[list[str], list[dict[str, Any]]]:
        """Run the registered compensations newest first, each as a durable step at the
        next position. Returns the names run (in order) and the failures (step, error)."""
        ran: list[str] = []
        failures: list[dict[str, Any]] = []
        while self._compensations:
            step, args, kwargs = self._compensations.pop()
            ran.append(step.name)
            try:
                await self.run_step(step, args, kwargs)
            except StepFailedError as failed:
                failures.append({"step": step.name, "error": failed.error})
        return ran, failures

    async def undo_for_cancel(self, app: App) -> tuple[list[str], list[dict[str, Any]]]:
        """A cancelled saga: run the compensations recorded by its registrations, newest
        first, without running the workflow's code. They follow a marker position after
        everything the workflow recorded, so a crash in the middle resumes them."""
        marker = next(
            (seq for seq, cp in sorted(self._recorded.items()) if cp.step_name == CANCELLED_STEP),
            None,
        )
        if marker is None:
            marker = max(self._recorded, default=-1) + 1
            self._record(marker, CANCELLED_STEP, "succeeded", output="null")
        for seq, cp in sorted(self._recorded.items()):
            if seq < marker and cp.step_name.startswith(COMPENSATE_STEP_PREFIX):
                step = app.get_step(cp.step_name[len(COMPENSATE_STEP_PREFIX) :])
                self._compensations.append((step, tuple(cp.output["args"]), cp.output["kwargs"]))
        self._next_seq = marker + 1
        return await self.run_compensations()

    async def _deterministic(self, name: str, make: Any) -> str:
        seq = self._take_seq()
        recorded = self._replayed(seq, name)
        if recorded is not None:
            return str(recorded.output)
        value: str = make()
        self._record(
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
        self._record(seq, step.name, "succeeded", output=encoded.text, attempts=attempt)
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
        self._record(info.step_seq, step.name, "failed", error=error, attempts=info.attempt)
        raise StepFailedError(step.name, error) from None

    async def _invoke(
        self, step: StepDef, info: StepInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        token = _current_step.set(info)
        # The step body is user code: it must not see the workflow context (a step called
        # from inside a step simply runs).
        ctx_token = _current_context.set(None)
        started = time.monotonic()
        succeeded = False
        cancelled = False
        try:
            with tracing.span(
                f"shardflow.step {step.name}",
                attributes={
                    tracing.WORKFLOW_ID: info.workflow_id,
                    "shardflow.step_seq": info.step_seq,
                    "shardflow.attempt": info.attempt,
                },
            ):
                result = await self._call(step, args, kwargs)
            succeeded = True
            return result
        except asyncio.CancelledError:
            cancelled = True  # the run stopped (worker stop, lost lease): not the step's doing
            raise
        finally:
            _current_context.reset(ctx_token)
            _current_step.reset(token)
            if self._on_step is not None and not cancelled:
                self._on_step(step.name, time.monotonic() - started, succeeded)

    @staticmethod
    async def _call(step: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The step body, in a thread when it is synchronous, within its timeout."""
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
            raise TimeoutError(f"step {step.name!r} ran past its {step.timeout}s timeout") from None

    def _take_seq(self) -> int:
        if self.nondeterminism is not None:
            # The code caught the mismatch and went on: nothing more runs or is recorded.
            raise self.nondeterminism
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _replayed(self, seq: int, name: str) -> StepRecord | None:
        recorded = self._recorded.get(seq)
        if recorded is not None and recorded.step_name != name:
            # Kept: the runner parks the workflow even if the code catches the error.
            self.nondeterminism = NonDeterminismError(
                f"workflow {self.workflow_id!r}: position {seq} was recorded as step "
                f"{recorded.step_name!r} but the code now calls {name!r}; in-flight workflows "
                "need code that calls the same steps in the same order (guard a change with "
                "ctx.patched())"
            )
            raise self.nondeterminism
        return recorded

    def _record(
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
            with tracing.span(
                "shardflow.complete" if finish is not None else "shardflow.checkpoint",
                attributes={
                    tracing.WORKFLOW_ID: self.workflow_id,
                    "shardflow.checkpoints": len(batch),
                    "shardflow.status": finish["status"] if finish is not None else None,
                },
            ):
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


class ChildHandle:
    """A child workflow started by ``ctx.start_child``: ``await handle.result()`` inside the
    parent waits for it durably (the parent is released until the child ends)."""

    def __init__(self, ctx: WorkflowContext, workflow_id: str, routing_key: str):
        self._ctx = ctx
        self.workflow_id = workflow_id
        self.routing_key = routing_key

    def __repr__(self) -> str:
        return f"ChildHandle({self.workflow_id!r}, routing_key={self.routing_key!r})"

    async def result(self) -> Any:
        """The child's output; ChildWorkflowFailed if it failed, was cancelled or dead."""
        return await self._ctx.child_result(self.workflow_id)


def _received(output: Any, name: str, timeout: float | None) -> Any:
    """What a wait recorded: the signal's payload, or SignalTimeout."""
    if isinstance(output, dict) and output.get("timed_out"):
        raise SignalTimeout(name, timeout or 0.0)
    return output["payload"]


def bind_context(ctx: WorkflowContext) -> contextvars.Token[WorkflowContext | None]:
    return _current_context.set(ctx)


def unbind_context(token: contextvars.Token[WorkflowContext | None]) -> None:
    _current_context.reset(token)


def utcnow() -> datetime:
    """Wall-clock UTC; only for logs and reports, never for leases or timers."""
    return datetime.now(UTC)
