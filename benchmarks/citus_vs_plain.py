"""W on Citus next to plain nodes, same box, same run (issue 10's numbers).

Each configuration is a `shardflow bench run` on a fresh local cluster: plain with 2 nodes;
Citus with a coordinator and 2 workers, calls going straight to the workers ("direct") and
through the coordinator ("coordinator"). For each: closed-loop throughput (--count) and
open-loop latency at a fixed rate (--rate, the same for all), --runs times, medians, and the
ratios to plain. JSON in --out/citus.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shardflow.bench.common import bench_runs, median_of

W_ON_TWO = ("w", "--nodes", "2")
SETUPS = {
    "plain": ["--backend", "plain"],
    "citus-direct": ["--backend", "citus", "--routing", "direct"],
    "citus-coordinator": ["--backend", "citus", "--routing", "coordinator"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, float]] = {}
    # Interleaved rounds: a burst of noise on the box hits every setup alike.
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        n: {"closed": [], "open": []} for n in SETUPS
    }
    for _ in range(args.runs):
        for name, extra in SETUPS.items():
            runs[name]["closed"] += bench_runs(
                args.out, f"{name}-closed", *extra, "--count", str(args.count)
            )
            runs[name]["open"] += bench_runs(
                args.out, f"{name}-open", *W_ON_TWO, *extra, "--rate", str(args.rate),
                "--duration", str(args.duration),
            )  # fmt: skip
    for name in SETUPS:
        closed, opened = runs[name]["closed"], runs[name]["open"]
        summary[name] = {
            "workflows_per_second": median_of(closed, "workflows_per_second"),
            "cpu_ms_per_workflow": median_of(closed, "cpu_ms_per_workflow"),
            "commits_per_workflow": median_of(closed, "commits_per_workflow"),
            "open_rate": args.rate,
            "latency_p50_ms": median_of(opened, "latency_p50_ms"),
            "latency_p99_ms": median_of(opened, "latency_p99_ms"),
            "unfinished": sum(r["unfinished"] for r in opened),
        }
    plain = summary["plain"]["workflows_per_second"]
    for name, row in summary.items():
        row["throughput_vs_plain"] = round(row["workflows_per_second"] / plain, 3)
        print(
            f"CITUS {name:<18} {row['workflows_per_second']:>8.0f} wf/s "
            f"({row['throughput_vs_plain']:.2f}x plain), "
            f"{row['cpu_ms_per_workflow']:.2f} ms CPU/wf; "
            f"at {args.rate:.0f}/s open loop p50 {row['latency_p50_ms']:.1f} ms, "
            f"p99 {row['latency_p99_ms']:.1f} ms",
            flush=True,
        )
    (args.out / "citus.json").write_text(
        json.dumps({"runs": args.runs, "setups": summary}, indent=2)
    )


if __name__ == "__main__":
    main()
