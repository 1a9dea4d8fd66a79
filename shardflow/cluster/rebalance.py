"""Moving partitions between nodes, online.

A move of partition p from S to T:

1. fence: S marks p ``moving`` and journals the move (one S transaction). In-flight writes
   of p finish first; every later claim or write of p on S is rejected in its transaction.
2. copy + flip: T deletes leftovers of p, copies every row of p from S, and takes
   ownership of p at a new epoch (one T transaction: all or nothing).
3. publish: the next placement version (p owned by T) is stored on every node; callers
   holding the old one get PartitionMoved from S and re-route.
4. cleanup: S deletes p's rows and its ownership row; the journal says ``done``.

Every phase is idempotent, and a move interrupted anywhere is finished by running the
rebalance again: the journal on S and the ownership rows of S and T say where it stopped.
The write freeze of p lasts from 1 to 3.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from shardflow.cluster.membership import ClusterAdmin
from shardflow.errors import ShardflowError
from shardflow.faults import REBALANCE_FAULT_ENV, fault_point
from shardflow.routing import Placement, target_placement
from shardflow.storage.rebalance_store import MoveRecord

log = logging.getLogger("shardflow.cluster")


def _fault_point(name: str) -> None:
    fault_point(REBALANCE_FAULT_ENV, name)


@dataclass(frozen=True)
class PlannedMove:
    partition: int
    source: str
    target: str


@dataclass(frozen=True)
class MoveResult:
    """One finished move: rows copied, the write freeze and the whole move's duration."""

    partition: int
    source: str
    target: str
    rows: int
    freeze_seconds: float
    total_seconds: float
    resumed: bool = False


@dataclass
class RebalanceReport:
    moves: list[MoveResult] = field(default_factory=list)
    placement_version: int = 0
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.moves)


def plan_moves(placement: Placement) -> list[PlannedMove]:
    """Which partitions must move to reach the balanced target for the current weights."""
    target = target_placement(
        placement.weights(), placement.partition_count, current=list(placement.owners)
    )
    return [
        PlannedMove(p, placement.owners[p], target[p])
        for p in range(placement.partition_count)
        if placement.owners[p] != target[p]
    ]


class Rebalancer:
    """Finishes interrupted moves, then moves partitions until the placement is balanced."""

    def __init__(self, admin: ClusterAdmin, *, on_move: Callable[[MoveResult], None] | None = None):
        self.admin = admin
        self._on_move = on_move

    async def plan(self) -> list[PlannedMove]:
        return plan_moves(await self.admin.latest_placement())

    async def run(self, *, limit: int | None = None) -> RebalanceReport:
        """Rebalance (at most ``limit`` new moves). Safe to re-run after any interruption."""
        report = RebalanceReport()
        began = time.monotonic()
        async with self.admin.exclusive():
            unfinished = await self._unfinished_moves()
            planned = plan_moves(await self.admin.latest_placement())
            if unfinished or planned:
                await self.admin.audit(
                    "rebalance",
                    "cluster",
                    planned=len(planned),
                    unfinished=len(unfinished),
                    limit=limit,
                )
            for record in unfinished:
                report.moves.append(self._done(await self._resume(record)))
            moves = plan_moves(await self.admin.latest_placement())
            for move in moves[:limit] if limit is not None else moves:
                await self.admin.renew_lock(await self.admin.latest_placement())
                report.moves.append(self._done(await self.move(move)))
            report.placement_version = (await self.admin.latest_placement()).version
        report.seconds = time.monotonic() - began
        return report

    def _done(self, result: MoveResult) -> MoveResult:
        log.info(
            "moved partition %d %s -> %s: %d rows, freeze %.3fs",
            result.partition,
            result.source,
            result.target,
            result.rows,
            result.freeze_seconds,
            extra={"action": "partition_moved", "partition": result.partition},
        )
        if self._on_move is not None:
            self._on_move(result)
        return result

    async def _unfinished_moves(self) -> list[MoveRecord]:
        placement = await self.admin.latest_placement()
        records: list[MoveRecord] = []
        for node in placement.nodes:
            records += await self.admin.mover(node.name).active_moves()
        return records

    async def move(self, move: PlannedMove) -> MoveResult:
        source, target = self.admin.mover(move.source), self.admin.mover(move.target)
        placement = await self.admin.latest_placement()
        if placement.owner(move.partition) != move.source:
            raise ShardflowError(f"partition {move.partition} is no longer on {move.source}")
        next_placement = placement.with_owner(move.partition, move.target)
        move_id = str(uuid.uuid4())
        began = time.monotonic()
        if not await source.fence(
            move_id=move_id,
            partition=move.partition,
            target=move.target,
            version=next_placement.version,
        ):
            raise ShardflowError(
                f"{move.source} does not own partition {move.partition} although the placement "
                "says so; run `shardflow cluster status` and report this"
            )
        fenced = time.monotonic()
        _fault_point("after_fence")
        rows = await self._copy_and_flip(
            move.partition, source.node, target.node, next_placement.version
        )
        await source.journal(move_id, phase="flipped", rows_copied=rows)
        await self.admin.publish(next_placement)
        published = time.monotonic()
        _fault_point("after_publish")
        await source.journal(move_id, phase="published", rows_copied=rows)
        await source.drop_partition(move.partition)
        await source.journal(move_id, phase="done", rows_copied=rows)
        return MoveResult(
            move.partition,
            move.source,
            move.target,
            rows,
            freeze_seconds=published - fenced,
            total_seconds=time.monotonic() - began,
        )

    async def _copy_and_flip(self, partition: int, source: str, target: str, epoch: int) -> int:
        def table_copied(table: str) -> None:
            _fault_point("mid_copy" if table == "workflows" else "after_copy")

        rows = await self.admin.mover(target).copy_and_take(
            self.admin.mover(source),
            partition=partition,
            epoch=epoch,
            on_table_copied=table_copied,
        )
        _fault_point("after_flip")
        return rows

    async def _resume(self, record: MoveRecord) -> MoveResult:
        """Finish a journaled move from wherever it stopped."""
        began = time.monotonic()
        p = record.partition
        source = self.admin.mover(record.source_node)
        target = self.admin.mover(record.target_node)
        placement = await self.admin.latest_placement()
        rows = record.rows_copied
        owned = await target.ownership_of(p)
        if owned is None:  # stopped before the flip committed: the source still has it all
            next_placement = placement.with_owner(p, record.target_node)
            rows = await self._copy_and_flip(p, source.node, target.node, next_placement.version)
            await source.journal(record.move_id, phase="flipped", rows_copied=rows)
            placement = next_placement
            await self.admin.publish(placement)
        elif placement.owner(p) != record.target_node:
            await self.admin.publish(placement.with_owner(p, record.target_node))
        await source.journal(record.move_id, phase="published", rows_copied=rows)
        await source.drop_partition(p)
        await source.journal(record.move_id, phase="done", rows_copied=rows)
        elapsed = time.monotonic() - began
        return MoveResult(
            p,
            record.source_node,
            record.target_node,
            rows,
            freeze_seconds=elapsed,
            total_seconds=elapsed,
            resumed=True,
        )
