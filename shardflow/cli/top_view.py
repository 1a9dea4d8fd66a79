"""What `shardflow top` shows: one frame per refresh, built from `cluster status` snapshots.

Rendering is a pure function of two snapshots (the rate columns are the difference), so the
tests check frames without a terminal.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shardflow.cluster.admin import ClusterStatus, NodeStatus
from shardflow.storage.records import WorkflowRecord

ENDED = ("succeeded", "failed", "cancelled", "dead")
HEADER = (
    "node",
    "up",
    "parts",
    "runnable",
    "oldest",
    "waiting",
    "running",
    "ended/s",
    "failed/s",
    "succeeded",
    "failed",
    "dead",
    "workers",
)


@dataclass
class Snapshot:
    """One refresh: the cluster's status, the newest failures, when it was taken."""

    status: ClusterStatus
    failures: list[WorkflowRecord] = field(default_factory=list)
    taken: float = field(default_factory=time.monotonic)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def clean(text: str) -> str:
    """Text from the database made safe for a terminal: ids, names and error messages may
    hold escape sequences or line breaks; each control character becomes a '?'."""
    return "".join("?" if unicodedata.category(c).startswith("C") else c for c in text)


def _ended(node: NodeStatus) -> int:
    return sum(node.workflows.get(s, 0) for s in ENDED)


def _failed(node: NodeStatus) -> int:
    return node.workflows.get("failed", 0) + node.workflows.get("dead", 0)


def _rate(now: int, before: int | None, seconds: float) -> str:
    if before is None or seconds <= 0:
        return "-"
    return f"{max(0, now - before) / seconds:.1f}"


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def rows(now: Snapshot, before: Snapshot | None) -> list[tuple[str, ...]]:
    """The table's rows: one per node, then the cluster's total."""
    seconds = now.taken - before.taken if before is not None else 0.0
    earlier = {n.name: n for n in before.status.nodes} if before is not None else {}
    table = []
    totals = dict.fromkeys(("runnable", "waiting", "running", "ok", "failed", "dead"), 0)
    ended_rate: list[float] = []
    failed_rate: list[float] = []
    oldest = 0.0
    for node in now.status.nodes:
        if not node.reachable:
            reason = clean(node.error.split(";")[0][:60])
            table.append(
                (node.name, "NO", f"{node.partitions_placed}?", reason, *[""] * (len(HEADER) - 4))
            )
            continue
        queue = node.queue
        previous = earlier.get(node.name)
        ended = _rate(_ended(node), _ended(previous) if previous else None, seconds)
        failed = _rate(_failed(node), _failed(previous) if previous else None, seconds)
        if ended != "-":
            ended_rate.append(float(ended))
            failed_rate.append(float(failed))
        runnable = queue.runnable if queue else 0
        waiting = queue.waiting if queue else 0
        age = queue.oldest_seconds if queue else 0.0
        oldest = max(oldest, age)
        counts = node.workflows
        totals["runnable"] += runnable
        totals["waiting"] += waiting
        totals["running"] += counts.get("running", 0)
        totals["ok"] += counts.get("succeeded", 0)
        totals["failed"] += counts.get("failed", 0)
        totals["dead"] += counts.get("dead", 0)
        table.append(
            (
                node.name,
                "yes",
                str(node.partitions_owned),
                f"{runnable:,}",
                _age(age) if runnable else "-",
                f"{waiting:,}",
                f"{counts.get('running', 0):,}",
                ended,
                failed,
                f"{counts.get('succeeded', 0):,}",
                f"{counts.get('failed', 0):,}",
                f"{counts.get('dead', 0):,}",
                str(sum(node.workers.values())),
            )
        )
    table.append(
        (
            "total",
            "",
            "",
            f"{totals['runnable']:,}",
            _age(oldest) if totals["runnable"] else "-",
            f"{totals['waiting']:,}",
            f"{totals['running']:,}",
            f"{sum(ended_rate):.1f}" if ended_rate else "-",
            f"{sum(failed_rate):.1f}" if failed_rate else "-",
            f"{totals['ok']:,}",
            f"{totals['failed']:,}",
            f"{totals['dead']:,}",
            "",
        )
    )
    return table


def render(now: Snapshot, before: Snapshot | None, *, interval: float) -> list[str]:
    """The frame's lines."""
    status = now.status
    lines = [
        f"shardflow top: {status.backend} cluster, placement v{status.placement_version}, "
        f"{len(status.nodes)} nodes, {now.at:%H:%M:%S} UTC (every {interval:g}s; Ctrl-C quits)"
    ]
    table = [HEADER, *rows(now, before)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    for row in table:
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    if status.rebalance_in_progress:
        lines.append("REBALANCE IN PROGRESS (interrupted? run `shardflow cluster rebalance`)")
    if status.stalled_total:
        lines.append(
            f"STALLED: {status.stalled_total} running workflows recorded nothing for "
            f"{status.stalled_after_seconds:g}s (`shardflow cluster status` lists them)"
        )
    for work in status.unserved:
        lines.append(
            f"NO WORKER: {work.workflows:,} x {clean(work.name)} (app {clean(work.app)!r}) on "
            f"{work.node}"
        )
    if now.failures:
        lines.append("newest failures:")
        for record in now.failures:
            error = record.error or {}
            kind = error.get("type", "error")
            message = str(error.get("message", "")).splitlines()[0:1]
            lines.append(
                clean(
                    f"  {record.workflow_id} ({record.name}, {record.status}): {kind}: "
                    + (message[0][:100] if message else "")
                )
            )
    return lines
