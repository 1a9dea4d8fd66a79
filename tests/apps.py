"""Workflows used by the tests (importable by worker subprocesses as tests.apps:app)."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from shardflow import App, ChildWorkflowFailed, SignalTimeout, WorkflowContext, current_step
from tests.helpers import wait_until

app = App("tests")

# A gated step waits this long for its test to open the gate (another process: a file).
GATE_TIMEOUT = 60.0

# Step executions per (workflow_id, step) in this process: proves what replay did not re-run.
executions: Counter[tuple[str, str]] = Counter()
# Flipped by the non-determinism test to change the workflow's code between runs.
shape = {"first_step": "step_a"}


def _count(name: str) -> None:
    step = current_step()
    assert step is not None
    executions[(step.workflow_id, name)] += 1


@app.step
def add_one(n: int) -> int:
    _count("add_one")
    return n + 1


@app.workflow
async def three_steps(ctx: WorkflowContext, n: int) -> int:
    """The standard workload W: three sequential steps, each returning its input + 1."""
    return await add_one(await add_one(await add_one(n)))


@app.step(retries=3, backoff=0.05, backoff_max=0.2)
def flaky(fail_times: int) -> str:
    step = current_step()
    assert step is not None
    _count("flaky")
    if step.attempt <= fail_times:
        raise ConnectionError(f"transient failure on attempt {step.attempt}")
    return f"ok after {step.attempt} attempts"


@app.workflow
async def retrying(ctx: WorkflowContext, fail_times: int) -> str:
    return await flaky(fail_times)


@app.workflow
async def compensating(ctx: WorkflowContext, fail_times: int) -> str:
    """Catches a step that fails on every attempt and carries on."""
    try:
        return await flaky(fail_times)
    except Exception as exc:
        return f"compensated: {type(exc).__name__}"


@app.step
def record(label: str) -> str:
    _count(label)
    return label


@app.workflow
async def sleepy(ctx: WorkflowContext, seconds: float) -> dict[str, Any]:
    before = await record("before-sleep")
    started = await ctx.now()
    await ctx.sleep(seconds)
    woke = await ctx.now()
    after = await record("after-sleep")
    return {"steps": [before, after], "slept": (woke - started).total_seconds()}


@app.step
def step_a() -> str:
    return "a"


@app.step
def step_b() -> str:
    return "b"


@app.workflow
async def shape_shifter(ctx: WorkflowContext) -> str:
    first = await (step_a() if shape["first_step"] == "step_a" else step_b())
    # Long enough that the first worker of the non-determinism test stops before it is due
    # (under load it used to finish the workflow itself, with the old code).
    await ctx.sleep(3)
    return first


@app.step
def append_line(path: str, line: str) -> str:
    with open(path, "a") as fh:
        fh.write(line + "\n")
    return line


@app.step
async def wait_for_gate(marker: str, gate: str, log_path: str) -> str:
    """Announces that it runs (marker file), then blocks until the gate file exists."""
    with open(log_path, "a") as fh:
        fh.write("gate-step\n")
    Path(marker).touch()
    await wait_until(lambda: Path(gate).exists(), timeout=GATE_TIMEOUT, what=f"gate {gate}")
    return "through the gate"


@app.workflow
async def gated(ctx: WorkflowContext, paths: dict[str, str]) -> str:
    await append_line(paths["log"], "first-step")
    through = await wait_for_gate(paths["marker"], paths["gate"], paths["log"])
    await append_line(paths["log"], "last-step")
    return through


@app.step
async def hog_event_loop(seconds: float) -> str:
    """Blocks the worker's event loop (no await) for longer than the lease."""
    _count("hog")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "done"


@app.workflow
async def hog(ctx: WorkflowContext, seconds: float) -> str:
    return await hog_event_loop(seconds)


@app.step
def too_big(size: int) -> str:
    return "x" * size


@app.workflow
async def big_result(ctx: WorkflowContext, size: int) -> str:
    return await too_big(size)


@app.workflow(timeout=0.5)
async def overdue(ctx: WorkflowContext) -> str:
    await ctx.sleep(30)
    return "never"


