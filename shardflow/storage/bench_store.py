"""The benchmarks' queries on one node (sql/queries/bench.sql): loading data and reading
back how a run went. A run's workflows are found by their id prefix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardflow.storage.connector import NodeConnector


@dataclass(frozen=True, slots=True)
class RunTiming:
    """One finished workflow, in epoch seconds of the node's clock."""

    partition: int
    created: float
    claimed: float
    completed: float


class BenchStore:
    def __init__(self, connector: NodeConnector):
        self.db = connector

    async def fill(self, partition: int, count: int, *, due: bool = False) -> None:
        """``count`` finished workflows with 3 checkpoints each, straight into ``partition``
        (``due``: past their retention already)."""
        await self.db.run(
            "bench_fill",
            {
                "partition": partition,
                "count": count,
                "due": due,
                "token": "00000000-0000-0000-0000-000000000000",
            },
        )

    async def table_sizes(self) -> dict[str, int]:
        """Bytes on disk per shardflow table (indexes and TOAST included)."""
        rows = await self.db.run("bench_table_sizes", {"schema": self.db.schema})
        return {r["name"]: int(r["bytes"]) for r in rows}

    async def workflow_rows(self) -> int:
        return int((await self.db.run("bench_workflow_rows"))[0]["workflows"])

    async def progress(self, prefix: str) -> tuple[int, int, int]:
        """(done, failed, total) of the workflows whose id starts with ``prefix``."""
        row = (await self.db.run("bench_progress", {"prefix": prefix + "%"}))[0]
        return row["done"], row["failed"], row["total"]

    async def last_start(self, prefix: str) -> float:
        """When the newest workflow of the run was started here (epoch seconds; 0 if none)."""
        rows = await self.db.run("bench_last_start", {"prefix": prefix + "%"})
        return float(rows[0]["created"] or 0.0)

    async def timings(self, prefix: str) -> list[RunTiming]:
        rows = await self.db.run("bench_timings", {"prefix": prefix + "%"})
        return [RunTiming(**r) for r in rows]

    async def finished_since(self, prefix: str, since: float) -> list[dict[str, Any]]:
        """The run's workflows that ended at or after ``since`` (epoch seconds): id, partition,
        status and timings."""
        return await self.db.run("bench_finished_since", {"prefix": prefix + "%", "since": since})

    async def runs_by_prefix(self, prefix: str) -> list[dict[str, Any]]:
        """Id, status and timings (epoch seconds) of every workflow whose id starts so."""
        return await self.db.run("bench_runs_by_prefix", {"prefix": prefix + "%"})

    async def signal_resume_seconds(self, prefix: str) -> list[float]:
        """Per received signal of a run: arrival on the node to the wait's checkpoint."""
        rows = await self.db.run("bench_signal_resume", {"prefix": prefix + "%"})
        return [float(r["seconds"]) for r in rows]

    async def waiting(self, prefix: str) -> int:
        """How many of a run's workflows are released, waiting for a signal."""
        return int((await self.db.run("bench_waiting", {"prefix": prefix + "%"}))[0]["waiting"])

    async def children(self, parent_id: str) -> dict[str, float]:
        """A parent's children here: count, first and last start, last end (epoch seconds)."""
        row = (await self.db.run("bench_children", {"parent_id": parent_id}))[0]
        return {k: float(v or 0.0) for k, v in row.items()}

    async def maintenance(self) -> dict[str, float]:
        """Server counters (checkpoints, WAL bytes, autovacuums) to subtract over a run."""
        rows = await self.db.run("bench_maintenance", {"schema": self.db.schema})
        return {k: float(v) for k, v in rows[0].items()}

    async def write_transactions(self) -> int:
        """Write transactions started on this node so far (the transaction id counter)."""
        return int((await self.db.run("bench_commits"))[0]["commits"])
