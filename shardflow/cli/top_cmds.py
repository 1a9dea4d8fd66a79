"""``shardflow top``: a live view of the nodes, throughput, queues and failures."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import UTC, datetime

import click

from shardflow.cli.base import CliState, cli, pass_state, run_async
from shardflow.cli.top_view import Snapshot, render
from shardflow.client import Client
from shardflow.cluster.admin import ClusterStatus, cluster_status
from shardflow.config import ClusterConfig
from shardflow.errors import ShardflowError
from shardflow.storage.records import WorkflowRecord

# ANSI: cursor home, clear the screen: a terminal shows one frame, refreshed in place.
_CLEAR = "\x1b[H\x1b[2J"
_FAILURES_SHOWN = 5
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@cli.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="Stop after this many frames (default: until Ctrl-C; 1 when not a terminal).",
)
@pass_state
def top(state: CliState, interval: float, count: int | None) -> None:
    """Live view: per node, queue depth and the oldest runnable workflow's wait, workflows
    ended and failed per second, totals by status, live workers; then stalled runs, work no
    worker runs, and the newest failures. Refreshes in place on a terminal; elsewhere prints
    plain frames one after another."""
    tty = sys.stdout.isatty()
    frames = count if count is not None else (None if tty else 1)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a live view ends
        run_async(_watch(state.config(), interval=interval, frames=frames, tty=tty))


async def _watch(config: ClusterConfig, *, interval: float, frames: int | None, tty: bool) -> None:
    before: Snapshot | None = None
    shown = 0
    async with Client(config) as client:
        while frames is None or shown < frames:
            if before is not None:
                await asyncio.sleep(interval)
            status = await cluster_status(config)
            # Nodes added or partitions moved since the last frame: read the placement again.
            await client.refresh_placement(min_version=client.placement.version)
            now = Snapshot(status, failures=await _failures(client, status, before))
            lines = render(now, before, interval=interval)
            click.echo((_CLEAR if tty else ("\n" if shown else "")) + "\n".join(lines))
            before = now
            shown += 1


def _failed_total(status: ClusterStatus) -> int:
    return sum(n.workflows.get("failed", 0) + n.workflows.get("dead", 0) for n in status.nodes)


async def _failures(
    client: Client, status: ClusterStatus, before: Snapshot | None
) -> list[WorkflowRecord]:
    """The newest failed and dead-lettered workflows, read again only when their count
    changed (a filtered walk of the newest-first index costs more on a large table)."""
    if before is not None and _failed_total(status) == _failed_total(before.status):
        return before.failures
    if not _failed_total(status):
        return []
    found: list[WorkflowRecord] = []
    try:
        for kind in ("failed", "dead"):
            found += (await client.list(status=kind, limit=_FAILURES_SHOWN)).items
    except ShardflowError:
        return before.failures if before is not None else []  # a node is down: shown above
    found.sort(key=lambda r: r.completed_at or r.created_at or _EPOCH, reverse=True)
    # The list leaves errors out (they can be large): read the few shown in full.
    try:
        return [
            await client.get(r.workflow_id, routing_key=r.routing_key)
            for r in found[:_FAILURES_SHOWN]
        ]
    except ShardflowError:
        return found[:_FAILURES_SHOWN]
