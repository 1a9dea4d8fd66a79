"""``App``: the registry of workflows and steps, and the decorators that fill it.

Decorators work bare (``@app.step``) and with arguments (``@app.step(retries=3)``); their
arguments are validated once, at decoration time.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, overload

from shardflow.errors import ConfigurationError, InvalidInput, UnknownWorkflow
from shardflow.queues.queue import Period, Queue, declare_queue
from shardflow.schedules.cron import check_cron
from shardflow.schedules.policy import check_missed
from shardflow.timebounds import retention_seconds

if TYPE_CHECKING:
    from shardflow.storage.schedule_store import ScheduleSpec

WorkflowFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, kw_only=True)
class WorkflowDef:
    """A registered workflow: an ``async def f(ctx)`` or ``async def f(ctx, input)``."""

    name: str
    fn: WorkflowFn
    # The App that registered it: its workflows are claimed only by that app's workers.
    app: str
    takes_input: bool
    # The input parameter has no default: starting without an input is refused at start.
    input_required: bool = False
    timeout: float | None = None
    # How long a finished run is kept: "7d", a timedelta or "forever"; None: the cluster's
    # `retention` setting.
    retention: str | timedelta | None = None
    # The registering App's version, recorded on every workflow it starts (None: unversioned).
    app_version: str | None = None
    # @app.workflow(schedule=...): a cron expression its workers keep a schedule of.
    schedule: str | None = None
    schedule_timezone: str = "UTC"
    schedule_missed: str = "skip"
    # @app.workflow(queue=...): the queue its runs wait in for admission (None: none).
    queue: str | None = None

    def retention_seconds(self, default: float | None) -> float | None:
        """Seconds a finished run of it is kept (None: for ever); ``default`` is the
        cluster's setting."""
        if self.retention is None:
            return default
        return retention_seconds(self.retention, what=f"retention of workflow {self.name!r}")

    def check_input(self, given: bool) -> None:
        """Refuse, before anything is written, a start whose input the function cannot take.

        ``given``: the caller passed an input (JSON null counts as none).
        """
        if given and not self.takes_input:
            raise InvalidInput(
                f"workflow {self.name!r} takes no input (it is `async def f(ctx)`); start it "
                "without one, or add an input parameter to the function"
            )
        if not given and self.input_required:
            raise InvalidInput(
                f"workflow {self.name!r} needs an input (its function takes (ctx, input) with "
                "no default); pass one (--input JSON or --input-file PATH on the command line)"
            )


