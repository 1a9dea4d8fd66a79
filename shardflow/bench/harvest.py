"""Reading a benchmark run's timings while a short retention removes its workflows.

With `shardflow bench run --retention 120s` the collector deletes each finished workflow about
two minutes after it ends, so the run cannot read every row back at the end. The harvest reads
the rows that ended since its last look (minus a margin far longer than any transaction, so a
row committed late with an early timestamp is still seen) every few seconds, well inside the
retention, and keeps one slot per workflow: the run's ids are PREFIX + a number 0..N-1, so the
slots are flat arrays (a 30-minute soak at 1,600/s is 2.9 million workflows; a set of row
objects would cost gigabytes)."""

from __future__ import annotations

import time
from array import array

from shardflow.storage.bench_store import BenchStore, RunTiming

# How far before the previous look each look reads again: rows are stamped at their
# transaction's start and become visible at its commit, later.
OVERLAP_SECONDS = 30.0


class RunHarvest:
    """Every ended workflow of one run, read while it exists: timings per id and the outcome."""

    def __init__(self, nodes: list[BenchStore], prefix: str, count: int):
        self.nodes = nodes
        self.prefix = prefix
        self.created = array("d", bytes(8 * count))
        self.claimed = array("d", bytes(8 * count))
        self.completed = array("d", bytes(8 * count))
        self.partition = array("i", bytes(4 * count))
        self.status = bytearray(count)  # 0: not seen ended; 1 succeeded; 2 failed; 3 other
        self.ended = 0
        self.failed = 0
        self.per_node: dict[str, int] = {node.db.name: 0 for node in nodes}
        self._since = 0.0

    async def look(self) -> None:
        """Read what ended since the previous look (with the overlap); counts each id once."""
        now = time.time()
        for node in self.nodes:
            for row in await node.finished_since(self.prefix, self._since):
                self.per_node[node.db.name] += self._record(row)
        self._since = now - OVERLAP_SECONDS

    def _record(self, row: dict[str, object]) -> bool:
        """Keep one ended row; True when it is a success not seen before."""
        slot = int(str(row["workflow_id"])[len(self.prefix) :])
        if self.status[slot]:
            return False
        status = row["status"]
        self.status[slot] = 1 if status == "succeeded" else 2 if status == "failed" else 3
        self.ended += 1
        self.failed += status == "failed"
        if status == "succeeded":
            self.created[slot] = float(row["created"])  # type: ignore[arg-type]
            self.claimed[slot] = float(row["claimed"])  # type: ignore[arg-type]
            self.completed[slot] = float(row["completed"])  # type: ignore[arg-type]
            self.partition[slot] = int(row["partition"])  # type: ignore[call-overload]
        return status == "succeeded"

    def succeeded(self) -> list[RunTiming]:
        return [
            RunTiming(self.partition[i], self.created[i], self.claimed[i], self.completed[i])
            for i, status in enumerate(self.status)
            if status == 1
        ]
