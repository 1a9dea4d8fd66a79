"""Partition moves on one node: journal, fence, copy, flip, cleanup.

A move's data copy and its ownership flip on the target commit in one transaction, so the
target either has every row of the partition and owns it, or has neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardflow.storage.connector import NodeConnector
from shardflow.storage.records import Ownership


@dataclass(frozen=True)
class _MovedTable:
    name: str
    copy_out: str
    copy_in: str
    delete: str


# Tables copied by a move, parents first (steps reference workflows).
MOVED_TABLES = (
    _MovedTable(
        "workflows", "copy_out_workflows", "copy_in_workflows", "delete_partition_workflows"
    ),
    _MovedTable("steps", "copy_out_steps", "copy_in_steps", "delete_partition_steps"),
    _MovedTable("signals", "copy_out_signals", "copy_in_signals", "delete_partition_signals"),
    _MovedTable("events", "copy_out_events", "copy_in_events", "delete_partition_events"),
    _MovedTable("outbox", "copy_out_outbox", "copy_in_outbox", "delete_partition_outbox"),
    _MovedTable(
        "schedules", "copy_out_schedules", "copy_in_schedules", "delete_partition_schedules"
    ),
)


@dataclass(frozen=True, kw_only=True)
class MoveRecord:
    """One journal row: where a partition move stands."""

    move_id: str
    partition: int
    source_node: str
    target_node: str
    phase: str
    placement_version: int
    rows_copied: int


class RebalanceStore:
    """The source's and the target's side of a partition move."""

    def __init__(self, connector: NodeConnector):
        self.db = connector

    @property
    def node(self) -> str:
        return self.db.name

    async def fence(self, *, move_id: str, partition: int, target: str, version: int) -> bool:
        """Source side: mark the partition ``moving`` and journal the move, atomically.

        Waits for in-flight writes of the partition (they hold its ownership row FOR SHARE).
        False if this node does not own the partition.
        """
        async with self.db.transaction() as conn:
            rows = await self.db.fetch(
                conn, "ownership_set_state", {"partition": partition, "state": "moving"}
            )
            if not rows:
                return False
            await self.db.fetch(
                conn,
                "move_journal_insert",
                {
                    "move_id": move_id,
                    "partition": partition,
                    "source_node": self.node,
                    "target_node": target,
                    "placement_version": version,
                },
            )
            return True

    async def journal(self, move_id: str, *, phase: str, rows_copied: int) -> None:
        await self.db.run(
            "move_journal_update",
            {"move_id": move_id, "phase": phase, "rows_copied": rows_copied},
        )

    async def moves_done(self) -> tuple[int, int]:
        """Moves this node gave partitions away in: (ever, in the last hour)."""
        row = (await self.db.run("move_journal_done"))[0]
        return int(row["total"]), int(row["last_hour"])

    async def active_moves(self) -> list[MoveRecord]:
        return [
            MoveRecord(**{**r, "move_id": str(r["move_id"])})
            for r in await self.db.run("move_journal_active")
        ]

    async def ownership_of(self, partition: int) -> Ownership | None:
        rows = await self.db.run("ownership_get", {"partition": partition})
        return Ownership(partition=partition, **rows[0]) if rows else None

    async def copy_and_take(
        self,
        source: RebalanceStore,
        *,
        partition: int,
        epoch: int,
        on_table_copied: Any = None,
    ) -> int:
        """Target side: copy every row of ``partition`` from ``source`` and take ownership.

        One target transaction: leftovers of an interrupted attempt are deleted first, so the
        copy is idempotent. Returns the number of rows copied.
        """
        params = {"partition": partition}
        copied = 0
        async with self.db.transaction() as dst, source.db.connection() as src:
            for table in reversed(MOVED_TABLES):
                await self.db.fetch(dst, table.delete, params)
            for table in MOVED_TABLES:
                async with (
                    src.cursor() as scur,
                    dst.cursor() as dcur,
                    scur.copy(source.db.queries[table.copy_out], params) as out,
                    dcur.copy(self.db.queries[table.copy_in]) as into,
                ):
                    async for chunk in out:
                        copied += bytes(chunk).count(b"\n")  # text COPY: one line per row
                        await into.write(chunk)
                if on_table_copied is not None:
                    on_table_copied(table.name)
            await self.db.fetch(dst, "ownership_take", {"partition": partition, "epoch": epoch})
        return copied

    async def drop_partition(self, partition: int) -> None:
        """Source side, after the flip is published: delete the rows and the ownership row."""
        params = {"partition": partition}
        async with self.db.transaction() as conn:
            for table in reversed(MOVED_TABLES):
                await self.db.fetch(conn, table.delete, params)
            await self.db.fetch(conn, "ownership_drop", params)

    async def partition_rows(self, partition: int) -> int:
        rows = await self.db.run("partition_row_counts", {"partition": partition})
        return int(rows[0]["workflows"]) + int(rows[0]["steps"])

    async def partitions_with_rows(self) -> set[int]:
        return {r["partition"] for r in await self.db.run("partitions_with_rows")}

    async def node_rows(self) -> dict[str, int]:
        rows = await self.db.run("node_row_counts")
        return {k: int(v) for k, v in rows[0].items()}
