"""The benchmark workloads (``shardflow bench``), importable by worker processes as
``shardflow.bench.workloads:app``.

- **w**: three sequential steps, each returning its input + 1 (ISSUE 5's standard workload);
- **fanout**: ten steps started at once with ``asyncio.gather``, then one that sums them;
- **sleepy**: a step, a durable sleep of ``SLEEP_SECONDS``, a step (timers, release, re-claim);
- **waiter**: waits for the signal ``go`` and returns its payload (``benchmarks/interaction.py``);
- **parent**: starts ``n`` **leaf** children, each with its own routing key (all over the
  cluster, through the outbox and the relay), and sums their results;
- **wq**: W in a queue without limits (``shardflow.bench.workloads:queued_app``, an app of
  its own so the others' workers run no admissions): what admission costs next to W.
"""

from __future__ import annotations

import asyncio

from shardflow.engine.app import App
from shardflow.engine.context import WorkflowContext

app = App("shardflow-bench")

FANOUT = 10
SLEEP_SECONDS = 0.5


@app.step
async def plus_one(n: int) -> int:
    return n + 1


@app.step
async def total(values: list[int]) -> int:
    return sum(values)


@app.workflow
async def w(ctx: WorkflowContext, n: int) -> int:
    """Workload W: three sequential steps, each returning its input + 1."""
    return int(await plus_one(await plus_one(await plus_one(n))))


@app.workflow
async def fanout(ctx: WorkflowContext, n: int) -> int:
    branches = await asyncio.gather(*(plus_one(n + i) for i in range(FANOUT)))
    return int(await total(list(branches)))


@app.workflow
async def sleepy(ctx: WorkflowContext, n: int) -> int:
    n = await plus_one(n)
    await ctx.sleep(SLEEP_SECONDS)
    return int(await plus_one(n))


@app.workflow
async def waiter(ctx: WorkflowContext) -> int:
    return int(await ctx.wait_for_signal("go"))


@app.workflow
async def leaf(ctx: WorkflowContext, n: int) -> int:
    return int(await plus_one(n))


@app.workflow
async def parent(ctx: WorkflowContext, n: int) -> int:
    # Started together: each start is its own transaction (the parent's checkpoint and an
    # outbox row), and they share the node's connections.
    children = await asyncio.gather(
        *(ctx.start_child(leaf, i, routing_key=f"{ctx.workflow_id}-{i}") for i in range(n))
    )
    return sum(await asyncio.gather(*(child.result() for child in children)))


queued_app = App("shardflow-bench-queued")
queued_app.queue("bench")


@queued_app.step(name="plus_one")
async def queued_plus_one(n: int) -> int:
    return n + 1


@queued_app.workflow(name="wq", queue="bench")
async def wq(ctx: WorkflowContext, n: int) -> int:
    """W, admitted from a queue."""
    return int(await queued_plus_one(await queued_plus_one(await queued_plus_one(n))))


WORKLOADS = {"w": w, "fanout": fanout, "sleepy": sleepy, "wq": wq}
# Checkpoints each workload writes (a sleep is one).
CHECKPOINTS = {"w": 3, "fanout": FANOUT + 1, "sleepy": 3, "wq": 3}
# The app a workload's workers run (default: ``app``).
WORKER_APPS = {"wq": "shardflow.bench.workloads:queued_app"}
