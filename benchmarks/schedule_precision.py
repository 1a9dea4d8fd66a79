"""Schedule precision behind `make bench-schedules` (issue 13): how late a tick's run starts.

A fresh local cluster (--nodes), 2 worker processes, --schedules schedules ticking every
second (cron '* * * * * *', policy `all`) for --seconds. Then every schedule is paused and
its runs read back: each second must have exactly one run per schedule (no gap, no double),
and the report gives tick -> start (the run's row committed; created_at from the database
clock), tick -> first claim and tick -> completion, p50/p99/max over every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shardflow import Client
from shardflow.bench import workloads
from shardflow.bench.common import bench_directory, percentile
from shardflow.bench.throughput import BenchSettings, _Workers
from shardflow.cluster.admin import init_cluster
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.schedules.runs import tick_of


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = bench_directory(None)
    local = LocalCluster(root / "cluster")
    workers: _Workers | None = None
    try:
        config = local.create(nodes=args.nodes, partition_count=256, schema="shardflow")
        local.config_path.write_text(config.to_toml())
        await init_cluster(config)
        workers = _Workers(local.config_path, BenchSettings(workers=2, concurrency=64), root)
        workers.start()
        prefix = f"bsched-{uuid.uuid4().hex[:6]}-"
        names = [f"{prefix}{i}" for i in range(args.schedules)]
        async with Client(config, app=workloads.app) as client, ClusterAdmin(config) as admin:
            began = datetime.now(UTC)
            for name in names:
                await client.schedules.create(
                    name, workloads.w, "* * * * * *", input=1, missed="all"
                )
            await asyncio.sleep(args.seconds)
            for name in names:
                await client.schedules.pause(name)
            ended = datetime.now(UTC)
            await asyncio.sleep(10)  # the last ticks' runs finish
            rows: list[dict[str, Any]] = []
            for node in admin.node_names:
                rows += await admin.bench(node).runs_by_prefix(prefix)
    finally:
        if workers is not None:
            workers.stop()
        local.destroy()
    per_schedule: dict[str, list[datetime]] = {}
    late, claimed, done = [], [], []
    for row in rows:
        tick = tick_of(row["workflow_id"])
        assert tick is not None
        per_schedule.setdefault(row["workflow_id"].rpartition("@")[0], []).append(tick)
        late.append(row["created"] - tick.timestamp())
        if row["claimed"] is not None:
            claimed.append(row["claimed"] - tick.timestamp())
        if row["completed"] is not None:
            done.append(row["completed"] - tick.timestamp())
    gaps = doubles = 0
    for ticks in per_schedule.values():
        ticks.sort()
        doubles += len(ticks) - len(set(ticks))
        span = int((ticks[-1] - ticks[0]).total_seconds()) + 1
        gaps += span - len(set(ticks))

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p99_ms": round(percentile(values, 0.99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
        }

    return {
        "nodes": args.nodes,
        "schedules": args.schedules,
        "seconds": round((ended - began).total_seconds(), 1),
        "runs": len(rows),
        "schedules_with_runs": len(per_schedule),
        "gaps": gaps,
        "doubles": doubles,
        "unfinished": sum(1 for r in rows if r["status"] != "succeeded"),
        "tick_to_start": stats(late),
        "tick_to_claim": stats(claimed),
        "tick_to_completion": stats(done),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--schedules", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(measure(args))
    (args.out / "schedule-precision.json").write_text(json.dumps(result, indent=2) + "\n")
    start = result["tick_to_start"]
    print(
        f"SCHEDULES {result['schedules']} x every second for {result['seconds']:.0f}s on "
        f"{result['nodes']} nodes: {result['runs']} runs, {result['gaps']} gaps, "
        f"{result['doubles']} doubles, {result['unfinished']} unfinished; tick -> start p50 "
        f"{start['p50_ms']} ms, p99 {start['p99_ms']} ms, max {start['max_ms']} ms; tick -> "
        f"completion p99 {result['tick_to_completion']['p99_ms']} ms",
        flush=True,
    )
    if result["gaps"] or result["doubles"] or result["schedules_with_runs"] != args.schedules:
        sys.exit("SCHEDULES FAILED: a tick without a run, or with two")


if __name__ == "__main__":
    main()
