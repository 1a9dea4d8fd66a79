"""The soak behind `make soak` (issue 9): open-loop load at 50% and at 90% of the measured
maximum, each for --seconds (30 minutes by default), 2 worker processes, one node, then every
workflow must end within --drain seconds after the load stops. ``--maximum`` skips the
measurement and offers fractions of a given rate (to compare runs at the same offered load).

The maximum is measured first, in the same run, with the soak's own driver: W's closed-loop
throughput (`shardflow bench run --count`, bulk starts) is offered open loop, one `start()` at
a time, for a minute; what completes per second under that overload is the maximum (single
starts and small batches cost more than the closed loop's bulk starts, so the closed-loop
number itself would overload the open-loop phases). Each phase is a `shardflow bench run
--rate R --duration S` on a fresh cluster,
which reports latency start -> durable completion from the database clock, including the
maximum, and the workflows not finished `--drain` seconds after the last start. The soak fails
(exit 1) when one is unfinished or the maximum latency reaches the lease length (30 s): a
workflow that waited that long was stuck, not slow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from shardflow.bench import maintenance, tail
from shardflow.bench.common import bench_runs

LEASE_SECONDS = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1800.0, help="length of each phase")
    parser.add_argument("--drain", type=float, default=120.0, help="allowed time after the load")
    parser.add_argument("--loads", default="0.5,0.9", help="fractions of the measured maximum")
    parser.add_argument("--max-count", type=int, default=20000, help="closed-loop size")
    parser.add_argument(
        "--maximum",
        type=float,
        help="use this maximum (workflows/s, e.g. an earlier run's) instead of measuring it: "
        "phases of two runs are then offered the same rates",
    )
    parser.add_argument(
        "--retention",
        default="120s",
        help="finished workflows kept this long in every run ('forever': the tables grow, "
        "as in the first soaks)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kept = [] if args.retention == "forever" else ["--retention", args.retention]

    if args.maximum is not None:
        closed_top, top = 0.0, args.maximum
        print(f"SOAK maximum: {top:.0f} workflows/s (given, not measured)", flush=True)
    else:
        closed = bench_runs(
            args.out, "soak-closed", "w", "--count", str(args.max_count), "--repeat", "2", *kept
        )
        closed_top = statistics.median(r["workflows_per_second"] for r in closed)
        (overload,) = bench_runs(
            args.out, "soak-max", "w", "--rate", str(closed_top), "--duration", "60",
            "--drain-timeout", "600", *kept,
        )  # fmt: skip
        top = overload["workflows_per_second"]
        print(
            f"SOAK maximum: {top:.0f} workflows/s completed open loop when offered the "
            f"closed-loop maximum ({closed_top:.0f}/s, median of 2)",
            flush=True,
        )
    phases = []
    for fraction in (float(f) for f in args.loads.split(",")):
        rate = round(top * fraction, 1)
        (run,) = bench_runs(
            args.out,
            f"soak-{int(fraction * 100)}",
            "w",
            "--rate",
            str(rate),
            "--duration",
            str(args.seconds),
            "--drain-timeout",
            str(args.drain),
            *kept,
        )
        phases.append({"fraction": fraction, "rate": rate, **run})
        print(
            f"SOAK {fraction:.0%} = {rate:.0f}/s for {args.seconds:.0f}s: "
            f"{run['workflows']} completed ({run['workflows_per_second']:.0f}/s achieved), "
            f"{run['unfinished']} unfinished, "
            f"{run['start_errors']} start errors; latency p50 {run['latency_p50_ms']:.1f} ms, "
            f"p99 {run['latency_p99_ms']:.1f} ms, max {run['latency_max_ms'] / 1000:.2f} s; "
            f"last workflow ended {run['drain_seconds']:.2f} s after the last start; "
            f"worker RSS {run['worker_rss_mb_start']:.0f} -> {run['worker_rss_mb_end']:.0f} MB; "
            f"{tail.describe(run['pickup_tail'])}; "
            f"{maintenance.describe(run['maintenance'])}",
            flush=True,
        )
    (args.out / "soak.json").write_text(
        json.dumps({"closed_loop_wps": closed_top, "maximum_wps": top, "phases": phases}, indent=2)
    )
    bad = [
        p
        for p in phases
        if p["unfinished"] or p["start_errors"] or p["latency_max_ms"] >= LEASE_SECONDS * 1000
    ]
    if bad:
        sys.exit(f"SOAK FAILED at {[p['fraction'] for p in bad]}")
    print("SOAK passed", flush=True)


if __name__ == "__main__":
    main()