@app.workflow
async def echo(ctx: WorkflowContext, value: Any) -> Any:
    return value


@app.workflow
async def no_input(ctx: WorkflowContext) -> str:
    return ctx.workflow_id


@app.step
def crash_unless_cured(cure_file: str) -> str:
    """Kills the worker process (like a segfault in a C extension) until the cure exists."""
    if not Path(cure_file).exists():
        os._exit(17)
    return "cured"


@app.workflow
async def poison(ctx: WorkflowContext, cure_file: str) -> str:
    return await crash_unless_cured(cure_file)


@app.step
async def external_effect(log_path: str, key: str) -> str:
    """An external side effect (a line in a shared file), at least once per step."""
    await asyncio.sleep(0.2)  # long enough for kills to land mid-step
    with open(log_path, "a") as fh:
        fh.write(key + "\n")
    return key


@app.workflow
async def effects(ctx: WorkflowContext, log_path: str) -> int:
    for i in range(3):
        step = await external_effect(log_path, f"{ctx.workflow_id}:{i}")
        assert step == f"{ctx.workflow_id}:{i}"
    return 3


# A table of the application's own, for transactional steps. No unique constraint on purpose:
# a duplicated effect would show as a second row (docs/reliability.md, check 3).
TX_EFFECTS_TABLE = """
CREATE TABLE IF NOT EXISTS public.tx_effects (
    workflow_id text NOT NULL,
    step_seq integer NOT NULL,
    amount integer NOT NULL
)
"""
# On Citus: distributed by workflow id; no key still, so REPLICA IDENTITY FULL lets Citus move
# its shards online (logical replication needs a key or a replica identity).
TX_EFFECTS_DISTRIBUTE = """
ALTER TABLE public.tx_effects REPLICA IDENTITY FULL;
SELECT create_distributed_table('public.tx_effects', 'workflow_id')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'public.tx_effects'::regclass
)
"""
TX_EFFECT_INSERT = (
    "INSERT INTO public.tx_effects (workflow_id, step_seq, amount) VALUES (%s, %s, %s)"
)
TX_EFFECT_TOTAL = "SELECT coalesce(sum(amount), 0) FROM public.tx_effects WHERE workflow_id = %s"
TX_EFFECT_ROWS = (
    "SELECT workflow_id, step_seq, count(*) AS n FROM public.tx_effects "
    "WHERE workflow_id = ANY(%s) GROUP BY workflow_id, step_seq"
)


@app.transaction
async def debit(conn: Any, amount: int) -> int:
    """Writes one effect row in the checkpoint's transaction; returns the running total."""
    step = current_step()
    assert step is not None
    await conn.execute(TX_EFFECT_INSERT, (step.workflow_id, step.step_seq, amount))
    cur = await conn.execute(TX_EFFECT_TOTAL, (step.workflow_id,))
    row = await cur.fetchone()
    return int(row[0])


@app.workflow
async def transfer(ctx: WorkflowContext, amount: int) -> list[int]:
    return [await debit(amount), await debit(amount)]


@app.transaction(retries=2, backoff=0.01, backoff_max=0.01)
async def debit_failing_first(conn: Any, amount: int) -> int:
    """Writes its effect, then fails on the first attempt: that write must roll back."""
    step = current_step()
    assert step is not None
    await conn.execute(TX_EFFECT_INSERT, (step.workflow_id, step.step_seq, amount))
    if step.attempt == 1:
        raise RuntimeError("first attempt fails after writing")
    cur = await conn.execute(TX_EFFECT_TOTAL, (step.workflow_id,))
    row = await cur.fetchone()
    return int(row[0])


@app.workflow
async def transfer_with_retry(ctx: WorkflowContext, amount: int) -> int:
    return await debit_failing_first(amount)


@app.transaction
async def debit_at_gate(conn: Any, paths: dict[str, str]) -> str:
    """Writes its effect, then waits for the test (which cancels the workflow meanwhile)."""
    step = current_step()
    assert step is not None
    await conn.execute(TX_EFFECT_INSERT, (step.workflow_id, step.step_seq, 1))
    Path(paths["marker"]).touch()
    gate = Path(paths["gate"])
    await wait_until(gate.exists, timeout=GATE_TIMEOUT, what=f"gate {gate}")
    return "written"


