"""What a benchmark measures about processes: CPU seconds, resident memory, and CPU caps
for database nodes (cgroup v1 ``cpu`` controller, root only)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from shardflow.errors import ConfigurationError

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MiB (0 if it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * _PAGE / 2**20


def children_of(parents: set[int]) -> set[int]:
    """Direct children of ``parents`` (a postmaster's backends and helpers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in parents:
            found.add(int(entry.name))
    return found


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


@dataclass
class CpuMeter:
    """CPU seconds used between ``start()`` and ``stop()`` by workers and by database nodes."""

    workers: list[int]
    postmasters: list[int]
    _start: dict[int, float] | None = None
    worker_seconds: float = 0.0
    database_seconds: float = 0.0

    def _sample(self) -> dict[int, float]:
        pids = set(self.workers) | set(self.postmasters) | children_of(set(self.postmasters))
        return {pid: cpu_seconds(pid) for pid in pids}

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> None:
        end = self._sample()
        start = self._start or {}
        used = {pid: end[pid] - start.get(pid, 0.0) for pid in end}
        self.worker_seconds = sum(used.get(pid, 0.0) for pid in self.workers)
        self.database_seconds = sum(v for pid, v in used.items() if pid not in self.workers)


class CpuCaps:
    """One cgroup v1 CPU quota per database node: the scaling benchmark's bottleneck."""

    def __init__(self, cpus: float, *, prefix: str = "shardflow-bench"):
        if cpus <= 0:
            raise ConfigurationError("--node-cpu must be a positive number of CPUs")
        problem = None
        if os.geteuid() != 0:
            problem = "it needs root"
        elif not (CGROUP_CPU / "cgroup.procs").exists():
            problem = f"there is no cgroup v1 cpu controller at {CGROUP_CPU}"
        if problem:
            raise ConfigurationError(
                f"cannot cap node CPU: {problem}. Run the scaling benchmark as root on a "
                "machine with cgroup v1, or run without --node-cpu"
            )
        self.cpus = cpus
        self.prefix = prefix
        self.groups: list[Path] = []

    def cap(self, name: str, postmaster: int) -> None:
        """Put a node's postmaster and every process it has forked under a quota."""
        group = CGROUP_CPU / f"{self.prefix}-{name}"
        group.mkdir(exist_ok=True)
        period = 100_000
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(int(self.cpus * period)))
        for pid in (postmaster, *children_of({postmaster})):
            with contextlib.suppress(OSError):  # exited meanwhile
                (group / "cgroup.procs").write_text(str(pid))
        self.groups.append(group)

    def release(self) -> None:
        """Move whatever is left back to the root group and remove the groups."""
        for group in self.groups:
            try:
                for pid in (group / "cgroup.procs").read_text().split():
                    (CGROUP_CPU / "cgroup.procs").write_text(pid)
                group.rmdir()
            except OSError:
                pass
        self.groups.clear()
