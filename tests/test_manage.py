"""Retry and fork (issue 13): a failed workflow runs again from its failed step, replaying what
succeeded before it; a fork replays the first N checkpoints of another workflow into a new
one. Both audited, both backends.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shardflow import (
    App,
    Client,
    InvalidInput,
    NotRetryable,
    Worker,
    WorkflowConflict,
    WorkflowContext,
    WorkflowFailed,
    WorkflowNotFound,
)
from shardflow.cli import cli
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig
from tests.helpers import run

manage_app = App("manage-test")
# How many times each step body ran, per workflow: replayed steps do not run. (Tests compare
# counts before and after: a lease that expires under load runs a step again, at least once.)
RAN: Counter[tuple[str, str]] = Counter()


@manage_app.step
def charge(order: str) -> str:
    RAN[order, "charge"] += 1
    return f"charged {order}"


@manage_app.step
def ship(order: str, cure: str) -> str:
    RAN[order, "ship"] += 1
    if not Path(cure).exists():
        raise RuntimeError("the warehouse is closed")
    return f"shipped {order}"


@manage_app.workflow
async def order(ctx: WorkflowContext, args: dict[str, str]) -> list[str]:
    charged = await charge(args["order"])
    await ctx.set_event("stage", "charged")
    return [charged, await ship(args["order"], args["cure"])]


@manage_app.workflow
async def picky(ctx: WorkflowContext, args: dict[str, str]) -> str:
    """Its own code raises (no step fails) until the cure exists."""
    charged = await charge(args["order"])
    if not Path(args["cure"]).exists():
        raise ValueError("not today")
    return charged


@manage_app.step
def refund(order: str) -> str:
    RAN[order, "refund"] += 1
    return f"refunded {order}"


@manage_app.workflow
async def saga(ctx: WorkflowContext, args: dict[str, str]) -> str:
    charged = await charge(args["order"])
    ctx.compensate(refund, args["order"])
    await ship(args["order"], args["cure"])
    return charged


def _args(tmp_path: Path, label: str) -> dict[str, str]:
    name = f"{label}-{uuid.uuid4().hex[:8]}"
    return {"order": name, "cure": str(tmp_path / f"{name}.cure")}


async def _failed(client: Client, wf_id: str) -> None:
    with pytest.raises(WorkflowFailed):
        await client.result(wf_id, timeout=30)


async def _audited(config: ClusterConfig, action: str, target: str) -> dict[str, Any]:
    async with ClusterAdmin(config) as admin:
        rows = await admin.audit_log(limit=500)
    return next(r for r in rows if r["action"] == action and r["target"] == target)


def test_retry_runs_again_from_the_failed_step(config: ClusterConfig, tmp_path: Path) -> None:
    args = _args(tmp_path, "retry")
    wf_id = args["order"]

    async def go() -> None:
        async with Client(config, app=manage_app) as client, Worker(manage_app, config):
            await client.start(order, args, workflow_id=wf_id)
            await _failed(client, wf_id)
            assert RAN[wf_id, "charge"] == 1 and RAN[wf_id, "ship"] == 1
            Path(args["cure"]).touch()
            point = await client.retry(wf_id)
            # charge (0) and the event (1) are kept; the failed ship (2) runs again.
            assert (point.step_seq, point.dropped) == (2, 1)
            assert await client.result(wf_id, timeout=30) == [
                f"charged {wf_id}",
                f"shipped {wf_id}",
            ]
            assert RAN[wf_id, "charge"] == 1 and RAN[wf_id, "ship"] == 2
            assert await client.events(wf_id) == {"stage": "charged"}
            with pytest.raises(NotRetryable, match="only a failed workflow"):
                await client.retry(wf_id)
            with pytest.raises(WorkflowNotFound):
                await client.retry(f"{wf_id}-nobody")
        row = await _audited(config, "retry", wf_id)
        assert row["arguments"]["from_step"] == 2

    run(go())


def test_retry_after_the_workflow_code_raised_reruns_only_the_code(
    config: ClusterConfig, tmp_path: Path
) -> None:
    args = _args(tmp_path, "picky")
    wf_id = args["order"]

    async def go() -> None:
        async with Client(config, app=manage_app) as client, Worker(manage_app, config):
            await client.start(picky, args, workflow_id=wf_id)
            await _failed(client, wf_id)
            charged = RAN[wf_id, "charge"]
            Path(args["cure"]).touch()
            point = await client.retry(wf_id)
            assert (point.step_seq, point.dropped) == (1, 0)
            assert await client.result(wf_id, timeout=30) == f"charged {wf_id}"
            assert RAN[wf_id, "charge"] == charged

    run(go())


def test_retry_refuses_a_saga_whose_undo_ran(config: ClusterConfig, tmp_path: Path) -> None:
    args = _args(tmp_path, "saga")
    wf_id = args["order"]

    async def go() -> None:
        async with Client(config, app=manage_app) as client, Worker(manage_app, config):
            await client.start(saga, args, workflow_id=wf_id)
            await _failed(client, wf_id)
            assert RAN[wf_id, "refund"] >= 1
            before = await client.steps(wf_id)
            with pytest.raises(NotRetryable, match="fork it from step 1"):
                await client.retry(wf_id)
            assert await client.steps(wf_id) == before  # nothing changed
            assert (await client.get(wf_id)).status == "failed"

    run(go())


def test_fork_replays_the_first_checkpoints_into_a_new_workflow(
    config: ClusterConfig, tmp_path: Path
) -> None:
    args = _args(tmp_path, "fork")
    wf_id = args["order"]
    Path(args["cure"]).touch()

    async def go() -> None:
        async with Client(config, app=manage_app) as client, Worker(manage_app, config):
            await client.start(order, args, workflow_id=wf_id)
            assert await client.result(wf_id, timeout=30) == [
                f"charged {wf_id}",
                f"shipped {wf_id}",
            ]
            charged, shipped = RAN[wf_id, "charge"], RAN[wf_id, "ship"]
            # From step 1: the charge is replayed, the event and the shipping run again.
            again = await client.fork(wf_id, from_step=1)
            assert again.workflow_id.startswith(f"{wf_id}-fork-")
            assert await again.result(timeout=30) == [f"charged {wf_id}", f"shipped {wf_id}"]
            assert RAN[wf_id, "charge"] == charged and RAN[wf_id, "ship"] > shipped
            # Everything replayed: nothing runs, and the copied event is there.
            shipped = RAN[wf_id, "ship"]
            whole = await client.fork(wf_id, from_step=3, new_workflow_id=f"{wf_id}-whole")
            assert await whole.result(timeout=30) == [f"charged {wf_id}", f"shipped {wf_id}"]
            assert RAN[wf_id, "ship"] == shipped
            assert await client.events(whole.workflow_id) == {"stage": "charged"}
            assert [s.step_name for s in await client.steps(whole.workflow_id)] == [
                s.step_name for s in await client.steps(wf_id)
            ]
            with pytest.raises(WorkflowConflict, match="choose another"):
                await client.fork(wf_id, from_step=0, new_workflow_id=f"{wf_id}-whole")
            with pytest.raises(InvalidInput, match="fewer than from_step=4"):
                await client.fork(wf_id, from_step=4)
            with pytest.raises(InvalidInput, match="from_step"):
                await client.fork(wf_id, from_step=-1)
            assert (await client.get(wf_id)).status == "succeeded"  # the source is untouched
        row = await _audited(config, "fork", whole.workflow_id)
        assert row["arguments"]["source"] == wf_id and row["arguments"]["from_step"] == 3

    run(go())


def test_cli_retry_and_fork(config: ClusterConfig, config_file: Path, tmp_path: Path) -> None:
    args = _args(tmp_path, "cli")
    wf_id = args["order"]

    async def fail_then_cure() -> None:
        async with Client(config, app=manage_app) as client, Worker(manage_app, config):
            await client.start(order, args, workflow_id=wf_id)
            await _failed(client, wf_id)
        Path(args["cure"]).touch()

    run(fail_then_cure())
    base = ["--config", str(config_file)]
    done = CliRunner().invoke(cli, [*base, "retry", wf_id])
    assert done.exit_code == 0, done.output
    assert "retrying from step 2 (1 checkpoints dropped)" in done.output
    again = CliRunner().invoke(cli, [*base, "retry", wf_id])
    assert again.exit_code != 0 and "NotRetryable" in again.output
    forked = CliRunner().invoke(
        cli, [*base, "fork", wf_id, "--from-step", "1", "--id", f"{wf_id}-f"]
    )
    assert forked.exit_code == 0, forked.output
    assert forked.output.strip() == f"{wf_id}-f"

    async def finish() -> None:
        async with Client(config, app=manage_app) as client, Worker(manage_app, config):
            for target in (wf_id, f"{wf_id}-f"):
                assert await client.result(target, timeout=30) == [
                    f"charged {wf_id}",
                    f"shipped {wf_id}",
                ]

    run(finish())
