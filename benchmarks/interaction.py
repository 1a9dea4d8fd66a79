"""Signals and child workflows, measured (issue 11): `make bench-interaction`.

On a fresh local cluster of plain nodes (3 by default) with 2 worker processes:

- signal -> resume: workflows wait for the signal ``go`` (released, no slot held); they are
  signalled one at a time, ``--spacing`` apart; for each, the time from the signal's arrival
  on the node to the checkpoint of the wait that received it (both the node's clock). Idle,
  then again while an open-loop load of workload W runs at ``--load-rate`` per second;
- relay: one parent starts ``--children`` children, each with its own routing key (spread
  over every node: each start goes through the outbox and the relay); children started per
  second (first to last start), and the parent's start-to-finish time.

``--runs`` repetitions on fresh clusters; medians. JSON in --out/interaction.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from shardflow import Client
from shardflow.bench import workloads
from shardflow.bench.common import bench_directory, percentile
from shardflow.cluster.admin import init_cluster
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.storage.bench_store import BenchStore

WORKER_APP = "shardflow.bench.workloads:app"


async def _until(check: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def _signal_latencies(
    client: Client, stores: list[BenchStore], prefix: str, count: int, spacing: float
) -> dict[str, float]:
    ids = [f"{prefix}{i}" for i in range(count)]
    await client.start_many(workloads.waiter, [None] * count, workflow_ids=ids)

    async def all_waiting() -> bool:
        return sum([await s.waiting(prefix) for s in stores]) == count

    await _until(all_waiting, timeout=120, what="the waiters to wait")
    for i, wf_id in enumerate(ids):
        await client.signal(wf_id, "go", i)
        await asyncio.sleep(spacing)
    await asyncio.gather(*(client.result(i, timeout=120) for i in ids))
    seconds = [x for s in stores for x in await s.signal_resume_seconds(prefix)]
    ms = [x * 1000 for x in seconds]
    return {
        "signals": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }


async def _open_loop(client: Client, prefix: str, rate: float, stop: asyncio.Event) -> int:
    started = 0
    tasks: set[asyncio.Task[Any]] = set()
    begin = time.monotonic()
    while not stop.is_set():
        due = begin + started / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        task = asyncio.create_task(
            client.start(workloads.w, started, workflow_id=f"{prefix}{started}")
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        started += 1
    await asyncio.gather(*tasks, return_exceptions=True)
    return started


async def _relay(client: Client, stores: list[BenchStore], children: int) -> dict[str, float]:
    parent_id = f"parent-{uuid.uuid4().hex[:8]}"
    began = time.monotonic()
    await client.start(workloads.parent, children, workflow_id=parent_id)
    total = await client.result(parent_id, timeout=600)
    elapsed = time.monotonic() - began
    assert total == sum(range(1, children + 1)), total
    rows = [await s.children(parent_id) for s in stores]
    count = int(sum(r["children"] for r in rows))
    first = min(r["first_start"] for r in rows if r["children"])
    last = max(r["last_start"] for r in rows if r["children"])
    return {
        "children": count,
        "children_started_per_second": round(count / max(last - first, 1e-6), 1),
        "parent_seconds": round(elapsed, 2),
        "nodes_with_children": sum(1 for r in rows if r["children"]),
    }


def _start_workers(config_path: Path, count: int, root: Path) -> list[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "shardflow", "--config", str(config_path)]
    argv += ["worker", "--app", WORKER_APP, "--concurrency", "64"]
    processes = []
    for i in range(count):
        log = (root / f"worker{i}.log").open("wb")
        processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
    return processes


async def one_run(args: argparse.Namespace) -> dict[str, Any]:
    root = bench_directory(None)
    local = LocalCluster(root / "cluster")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        config = local.create(nodes=args.nodes, partition_count=256, schema="shardflow")
        local.config_path.write_text(config.to_toml())
        await init_cluster(config)
        processes = _start_workers(local.config_path, args.workers, root)
        run = uuid.uuid4().hex[:6]
        async with Client(config, app=workloads.app) as client, ClusterAdmin(config) as admin:
            stores = [admin.bench(node.name) for node in config.nodes]
            await client.start(workloads.w, 0, workflow_id=f"warm-{run}")
            await client.result(f"warm-{run}", timeout=60)
            idle = await _signal_latencies(
                client, stores, f"idle-{run}-", args.signals, args.spacing
            )
            stop = asyncio.Event()
            load = asyncio.create_task(_open_loop(client, f"load-{run}-", args.load_rate, stop))
            loaded = await _signal_latencies(
                client, stores, f"busy-{run}-", args.signals, args.spacing
            )
            stop.set()
            load_started = await load
            relay = await _relay(client, stores, args.children)
        return {
            "signal_idle": idle,
            "signal_under_load": {
                **loaded,
                "load_rate": args.load_rate,
                "load_started": load_started,
            },
            "relay": relay,
        }
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        with contextlib.suppress(Exception):
            local.destroy()


def _median(runs: list[dict[str, Any]], section: str, key: str) -> float:
    return float(statistics.median(r[section][key] for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--signals", type=int, default=300)
    parser.add_argument("--spacing", type=float, default=0.01, help="seconds between signals")
    parser.add_argument("--load-rate", type=float, default=500.0, help="W per second")
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [asyncio.run(one_run(args)) for _ in range(args.runs)]
    summary = {
        "signal_idle_p50_ms": _median(runs, "signal_idle", "p50_ms"),
        "signal_idle_p99_ms": _median(runs, "signal_idle", "p99_ms"),
        "signal_under_load_p50_ms": _median(runs, "signal_under_load", "p50_ms"),
        "signal_under_load_p99_ms": _median(runs, "signal_under_load", "p99_ms"),
        "relay_children_per_second": _median(runs, "relay", "children_started_per_second"),
        "parent_seconds": _median(runs, "relay", "parent_seconds"),
    }
    (args.out / "interaction.json").write_text(
        json.dumps({"summary": summary, "runs": runs}, indent=2)
    )
    for key, value in summary.items():
        print(f"INTERACTION {key:28s} {value}")


if __name__ == "__main__":
    main()