@app.workflow
async def transfer_at_gate(ctx: WorkflowContext, paths: dict[str, str]) -> str:
    return str(await debit_at_gate(paths))


@app.workflow
async def mixed_effects(ctx: WorkflowContext, log_path: str) -> int:
    """External effect, transactional effect, external effect: what the chaos runs count."""
    await external_effect(log_path, f"{ctx.workflow_id}:0")
    await debit(1)
    await external_effect(log_path, f"{ctx.workflow_id}:2")
    return 3


@app.step(timeout=0.2)
async def too_slow() -> str:
    await asyncio.sleep(5)  # the step's own work, cut by its timeout
    return "never"


@app.workflow
async def times_out(ctx: WorkflowContext) -> str:
    return str(await too_slow())


# -- signals and events (issue 11) ---------------------------------------------------------


@app.workflow
async def approval(ctx: WorkflowContext, timeout: float | None) -> dict[str, Any]:
    """Human in the loop: publish the stage, wait for "approve" (or time out)."""
    await ctx.set_event("stage", "waiting for approval")
    try:
        decision = await ctx.wait_for_signal("approve", timeout=timeout)
    except SignalTimeout:
        await ctx.set_event("stage", "timed out")
        return {"approved": False, "by": None}
    await ctx.set_event("stage", "approved")
    return {"approved": True, "by": decision["by"]}


@app.workflow
async def collect(ctx: WorkflowContext, count: int) -> list[Any]:
    """Receives ``count`` signals named "item", one per wait, in the order they were sent,
    publishing how many it has so far (event "received")."""
    items = []
    for _ in range(count):
        items.append(await ctx.wait_for_signal("item"))
        await ctx.set_event("received", len(items))
    return items


# -- sagas (issue 11) ------------------------------------------------------------------------


