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
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

SF = [sys.executable, "-m", "shardflow", "bench", "run", "w", "--nodes", "2"]
SETUPS = {
    "plain": ["--backend", "plain"],
    "citus-direct": ["--backend", "citus", "--routing", "direct"],
    "citus-coordinator": ["--backend", "citus", "--routing", "coordinator"],
}


def bench(out: Path, name: str, *args: str) -> list[dict[str, Any]]:
    path = out / f"{name}.json"
    path.unlink(missing_ok=True)
    subprocess.run([*SF, *args, "--json", str(path)], check=True)
    runs: list[dict[str, Any]] = json.loads(path.read_text())
    return runs


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


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
            runs[name]["closed"] += bench(
                args.out, f"{name}-closed", *extra, "--count", str(args.count)
            )
            runs[name]["open"] += bench(
                args.out, f"{name}-open", *extra, "--rate", str(args.rate),
                "--duration", str(args.duration),
            )  # fmt: skip
    for name in SETUPS:
        closed, opened = runs[name]["closed"], runs[name]["open"]
        summary[name] = {
            "workflows_per_second": median(closed, "workflows_per_second"),
            "cpu_ms_per_workflow": median(closed, "cpu_ms_per_workflow"),
            "commits_per_workflow": median(closed, "commits_per_workflow"),
            "open_rate": args.rate,
            "latency_p50_ms": median(opened, "latency_p50_ms"),
            "latency_p99_ms": median(opened, "latency_p99_ms"),
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
