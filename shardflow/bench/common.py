"""What every benchmark needs: where its cluster lives, and percentiles."""

from __future__ import annotations

import tempfile
from pathlib import Path


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
