"""The retention soak behind `make soak-retention` (issue 13): steady open-loop load on a fresh
one-node cluster whose finished workflows are kept --retention seconds, 2 worker processes
collecting every --gc-seconds; the size of shardflow's tables is sampled every --every
seconds. With the collector keeping up, the size stops growing once the first workflows pass
their retention: the soak passes when the mean size of the last quarter is at most 1.25x
the mean of the second quarter (the plateau), and every workflow ended.

Writes JSON (the curve) and, with matplotlib (the bench extra), a PNG of it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from shardflow import Client
from shardflow.bench import workloads
from shardflow.bench.common import bench_directory
from shardflow.bench.throughput import BenchSettings, _submit_open, _Workers
from shardflow.cluster.admin import init_cluster
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin

GROWTH_LIMIT = 1.25


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    root = bench_directory(None)
    local = LocalCluster(root / "cluster")
    workers: _Workers | None = None
    try:
        config = local.create(nodes=1, partition_count=256, schema="shardflow")
        config = config.replace(
            retention=f"{int(args.retention)}s",
            worker=dataclasses.replace(config.worker, gc_seconds=args.gc_seconds),
        )
        local.config_path.write_text(config.to_toml())  # the workers read the retention
        await init_cluster(config)
        workers = _Workers(local.config_path, BenchSettings(workers=2, concurrency=64), root)
        workers.start()
        samples: list[dict[str, Any]] = []
        prefix = f"r{uuid.uuid4().hex[:8]}-"
        async with Client(config, app=workloads.app) as client, ClusterAdmin(config) as admin:
            store = admin.bench(config.nodes[0].name)
            began = time.monotonic()

            async def sample() -> None:
                sizes = await store.table_sizes()
                done, _, total = await store.progress(prefix)
                samples.append(
                    {
                        "seconds": round(time.monotonic() - began, 1),
                        "bytes": sum(sizes.values()),
                        "workflows_bytes": sizes.get("workflows", 0),
                        "steps_bytes": sizes.get("steps", 0),
                        "rows": await store.workflow_rows(),
                        "ended_in_table": done,
                        "in_table": total,
                    }
                )
                s = samples[-1]
                print(
                    f"RETENTION t={s['seconds']:>7.0f}s size={s['bytes'] / 2**20:8.1f} MiB "
                    f"rows={s['rows']:>9,}",
                    flush=True,
                )

            async def sampler() -> None:
                while True:
                    await sample()
                    await asyncio.sleep(args.every)

            sampling = asyncio.create_task(sampler())
            started, start_errors = await _submit_open(client, prefix, args.rate, args.seconds, "w")
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
            # Every started workflow ends (or has ended and been collected already).
            deadline = time.monotonic() + args.drain
            unfinished = -1
            while time.monotonic() < deadline:
                done, _, total = await store.progress(prefix)
                unfinished = total - done
                if unfinished == 0:
                    break
                await asyncio.sleep(1)
            await sample()
        quarter = max(1, len(samples) // 4)
        plateau = statistics.mean(s["bytes"] for s in samples[quarter : 2 * quarter])
        last = statistics.mean(s["bytes"] for s in samples[-quarter - 1 : -1] or samples[-1:])
        growth = last / plateau if plateau else float("inf")
        return {
            "rate": args.rate,
            "seconds": args.seconds,
            "retention_seconds": args.retention,
            "gc_seconds": args.gc_seconds,
            "started": started,
            "start_errors": start_errors,
            "unfinished": unfinished,
            "plateau_mib": round(plateau / 2**20, 1),
            "last_quarter_mib": round(last / 2**20, 1),
            "growth": round(growth, 3),
            "max_rows": max(s["rows"] for s in samples),
            "passed": growth <= GROWTH_LIMIT and unfinished == 0 and start_errors == 0,
            "samples": samples,
        }
    finally:
        if workers is not None:
            workers.stop()
        local.destroy()


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    minutes = [s["seconds"] / 60 for s in result["samples"]]
    fig, size_axis = plt.subplots(figsize=(8, 4))
    for key, label in (
        ("bytes", "all tables"),
        ("workflows_bytes", "workflows"),
        ("steps_bytes", "steps"),
    ):
        size_axis.plot(minutes, [s[key] / 2**20 for s in result["samples"]], label=label)
    size_axis.set_xlabel("minutes")
    size_axis.set_ylabel("MiB (tables + indexes)")
    rows_axis = size_axis.twinx()
    rows_axis.plot(minutes, [s["rows"] for s in result["samples"]], "k:", label="workflow rows")
    rows_axis.set_ylabel("workflow rows")
    size_axis.legend(loc="upper left")
    size_axis.set_title(
        f"{result['rate']:.0f} workflows/s, retention {result['retention_seconds']:.0f} s: "
        f"growth {result['growth']:.2f}x"
    )
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="length of the load")
    parser.add_argument("--rate", type=float, default=300.0, help="workflows started per second")
    parser.add_argument("--retention", type=float, default=120.0, help="seconds kept")
    parser.add_argument("--gc-seconds", type=float, default=10.0, help="collector interval")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--drain", type=float, default=120.0, help="allowed time after the load")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(soak(args))
    (args.out / "retention-soak.json").write_text(json.dumps(result, indent=2) + "\n")
    drawn = plot(result, args.out / "retention-soak.png")
    print(
        f"RETENTION {'PASS' if result['passed'] else 'FAIL'}: {result['started']:,} started at "
        f"{result['rate']:.0f}/s for {result['seconds']:.0f} s, {result['unfinished']} "
        f"unfinished, {result['start_errors']} start errors; size plateau "
        f"{result['plateau_mib']} MiB, last quarter {result['last_quarter_mib']} MiB "
        f"({result['growth']:.2f}x, limit {GROWTH_LIMIT}x); at most {result['max_rows']:,} "
        f"workflow rows" + ("; curve in retention-soak.png" if drawn else ""),
        flush=True,
    )
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
