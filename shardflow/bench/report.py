"""Benchmark results: medians over runs, a JSON results file, and a PNG plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shardflow.errors import ConfigurationError

SUMMARY_KEYS = (
    "workflows_per_second",
    "latency_p50_ms",
    "latency_p99_ms",
    "pickup_p50_ms",
    "cpu_ms_per_workflow",
    "commits_per_workflow",
    "worker_rss_mb_max",
)


def median_of(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in results))


def print_summary(results: list[dict[str, Any]], *, echo: Callable[[str], None]) -> None:
    if not results:
        return
    echo(f"median of {len(results)} run(s):")
    for key in SUMMARY_KEYS:
        values = ", ".join(str(r[key]) for r in results)
        echo(f"  {key:<22} {median_of(results, key):>10.2f}   ({values})")


def append_results(path: Path, results: list[dict[str, Any]]) -> None:
    """Add runs to a JSON list file (created if missing)."""
    existing: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(existing + results, indent=2) + "\n")


def plot_results(runs: list[dict[str, Any]], out: Path) -> None:
    """Two panels: closed-loop throughput by node count (capped runs apart), and open-loop
    latency (p50, p99) by offered load. Medians where several runs share a setting."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError(
            "plotting needs matplotlib: pip install 'shardflow[bench]' (or `make bench`)"
        ) from None
    closed = [r for r in runs if r["settings"]["rate"] is None and r["settings"]["workload"] == "w"]
    opened = [r for r in runs if r["settings"]["rate"] is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[str, dict[int, list[float]]] = {}
    for r in closed:
        cap = r["settings"]["node_cpu"]
        label = f"nodes capped at {cap} CPU" if cap else "uncapped"
        series.setdefault(label, {}).setdefault(r["settings"]["nodes"], []).append(
            r["workflows_per_second"]
        )
    for label, by_nodes in sorted(series.items()):
        xs = sorted(by_nodes)
        ys = [statistics.median(by_nodes[x]) for x in xs]
        left.plot(xs, ys, marker="o", label=label)
        if len(xs) > 1:
            ideal = [ys[0] * x / xs[0] for x in xs]
            left.plot(xs, ideal, linestyle=":", color="grey", label=f"linear ({label})")
    left.set_xlabel("database nodes")
    left.set_ylabel("workflows/s (W, closed loop)")
    left.set_title("Throughput vs nodes")
    left.legend(fontsize=8)
    by_rate: dict[float, list[dict[str, Any]]] = {}
    for r in opened:
        by_rate.setdefault(r["settings"]["rate"], []).append(r)
    rates = sorted(by_rate)
    for key, label in (("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")):
        right.plot(
            rates,
            [statistics.median(x[key] for x in by_rate[rate]) for rate in rates],
            marker="o",
            label=label,
        )
    right.set_xlabel("offered load (workflows/s, open loop)")
    right.set_ylabel("start -> durable completion (ms)")
    right.set_yscale("log")
    right.set_title("Latency vs offered load (1 node)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
