"""Retention (issue 13): finished workflows past their retention are removed, with their
checkpoints, signals and events, in bounded batches; what is not finished (or is kept for
ever, or is dead-lettered) stays. Both backends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from shardflow import App, Client, Worker, WorkflowContext
from shardflow.cli import cli
from shardflow.cluster.retention import collect_garbage
from shardflow.config import ClusterConfig
from shardflow.errors import ConfigurationError, WorkflowNotFound
from shardflow.storage.retention_store import RetentionStore, collect
from tests.helpers import run, wait_until, workflow_exists

kept_app = App("retention-test")


@kept_app.step
def note(n: int) -> int:
    return n + 1


@kept_app.workflow(retention="1s")
async def brief(ctx: WorkflowContext, n: int) -> int:
    await ctx.set_event("stage", "done")
    return await note(n)


@kept_app.workflow(retention="forever")
async def archived(ctx: WorkflowContext, n: int) -> int:
    return await note(n)


@kept_app.workflow
async def ordinary(ctx: WorkflowContext, n: int) -> int:
    return await note(n)


@kept_app.workflow(retention="1s")
async def waits(ctx: WorkflowContext) -> None:
    await ctx.wait_for_signal("never")


def _ids(prefix: str, count: int) -> list[str]:
    run_id = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run_id}-{i}" for i in range(count)]


def test_removes_what_is_due_and_keeps_the_rest(config: ClusterConfig) -> None:
    # The workers' own collectors are slowed down: this test's pass does the work.
    quiet = config.replace(worker=dataclasses.replace(config.worker, gc_seconds=3600))
    short, forever, default = _ids("brief", 12), _ids("archived", 3), _ids("ordinary", 3)
    waiting = _ids("waits", 2)

    async def go() -> None:
        async with Client(quiet, app=kept_app) as client, Worker(kept_app, quiet):
            for ids, wf in ((short, brief), (forever, archived), (default, ordinary)):
                handles = await client.start_many(wf, list(range(len(ids))), workflow_ids=ids)
                for h in handles:
                    await h.result(timeout=30)
            for wf_id in waiting:
                await client.start(waits, workflow_id=wf_id)
            # Retention is fixed at the start: a cancel by a client that does not know the
            # workflow (the CLI, the dashboard) still keeps it only as long as its own says.
            async with Client(quiet) as stranger:
                await stranger.cancel(waiting[0])

            async def due() -> bool:
                return sum(r.due for r in await collect_garbage(quiet, dry_run=True)) >= 13

            await wait_until(due, what="the short retention to pass", timeout=30)
            results = await collect_garbage(quiet, batch=5)  # several batches per partition
            assert all(not r.error for r in results), results
            assert sum(r.removed for r in results) >= 13
            for wf_id in [*short, waiting[0]]:
                assert not await workflow_exists(client, wf_id), wf_id
                with pytest.raises(WorkflowNotFound):
                    await client.steps(wf_id)
            for wf_id in [*forever, *default, waiting[1]]:
                assert await workflow_exists(client, wf_id), f"{wf_id} must be kept"
            assert [s.step_seq for s in await client.steps(forever[0])] == [0]
            # Nothing is left due: a second pass removes nothing of ours.
            assert sum(r.due for r in await collect_garbage(quiet, dry_run=True)) == 0
            await client.cancel(waiting[1])

    run(go(), timeout=90)


def test_two_collectors_at_once_remove_each_workflow_once(config: ClusterConfig) -> None:
    """The workers' collector and `shardflow gc` may run together: SKIP LOCKED splits the
    rows between them, neither waits nor fails, and the counts add up."""
    quiet = config.replace(worker=dataclasses.replace(config.worker, gc_seconds=3600))
    ids = _ids("brief-pair", 40)

    async def go() -> None:
        async with Client(quiet, app=kept_app) as client:
            async with Worker(kept_app, quiet):
                for h in await client.start_many(brief, list(range(len(ids))), workflow_ids=ids):
                    await h.result(timeout=30)

            async def due() -> int:
                return sum(r.due for r in await collect_garbage(quiet, dry_run=True))

            await wait_until(lambda: _at_least(due(), len(ids)), what="due", timeout=30)
            expected = await due()
            node = client.placement.nodes[0].name
            partitions = client.placement.partitions_of(node)
            mine = partitions if quiet.backend == "citus" else []
            pair = [RetentionStore(client._connector_for(node), lambda: mine) for _ in range(2)]
            on_node = await pair[0].due()
            removed = await asyncio.gather(*(collect(s, batch=3) for s in pair))
            assert sum(removed) == on_node
            rest = await collect_garbage(quiet)
            assert sum(removed) + sum(r.removed for r in rest) == expected
            assert not any([await workflow_exists(client, i) for i in ids])

    run(go(), timeout=90)


async def _at_least(count: object, minimum: int) -> bool:
    assert asyncio.iscoroutine(count)
    return int(await count) >= minimum


def test_the_workers_collect_on_their_own(config: ClusterConfig) -> None:
    eager = config.replace(worker=dataclasses.replace(config.worker, gc_seconds=0.5))
    ids = _ids("brief-auto", 6)

    async def go() -> None:
        async with Client(eager, app=kept_app) as client, Worker(kept_app, eager):
            for h in await client.start_many(brief, list(range(len(ids))), workflow_ids=ids):
                await h.result(timeout=30)

            async def all_gone() -> bool:
                return not any([await workflow_exists(client, i) for i in ids])

            await wait_until(all_gone, what="the workers' collectors", timeout=30)

    run(go(), timeout=60)


def test_the_gc_command(config: ClusterConfig, config_file: Path) -> None:
    quiet = config.replace(worker=dataclasses.replace(config.worker, gc_seconds=3600))
    ids = _ids("brief-cli", 3)

    async def finish() -> None:
        async with Client(quiet, app=kept_app) as client, Worker(kept_app, quiet):
            for h in await client.start_many(brief, [1, 2, 3], workflow_ids=ids):
                await h.result(timeout=30)

        async def due() -> bool:
            return sum(r.due for r in await collect_garbage(quiet, dry_run=True)) >= len(ids)

        await wait_until(due, what="the short retention to pass", timeout=30)

    run(finish())
    dry = CliRunner().invoke(cli, ["--config", str(config_file), "gc", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    due = [int(n) for n in re.findall(r": (\d+) finished workflows due for removal", dry.output)]
    assert sum(due) >= len(ids), dry.output
    done = CliRunner().invoke(cli, ["--config", str(config_file), "gc", "--batch", "100"])
    assert done.exit_code == 0, done.output
    removed = [int(n) for n in re.findall(r": removed (\d+) in ", done.output)]
    assert sum(removed) >= len(ids), done.output


def test_dead_lettered_and_untold_children_are_kept_even_when_marked_due(
    config: ClusterConfig,
) -> None:
    """The collector's own filter, not only purge_at, keeps them: a dead-lettered workflow
    and a child whose end its parent was not told yet stay, even with purge_at passed."""
    quiet = config.replace(worker=dataclasses.replace(config.worker, gc_seconds=3600))
    dead, child, done = _ids("kept-dead", 1)[0], _ids("kept-child", 1)[0], _ids("gone", 1)[0]

    async def go() -> None:
        async with Client(quiet, app=kept_app) as client:
            async with Worker(kept_app, quiet):
                for wf_id in (dead, child, done):
                    await (await client.start(archived, 1, workflow_id=wf_id)).result(30)
            # Made due by hand, as nothing in shardflow does for these: the filter must hold.
            for wf_id, change in (
                (dead, "status = 'dead'"),
                (child, "parent_id = 'a-parent', parent_told = false"),
                (done, "status = 'succeeded'"),
            ):
                partition, node = client.route(wf_id)
                async with await psycopg.AsyncConnection.connect(
                    _dsn(quiet, client, node), autocommit=True
                ) as conn:
                    await conn.execute(
                        f"UPDATE {quiet.schema}.workflows SET {change}, "
                        "purge_at = now() - interval '1 minute' "
                        "WHERE partition = %s AND workflow_id = %s",
                        (partition, wf_id),
                    )
            await collect_garbage(quiet)
            assert await workflow_exists(client, dead) and await workflow_exists(client, child)
            assert not await workflow_exists(client, done), "the filter does remove a due one"
            assert [s.step_seq for s in await client.steps(dead)] == [0]

    run(go(), timeout=60)


def _dsn(config: ClusterConfig, client: Client, node: str) -> str:
    """A plain node's DSN; on Citus the coordinator (it routes the UPDATE to the shard)."""
    if config.backend == "citus":
        return config.nodes[0].dsn
    return config.node(node).dsn


def test_retention_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="retention must be a duration like 30s"):
        ClusterConfig(retention="soon")
    assert ClusterConfig(retention="forever").retention_seconds is None
    assert ClusterConfig(retention="2h").retention_seconds == 7200
    app = App("retention-bad")
    with pytest.raises(ConfigurationError, match="or 'forever'"):

        @app.workflow(retention="a while")
        async def nope(ctx: WorkflowContext) -> None:
            return None
