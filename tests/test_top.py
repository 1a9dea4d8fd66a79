"""`shardflow top` (issue 12): frames from real cluster status, both backends, and the rate
columns from two snapshots."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from shardflow import App, Client, Worker, WorkflowContext, WorkflowFailed
from shardflow.cli.top_view import Snapshot, clean, render, rows
from shardflow.cluster.admin import ClusterStatus, NodeStatus, cluster_status
from shardflow.config import ClusterConfig
from shardflow.storage.records import QueueDepth
from tests.helpers import REPO, run

top_app = App("top-test")


@top_app.step
def explode(message: str) -> None:
    raise RuntimeError(message)


@top_app.workflow
async def doomed(ctx: WorkflowContext, message: str) -> None:
    await explode(message)


@top_app.workflow
async def idle(ctx: WorkflowContext) -> None:
    return None


def _node(name: str, *, succeeded: int, failed: int, runnable: int = 0) -> NodeStatus:
    return NodeStatus(
        name=name,
        address="127.0.0.1:5432",
        reachable=True,
        partitions_owned=8,
        workflows={"succeeded": succeeded, "failed": failed, "running": 2},
        workers={"app": 1},
        queue=QueueDepth(runnable=runnable, waiting=3, oldest_seconds=75.0 if runnable else 0),
    )


def test_rates_come_from_two_snapshots() -> None:
    status = ClusterStatus(
        placement_version=1,
        nodes=[_node("a", succeeded=100, failed=1), _node("b", succeeded=50, failed=0)],
        partitions_to_move=0,
        stalled_after_seconds=300,
    )
    before = Snapshot(status, taken=10.0)
    later = replace(
        status,
        nodes=[
            _node("a", succeeded=120, failed=3, runnable=40),
            NodeStatus(name="b", address="x", reachable=False, error="refused; start it"),
        ],
    )
    now = Snapshot(later, taken=12.0)
    by_node = {row[0]: row for row in rows(now, before)}
    # a: 22 more ended (20 + 2) in 2 s, 2 more failed.
    assert by_node["a"][7] == "11.0" and by_node["a"][8] == "1.0"
    assert by_node["a"][3] == "40" and by_node["a"][4] == "1.2m"
    assert by_node["b"][1] == "NO" and "refused" in by_node["b"][3]
    assert by_node["total"][3] == "40" and by_node["total"][7] == "11.0"
    assert clean("evil\x1b]0;owned\x07id\nnext") == "evil?]0;owned?id?next"
    # The first frame has no rate yet.
    assert rows(before, None)[0][7] == "-"
    frame = render(now, before, interval=2)
    assert frame[0].startswith("shardflow top: plain cluster, placement v1, 2 nodes")


@pytest.mark.timeout(120)
def test_top_shows_queues_and_the_newest_failure(config: ClusterConfig, config_file: Path) -> None:
    marker = f"boom-{uuid.uuid4().hex[:8]}"
    parked = [f"top-idle-{uuid.uuid4().hex[:10]}" for _ in range(5)]

    async def prepare() -> None:
        async with Client(config, app=top_app) as client, Worker(top_app, config):
            handle = await client.start(doomed, marker)
            with pytest.raises(WorkflowFailed):
                await handle.result(timeout=30)
        async with Client(config, app=top_app) as client:
            for wf_id in parked:  # no worker runs them now: they wait in the queue
                await client.start(idle, workflow_id=wf_id)

    async def clean_up() -> None:
        async with Client(config, app=top_app) as client:
            for wf_id in parked:
                await client.cancel(wf_id)

    run(prepare())
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shardflow", "--config", str(config_file), "top"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "\x1b[" not in out  # not a terminal: plain text, one frame
        header, *table = out.splitlines()[1:]
        assert header.split()[:5] == ["node", "up", "parts", "runnable", "oldest"]
        status = run(cluster_status(config))
        total = next(line for line in table if line.startswith("total"))
        runnable = int(total.split()[1].replace(",", ""))
        assert runnable >= len(parked)
        assert sum(n.queue.runnable for n in status.nodes if n.queue) >= len(parked)
        assert marker in out and "RuntimeError" in out
    finally:
        run(clean_up())
