"""The benchmark harness works end to end on a tiny run (numbers come from `make bench`)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shardflow import App, Client, Worker, WorkflowContext
from shardflow.bench.harvest import RunHarvest
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.retention import collect_garbage
from shardflow.config import ClusterConfig
from shardflow.errors import WorkflowNotFound
from tests.helpers import REPO, run, wait_until


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardflow", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


@pytest.mark.timeout(180)
def test_bench_run_reports_a_closed_loop_run(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    done = bench("run", "w", "--count", "60", "--workers", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    [result] = json.loads(out.read_text())
    assert result["workflows"] == 60 and result["failed"] == 0
    assert result["workflows_per_second"] > 0
    assert 0 < result["commits_per_workflow"] < 10
    assert result["worker_rss_mb_max"] > 0
    assert sum(result["per_node"].values()) == 60
    assert result["pickup_tail"]["workflows"] == 1  # the slowest 1% of 60
    assert "median of 1 run(s)" in done.stdout
    work = result["maintenance"]
    assert work["wal_mb"] > 0 and work["checkpoints_requested"] >= 0
    if importlib.util.find_spec("matplotlib") is not None:
        png = tmp_path / "plot.png"
        plotted = bench("plot", str(out), "--out", str(png))
        assert plotted.returncode == 0, plotted.stderr[-2000:]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(180)
def test_bench_start_many_counts_what_it_stored() -> None:
    done = bench("start-many", "--nodes", "2", "--count", "500", "--chunk", "200")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["workflows"] == 500
    assert set(result["per_node"]) == {"node1", "node2"}


def test_bench_refuses_bad_settings() -> None:
    done = bench("run", "nonsense")
    assert done.returncode != 0 and "nonsense" in done.stderr
    done = bench("run", "w", "--rate", "-5")
    assert done.returncode != 0 and "--rate" in done.stderr


def test_pickup_tail_tells_a_starved_partition_from_a_stall() -> None:
    from shardflow.bench.tail import pickup_tail
    from shardflow.storage.bench_store import RunTiming

    def run(slow: Callable[[int, int], bool]) -> dict[str, Any]:
        rows = []
        for second in range(600):
            for partition in range(10):
                pickup = 5.0 if slow(second, partition) else 0.01
                rows.append(RunTiming(partition, second, second + pickup, second + pickup))
        return pickup_tail(rows)

    starved = run(lambda second, partition: partition == 7 and second % 10 == 0)
    assert starved["partitions"] == 1 and starved["top_partition_share"] == 1.0
    assert starved["windows"] == starved["windows_in_run"] == 60

    stalled = run(lambda second, partition: 100 <= second < 106)
    assert stalled["partitions"] == 10 and stalled["windows"] == 1
    assert stalled["top_window_share"] == 1.0
    assert stalled["worst_windows"] == [[100.0, 1.0]]


def test_checkpoint_lines_are_placed_on_the_run_timeline(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from shardflow.bench.maintenance import checkpoint_starts

    log = tmp_path / "postgres.log"
    log.write_text(
        "2026-12-06 05:40:01.500 UTC [42] @ LOG:  checkpoint starting: wal\n"
        "2026-12-06 05:40:09.000 UTC [42] @ LOG:  checkpoint complete: wrote 10 buffers\n"
        "2026-12-06 05:39:00.000 UTC [42] @ LOG:  checkpoint starting: time\n"
        "2026-12-06 05:41:00.000 UTC [42] @ LOG:  checkpoint starting: time\n"
    )
    since = datetime(2026, 12, 6, 5, 40, 0, tzinfo=UTC).timestamp()
    assert checkpoint_starts([log, tmp_path / "missing.log"], since) == [
        [1.5, "wal"],
        [60.0, "time"],
    ]


harvest_app = App("harvest-test")


@harvest_app.workflow(retention="1s")
async def brief(ctx: WorkflowContext, n: int) -> int:
    return n


def test_harvest_keeps_the_timings_of_removed_workflows(config: ClusterConfig) -> None:
    """A run with a short retention reads its workflows while they exist: one removed after a
    look still counts, and a look that sees a row again does not count it twice."""
    quiet = config.replace(worker=dataclasses.replace(config.worker, gc_seconds=3600))
    prefix = f"hv{uuid.uuid4().hex[:8]}-"
    ids = [f"{prefix}{i}" for i in range(12)]

    async def go() -> None:
        async with (
            Client(quiet, app=harvest_app) as client,
            Worker(harvest_app, quiet),
            ClusterAdmin(quiet) as admin,
        ):
            harvest = RunHarvest([admin.bench(n.name) for n in quiet.nodes], prefix, len(ids))
            for half in (ids[:6], ids[6:]):
                for handle in await client.start_many(brief, [0] * len(half), workflow_ids=half):
                    await handle.result(timeout=30)
                await harvest.look()
                await harvest.look()  # the overlap reads the same rows again

                async def gone(half: list[str] = half) -> bool:
                    await collect_garbage(quiet)
                    for wf_id in half:
                        with contextlib.suppress(WorkflowNotFound):
                            await client.get(wf_id)
                            return False
                    return True

                await wait_until(gone, what="the collector removing the finished half")
            assert harvest.ended == 12 and harvest.failed == 0
            timings = harvest.succeeded()
            assert len(timings) == 12 and sum(harvest.per_node.values()) == 12
            assert all(t.created <= t.claimed <= t.completed for t in timings)

    run(go())
