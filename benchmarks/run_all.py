"""Every benchmark of the performance goals, in order, with medians; JSON and a PNG plot in
--out. Each `shardflow bench` run uses a fresh local cluster (fsync and synchronous_commit on).

1. W throughput on one node (closed loop, 2 worker processes);
2. latency start -> durable completion at 25/50/75% of that throughput (open loop);
3. idle pick-up latency (a few workflows a second on an idle cluster);
4. start_many into 3 nodes;
5. scaling with each node capped by a cgroup CPU quota: 1, 2 and 4 nodes (root only);
6. the fan-out and sleep-heavy workloads;
7. optional (--soak SECONDS): worker RSS over a long open-loop run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from shardflow.bench.common import bench_runs, median_of

SF = [sys.executable, "-m", "shardflow", "bench"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--node-cpu", type=float, default=0.2)
    parser.add_argument("--soak", type=float, default=0, help="seconds of the memory soak")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("*.json"):
        if stale.name != "dbos.json":
            stale.unlink()
    runs = str(args.runs)
    summary: dict[str, Any] = {}

    w = bench_runs(args.out, "w", "w", "--count", "20000", "--repeat", runs)
    top = median_of(w, "workflows_per_second")
    summary["w_one_node_wps"] = top
    summary["w_cpu_ms_per_workflow"] = median_of(w, "cpu_ms_per_workflow")
    summary["w_commits_per_workflow"] = median_of(w, "commits_per_workflow")
    summary["w_worker_cpu_share"] = round(
        median_of(w, "worker_cpu_seconds")
        / (median_of(w, "worker_cpu_seconds") + median_of(w, "database_cpu_seconds")),
        2,
    )

    for share in (0.25, 0.5, 0.75):
        rate = str(round(top * share))
        lat = bench_runs(
            args.out, "latency", "w", "--rate", rate, "--duration", "10", "--repeat", runs
        )
        summary[f"latency_at_{int(share * 100)}pct"] = {
            "rate": float(rate),
            "p50_ms": median_of(lat, "latency_p50_ms"),
            "p99_ms": median_of(lat, "latency_p99_ms"),
        }

    idle = bench_runs(args.out, "idle", "w", "--rate", "5", "--duration", "10", "--repeat", runs)
    summary["idle_pickup_p50_ms"] = median_of(idle, "pickup_p50_ms")
    summary["idle_latency_p50_ms"] = median_of(idle, "latency_p50_ms")

    many = []
    for _ in range(args.runs):
        done = subprocess.run(
            [*SF, "start-many", "--nodes", "3", "--count", "100000"],
            check=True,
            capture_output=True,
            text=True,
        )
        many.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (args.out / "start_many.json").write_text(json.dumps(many, indent=2) + "\n")
    summary["start_many_3_nodes_wps"] = median_of(many, "workflows_per_second")

    if os.geteuid() == 0 and Path("/sys/fs/cgroup/cpu/cgroup.procs").exists():
        capped = {}
        for nodes in (1, 2, 4):
            scaled = bench_runs(
                args.out,
                "scaling",
                "w",
                "--nodes",
                str(nodes),
                "--node-cpu",
                str(args.node_cpu),
                "--count",
                str(3000 * nodes),
                "--repeat",
                runs,
            )
            capped[nodes] = median_of(scaled, "workflows_per_second")
        summary["scaling_node_cpu"] = args.node_cpu
        summary["scaling_wps"] = capped
        summary["scaling_ratio_2"] = round(capped[2] / (2 * capped[1]), 2)
        summary["scaling_ratio_4"] = round(capped[4] / (4 * capped[1]), 2)
    else:
        print("scaling run skipped: capping node CPU needs root and cgroup v1 (cpu controller)")

    for workload in ("fanout", "sleepy"):
        other = bench_runs(args.out, "workloads", workload, "--count", "5000")
        summary[f"{workload}_wps"] = median_of(other, "workflows_per_second")

    if args.soak:
        soak = bench_runs(
            args.out, "soak", "w", "--rate", str(round(top * 0.3)), "--duration", str(args.soak)
        )
        summary["soak_worker_rss_mb"] = {
            k: soak[0][k] for k in ("worker_rss_mb_start", "worker_rss_mb_max", "worker_rss_mb_end")
        }

    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    results = [str(p) for p in sorted(args.out.glob("*.json")) if p.stem in RUN_FILES]
    subprocess.run([*SF, "plot", *results, "--out", str(args.out / "bench.png")], check=True)


RUN_FILES = {"w", "latency", "idle", "scaling", "workloads", "soak"}

if __name__ == "__main__":
    main()
