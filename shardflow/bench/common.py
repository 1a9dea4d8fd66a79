"""What every benchmark needs: where its cluster lives, and percentiles."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_directory(directory: str | None) -> Path:
    """Where the benchmark's cluster goes: reachable by the postgres user when run as root."""
    root = Path(directory or tempfile.mkdtemp(prefix="shardflow-bench-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    return root


def bench_runs(out: Path, name: str, *args: str) -> list[dict[str, Any]]:
    """Run `shardflow bench run ARGS --json OUT/NAME.json` in a process of its own; returns
    this call's runs (the benchmark scripts in benchmarks/ compose these)."""
    path = out / f"{name}.json"
    before = len(json.loads(path.read_text())) if path.exists() else 0
    argv = [sys.executable, "-m", "shardflow", "bench", "run", *args, "--json", str(path)]
    subprocess.run(argv, check=True)
    runs: list[dict[str, Any]] = json.loads(path.read_text())[before:]
    return runs


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))