def _log(path: str, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")


@app.step
def reserve(log_path: str, thing: str) -> str:
    _log(log_path, f"reserve-{thing}")
    return thing


@app.step
async def unreserve(paths: dict[str, str], thing: str) -> str:
    """The undo step. At ``paths["gate_at"]`` it announces itself (marker file) and waits
    for the gate file before acting: a test kills its worker there."""
    if paths.get("gate_at") == thing:
        Path(paths["marker"]).touch()
        gate = Path(paths["gate"])
        await wait_until(gate.exists, timeout=GATE_TIMEOUT, what=f"gate {gate}")
    _log(paths["log"], f"unreserve-{thing}")
    return f"released {thing}"


@app.step(retries=1, backoff=0.01)
def charge_declined(amount: int) -> None:
    raise RuntimeError(f"card declined for {amount}")


@app.workflow
async def trip(ctx: WorkflowContext, paths: dict[str, str]) -> str:
    """A booking saga: two reservations with their undo steps, then a charge that fails."""
    for thing in ("flight", "hotel"):
        await reserve(paths["log"], thing)
        ctx.compensate(unreserve, paths, thing)
    await charge_declined(100)
    return "booked"


@app.workflow
async def bad_compensation(ctx: WorkflowContext, kind: str) -> str:
    if kind == "not a step":
        ctx.compensate(len, "x")  # type: ignore[arg-type]
    else:
        ctx.compensate(unreserve, {"not json": {1, 2}}, "x")  # type: ignore[dict-item]
    return "registered"


# -- child workflows (issue 11) --------------------------------------------------------------


@app.workflow
async def leaf(ctx: WorkflowContext, n: int) -> int:
    return await add_one(n)


@app.workflow
async def fan_out(ctx: WorkflowContext, spec: dict[str, Any]) -> int:
    """Starts ``count`` leaf children (each with its own routing key when ``spread``: they
    land all over the cluster) and sums their results."""
    children = [
        await ctx.start_child(
            leaf, i, routing_key=f"{ctx.workflow_id}-key-{i}" if spec["spread"] else None
        )
        for i in range(spec["count"])
    ]
    return sum(await asyncio.gather(*(child.result() for child in children)))


@app.workflow
async def always_fails(ctx: WorkflowContext) -> None:
    raise ValueError("the child gives up")


@app.workflow
async def parent_of_failure(ctx: WorkflowContext) -> str:
    child = await ctx.start_child(always_fails, routing_key=f"{ctx.workflow_id}-elsewhere")
    try:
        await child.result()
    except ChildWorkflowFailed as failed:
        return f"child {failed.status}: {failed.error['type']}"
    return "child succeeded"


@app.workflow
async def waiting_parent(ctx: WorkflowContext, count: int) -> list[Any]:
    """Children that wait for a signal that never comes, spread over the cluster."""
    children = [
        await ctx.start_child(collect, 1, routing_key=f"{ctx.workflow_id}-key-{i}")
        for i in range(count)
    ]
    return list(await asyncio.gather(*(child.result() for child in children)))


@app.workflow
async def trip_waiting_for_payment(ctx: WorkflowContext, paths: dict[str, str]) -> str:
    """Reserves with undo steps, then waits for a payment signal: a test cancels it there."""
    for thing in ("flight", "hotel"):
        await reserve(paths["log"], thing)
        ctx.compensate(unreserve, paths, thing)
    await ctx.wait_for_signal("paid")
    return "booked"


@app.workflow
async def race(ctx: WorkflowContext, spec: dict[str, Any]) -> Any:
    """A child that waits for a signal raced against a quick one (when ``quick``) or alone,
    with a timeout: the first to end wins."""
    racers = [await ctx.start_child(collect, 1, routing_key=f"{ctx.workflow_id}-slow")]
    if spec["quick"]:
        racers.append(await ctx.start_child(leaf, 41, routing_key=f"{ctx.workflow_id}-quick"))
    winner = await ctx.first_to_end(racers, timeout=spec["timeout"])
    if winner is None:
        return "timed out"
    return {"winner": racers.index(winner), "result": await winner.result()}


@app.step
def metered_step(fail: bool) -> str:
    """Used only by the metrics test, whose counters then count nothing else."""
    if fail:
        raise ValueError("metered failure")
    return "ok"


@app.workflow
async def metered(ctx: WorkflowContext, fail: bool) -> str:
    return await metered_step(fail)


# -- flow control (issue 13) -----------------------------------------------------------------

# An app of its own (tests.apps:flow_app): only its workers look at queues. Per node: at most
# 2 hold a slot at once; at most 1 per concurrency key; 1 at a time in priority order; at
# most 3 admissions per second.
flow_app = App("tests-flow")
flow_app.queue("limited", concurrency=2)
flow_app.queue("keyed", per_key=1)
flow_app.queue("ranked", concurrency=1)
flow_app.queue("paced", rate=(3, "1s"))


@flow_app.step
async def occupy(log_path: str, seconds: float) -> str:
    """Holds its slot for ``seconds`` (the work a limit protects), logging when it ran and in
    which process: the tests rebuild every run's interval from the log."""
    step = current_step()
    assert step is not None
    _log(log_path, f"start {step.workflow_id} {os.getpid()} {time.time()!r}")
    await asyncio.sleep(seconds)
    _log(log_path, f"end {step.workflow_id} {os.getpid()} {time.time()!r}")
    return step.workflow_id


@flow_app.workflow(queue="limited")
async def limited_work(ctx: WorkflowContext, spec: dict[str, Any]) -> str:
    return await occupy(spec["log"], spec["seconds"])


@flow_app.workflow(queue="keyed")
async def keyed_work(ctx: WorkflowContext, spec: dict[str, Any]) -> str:
    return await occupy(spec["log"], spec["seconds"])


@flow_app.workflow(queue="ranked")
async def ranked_work(ctx: WorkflowContext, spec: dict[str, Any]) -> str:
    """Waits for signal "go" first when told to: a waiting workflow keeps its slot."""
    if spec.get("hold"):
        await ctx.wait_for_signal("go", timeout=60)
    _log(spec["log"], spec["label"])
    return str(spec["label"])


@flow_app.workflow(queue="paced", timeout=30)
async def paced_work(ctx: WorkflowContext) -> str:
    return ctx.workflow_id
