"""Workload W on shardflow and on DBOS in one run, each on a fresh one-node local cluster with
the same PostgreSQL settings (fsync and synchronous_commit on); prints both and the ratio.

    python benchmarks/compare_dbos.py --dbos-python .venv-dbos/bin/python --runs 3

(`make bench-dbos` builds .venv-dbos with pip's `dbos` and runs this.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

from shardflow.bench.common import bench_directory
from shardflow.bench.throughput import BenchSettings, run_throughput_bench
from shardflow.cluster.local import DB_USER, LocalCluster

DBOS_SCRIPT = Path(__file__).with_name("dbos_w.py")


def run_dbos(python: str, count: int, processes: int) -> dict[str, float]:
    root = bench_directory(None)
    local = LocalCluster(root / "cluster")
    try:
        local.create(nodes=1, partition_count=1, schema="shardflow")
        node = local.nodes()[0]
        env = {
            **os.environ,
            # No password here: libpq reads it from the cluster's password file.
            "DBOS_BENCH_URL": f"postgresql+psycopg://{DB_USER}@127.0.0.1:{node.port}/dbos_compare",
            "PGPASSFILE": str(local.passfile),
        }
        done = subprocess.run(
            [python, str(DBOS_SCRIPT), "--count", str(count), "--processes", str(processes)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0:
            raise SystemExit(f"the DBOS run failed:\n{done.stderr[-3000:]}")
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        local.destroy()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dbos-python", required=True, help="python of the DBOS virtualenv")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=4000, help="DBOS workflows per run")
    parser.add_argument("--shardflow-count", type=int, default=20000)
    parser.add_argument("--processes", type=int, default=2, help="processes for each system")
    parser.add_argument("--json", type=Path, help="write every run's numbers here")
    args = parser.parse_args()
    rows = []
    for run in range(1, args.runs + 1):
        root = bench_directory(None)
        try:
            settings = BenchSettings(
                workload="w", nodes=1, workers=args.processes, count=args.shardflow_count
            )
            ours = asyncio.run(run_throughput_bench(settings, root)).as_dict()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        theirs = run_dbos(args.dbos_python, args.count, args.processes)
        ratio = ours["workflows_per_second"] / theirs["workflows_per_second"]
        rows.append(
            {
                "run": run,
                "shardflow_wps": ours["workflows_per_second"],
                "dbos_wps": theirs["workflows_per_second"],
                "ratio": round(ratio, 2),
                "shardflow": ours,
                "dbos": theirs,
            }
        )
        print(
            f"run {run}: shardflow {ours['workflows_per_second']:.0f} wf/s, "
            f"DBOS {theirs['workflows_per_second']:.0f} wf/s, ratio {ratio:.2f}x",
            flush=True,
        )
    print(
        f"median of {len(rows)}: shardflow "
        f"{statistics.median(r['shardflow_wps'] for r in rows):.0f} wf/s, DBOS "
        f"{statistics.median(r['dbos_wps'] for r in rows):.0f} wf/s, ratio "
        f"{statistics.median(r['ratio'] for r in rows):.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