@dataclass(frozen=True, kw_only=True)
class StepDef:
    """A registered step. Calling it inside a workflow checkpoints its result.

    ``retries`` extra attempts follow a failure, ``backoff * 2**(attempt-1)`` seconds apart
    (capped at ``backoff_max``, with jitter), each bounded by ``timeout`` if given. Outside a
    workflow, calling it simply runs the function.
    """

    name: str
    fn: Callable[..., Any]
    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 60.0
    timeout: float | None = None
    # A transactional step gets the node's connection as its first argument and runs inside
    # the transaction that writes its checkpoint: its effect on that node happens once.
    transactional: bool = False

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed ``attempt``: exponential, capped, half jittered."""
        delay = min(self.backoff_max, self.backoff * 2.0 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from shardflow.engine.context import current_context

        ctx = current_context()
        if ctx is not None:
            return await ctx.run_step(self, args, kwargs)
        if self.transactional:
            raise ConfigurationError(
                f"transactional step {self.name!r} runs only inside a workflow, in the "
                "transaction that records it; outside one, call its function with your own "
                "connection: step.fn(conn, ...)"
            )
        if self.is_async:
            return await self.fn(*args, **kwargs)
        return await asyncio.to_thread(self.fn, *args, **kwargs)


class App:
    """A set of workflows and steps that workers run and clients start by name."""

    def __init__(self, name: str = "shardflow", *, version: str | None = None):
        if not isinstance(name, str) or not 1 <= len(name) <= 200 or "\x00" in name:
            raise ConfigurationError(f"invalid app name {name!r}: 1-200 characters, no NUL")
        if version is not None and (
            not isinstance(version, str) or not 1 <= len(version) <= 200 or "\x00" in version
        ):
            raise ConfigurationError(
                f"invalid app version {version!r}: 1-200 characters (a release, a git sha)"
            )
        # Recorded on every workflow this app starts: `shardflow list --version` shows what
        # still runs under an old deploy.
        self.version = version
        # Recorded on every workflow this app starts; workers claim only their app's workflows.
        self.name = name
        self._workflows: dict[str, WorkflowDef] = {}
        self._steps: dict[str, StepDef] = {}
        self._queues: dict[str, Queue] = {}

    @property
    def workflows(self) -> dict[str, WorkflowDef]:
        return dict(self._workflows)

    @property
    def queues(self) -> dict[str, Queue]:
        return dict(self._queues)

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        per_key: int | None = None,
        rate: tuple[int, Period] | None = None,
    ) -> Queue:
        """Declare a named queue; its workflows (``@app.workflow(queue=name)``) wait in it
        until a worker admits them under its limits, each holding per node:

        ``concurrency``: at most that many hold a slot at once (from admission until they
        end, sleeping included); ``per_key``: at most that many per ``concurrency_key`` given
        at start; ``rate=(n, period)``: at most n admissions in any ``period`` ("1m", seconds
        or a timedelta). Waiting ones are admitted smallest ``priority`` first, then oldest.
        """
        if name in self._queues:
            raise ConfigurationError(f"queue {name!r} is declared twice in app {self.name!r}")
        queue = declare_queue(
            name, app=self.name, concurrency=concurrency, per_key=per_key, rate=rate
        )
        self._queues[name] = queue
        return queue

    def get_queue(self, name: str) -> Queue:
        """The declared queue ``name``, or ConfigurationError listing the declared ones."""
        try:
            return self._queues[name]
        except KeyError:
            known = ", ".join(sorted(self._queues)) or "none"
            raise ConfigurationError(
                f"no queue named {name!r} is declared in app {self.name!r} (declared: {known}); "
                "declare it with app.queue(name, ...) before the workflows that use it"
            ) from None

    def catalog(self, default_retention: float | None) -> list[dict[str, Any]]:
        """What a worker of this app registers on every node for the SQL API: per workflow
        its input shape, timeout and retention (``default_retention``: the cluster's)."""
        return [
            {
                "app": self.name,
                "name": wf.name,
                "input": "required"
                if wf.input_required
                else ("optional" if wf.takes_input else "none"),
                "timeout_seconds": wf.timeout,
                "retention_seconds": wf.retention_seconds(default_retention),
                "queue": wf.queue,
            }
            for wf in self._workflows.values()
        ]

    def schedule_specs(
        self, default_retention: float | None, max_payload_bytes: int
    ) -> list[ScheduleSpec]:
        """The schedules this app's code declares: one per @app.workflow(schedule=...),
        named ``APP.WORKFLOW``, kept by its workers."""
        # Imported here: the schedules' client module imports this one.
        from shardflow.schedules.client import spec_for
        from shardflow.schedules.policy import DEFAULT_CATCHUP

        return [
            spec_for(
                wf,
                name=f"{self.name}.{wf.name}",
                cron=wf.schedule,
                timezone=wf.schedule_timezone,
                input=None,
                missed=wf.schedule_missed,
                catchup=DEFAULT_CATCHUP,
                default_retention=default_retention,
                source="code",
                max_payload_bytes=max_payload_bytes,
            )
            for wf in self._workflows.values()
            if wf.schedule is not None
        ]

    def get_workflow(self, name: str) -> WorkflowDef:
        """The workflow registered as ``name``, or UnknownWorkflow listing the known ones."""
        try:
            return self._workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise UnknownWorkflow(
                f"no workflow named {name!r} is registered in app {self.name!r} "
                f"(known: {known}); check the name or the --app module"
            ) from None

    def get_step(self, name: str) -> StepDef:
        """The step registered as ``name`` (a recorded compensation names its step)."""
        try:
            return self._steps[name]
        except KeyError:
            known = ", ".join(sorted(self._steps)) or "none"
            raise UnknownWorkflow(
                f"no step named {name!r} is registered in app {self.name!r} (known: {known}); "
                "a workflow recorded it as a compensation: deploy code that still has it"
            ) from None

    @overload
    def workflow(self, fn: WorkflowFn, /) -> WorkflowDef: ...

    @overload
    def workflow(
        self,
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retention: str | timedelta | None = None,
        schedule: str | None = None,
        timezone: str = "UTC",
        missed: str = "skip",
        queue: str | Queue | None = None,
    ) -> Callable[[WorkflowFn], WorkflowDef]: ...

    def workflow(
        self,
        fn: WorkflowFn | None = None,
        /,
        *,
        name: str | None = None,
        timeout: float | None = None,
        retention: str | timedelta | None = None,
        schedule: str | None = None,
        timezone: str = "UTC",
        missed: str = "skip",
        queue: str | Queue | None = None,
    ) -> WorkflowDef | Callable[[WorkflowFn], WorkflowDef]:
        """Register an ``async def`` workflow taking ``(ctx)`` or ``(ctx, input)``.

        ``timeout`` (seconds from start) fails the workflow with WorkflowTimeout when exceeded.
        ``retention`` ("1d", a timedelta, "forever"): how long a finished run is kept before
        the collector removes it; None: the cluster's ``retention`` setting.
        ``schedule`` (a cron expression, in ``timezone``): the app's workers keep a schedule
        named ``APP.WORKFLOW`` that starts it on every tick (``missed``: skip, once or all).
        ``queue`` (declared with ``app.queue``): its runs wait there for admission.
        """
        if timeout is not None and timeout <= 0:
            raise ConfigurationError("workflow timeout must be positive seconds, or None")
        retention_seconds(retention, what="workflow retention", error=ConfigurationError)
        if schedule is not None:
            try:
                check_cron(schedule, timezone)
                check_missed(missed)
            except InvalidInput as exc:
                raise ConfigurationError(str(exc)) from None
        queue_name = None
        if queue is not None:
            queue_name = self.get_queue(queue.name if isinstance(queue, Queue) else queue).name

        def register(func: WorkflowFn) -> WorkflowDef:
            if not inspect.iscoroutinefunction(func):
                raise ConfigurationError(
                    f"workflow {func.__qualname__} must be an `async def` function"
                )
            params = [
                p
                for p in inspect.signature(func).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if len(params) not in (1, 2):
                raise ConfigurationError(
                    f"workflow {func.__qualname__} must take (ctx) or (ctx, input)"
                )
            wf = WorkflowDef(
                name=self._new_name(name or func.__qualname__, self._workflows),
                fn=func,
                app=self.name,
                takes_input=len(params) == 2,
                input_required=len(params) == 2 and params[1].default is params[1].empty,
                timeout=timeout,
                retention=retention,
                app_version=self.version,
                schedule=schedule,
                schedule_timezone=timezone,
                schedule_missed=missed,
                queue=queue_name,
            )
            if schedule is not None and wf.input_required:
                raise ConfigurationError(
                    f"scheduled workflow {wf.name!r} needs an input, and a tick has none: give "
                    "its input parameter a default"
                )
            self._workflows[wf.name] = wf
            return wf

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: Callable[..., Any], /) -> StepDef: ...

    @overload
    def step(
        self,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float | None = None,
    ) -> Callable[[Callable[..., Any]], StepDef]: ...

    def step(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float | None = None,
    ) -> StepDef | Callable[[Callable[..., Any]], StepDef]:
        """Register a step (sync or async). Its JSON result is checkpointed once."""
        options = _step_options("step", retries, backoff, backoff_max, timeout)

        def register(func: Callable[..., Any]) -> StepDef:
            if not callable(func):
                raise ConfigurationError(f"step {func!r} is not callable")
            return self._add_step(func, name, options)

        return register(fn) if fn is not None else register

    @overload
    def transaction(self, fn: Callable[..., Awaitable[Any]], /) -> StepDef: ...

    @overload
    def transaction(
        self,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float | None = None,
    ) -> Callable[[Callable[..., Awaitable[Any]]], StepDef]: ...

    def transaction(
        self,
        fn: Callable[..., Awaitable[Any]] | None = None,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float | None = None,
    ) -> StepDef | Callable[[Callable[..., Awaitable[Any]]], StepDef]:
        """Register a transactional step: ``async def f(conn, *args)``.

        ``conn`` is a psycopg ``AsyncConnection`` to the workflow's node, inside the transaction
        that also writes the step's checkpoint and checks the lease and the partition fence.
        Its writes commit together with the checkpoint or not at all, so they happen exactly
        once. Keep the body short (it holds row locks) and touch only data on that node.
        Do not commit or roll back yourself; raise to roll back (and retry, if ``retries``).
        """
        options = _step_options("transaction", retries, backoff, backoff_max, timeout)

        def register(func: Callable[..., Awaitable[Any]]) -> StepDef:
            if not inspect.iscoroutinefunction(func):
                raise ConfigurationError(
                    f"transactional step {getattr(func, '__qualname__', func)!r} must be an "
                    "`async def f(conn, ...)` function (it uses psycopg's AsyncConnection)"
                )
            params = list(inspect.signature(func).parameters.values())
            if not params or params[0].kind not in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            ):
                raise ConfigurationError(
                    f"transactional step {func.__qualname__} must take the connection as its "
                    "first positional parameter: async def f(conn, ...)"
                )
            return self._add_step(func, name, options, transactional=True)

        return register(fn) if fn is not None else register

    def _add_step(
        self,
        func: Callable[..., Any],
        name: str | None,
        options: dict[str, Any],
        *,
        transactional: bool = False,
    ) -> StepDef:
        """Register ``func`` under its (checked, unique) name."""
        step_def = StepDef(
            name=self._new_name(name or func.__qualname__, self._steps),
            fn=func,
            transactional=transactional,
            **options,
        )
        self._steps[step_def.name] = step_def
        return step_def

    @staticmethod
    def _new_name(name: str, taken: dict[str, Any]) -> str:
        if not name or len(name) > 200 or "\x00" in name:
            raise ConfigurationError(f"invalid name {name!r}: 1-200 characters, no NUL")
        if name.startswith("shardflow."):
            raise ConfigurationError(f"name {name!r}: the 'shardflow.' prefix is reserved")
        if name in taken:
            raise ConfigurationError(
                f"{name!r} is registered twice; give one of them an explicit name="
            )
        return name


def _step_options(
    kind: str, retries: int, backoff: float, backoff_max: float, timeout: float | None
) -> dict[str, Any]:
    """The retry and timeout options of a step, checked: StepDef keyword arguments."""
    if retries < 0:
        raise ConfigurationError(f"{kind} retries must be >= 0")
    if backoff <= 0 or backoff_max < backoff:
        raise ConfigurationError(f"{kind} backoff must be > 0 and backoff_max >= backoff")
    if timeout is not None and timeout <= 0:
        raise ConfigurationError(f"{kind} timeout must be positive seconds, or None")
    return {"retries": retries, "backoff": backoff, "backoff_max": backoff_max, "timeout": timeout}
