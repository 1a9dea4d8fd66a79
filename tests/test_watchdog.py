"""Nothing a run does waits forever, and what looks stuck is visible (issue 9).

Before: a workflow whose final write was never flushed stayed `running` with its lease renewed
by a live worker for as long as that worker lived, its own timeout never fired, and nothing was
logged. Now every write of a run is bounded (worker.write_timeout_seconds) and a stalled one
abandons the run loudly; `cluster status` lists runs that record nothing while their lease is
renewed; a timeout caused by the worker's own pause says so instead of blaming the node.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace

import psycopg
import pytest

from shardflow import App, Client, Worker, WorkflowContext
from shardflow.cluster.admin import cluster_status
from shardflow.config import ClusterConfig
from shardflow.connectors import dsn_for
from shardflow.errors import NodeUnavailable
from shardflow.stalls import watch_running_loop
from shardflow.storage import NodeConnector
from tests.helpers import one_loop_turn, run, wait_until


def _gated_app() -> tuple[App, dict[str, asyncio.Event]]:
    """A one-step workflow whose step announces itself and waits for the test."""
    app = App(f"watchdog-{uuid.uuid4().hex[:8]}")
    events: dict[str, asyncio.Event] = {}

    @app.step(name="wait_for_test")
    async def wait_for_test() -> int:
        events["entered"].set()
        await asyncio.wait_for(events["release"].wait(), timeout=60)
        return 1

    @app.workflow(name="gated")
    async def gated(ctx: WorkflowContext) -> int:
        return await wait_for_test()

    return app, events


def test_status_lists_a_run_that_records_nothing_while_its_lease_is_renewed(
    config: ClusterConfig,
) -> None:
    app, events = _gated_app()

    async def go() -> None:
        events.update(entered=asyncio.Event(), release=asyncio.Event())
        wf_id = f"quiet-{uuid.uuid4().hex}"
        async with Client(config, app=app) as client, Worker(app, config):
            handle = await client.start("gated", workflow_id=wf_id)
            await asyncio.wait_for(events["entered"].wait(), timeout=20)

            async def stalled_ids() -> list[str]:
                status = await cluster_status(config, stalled_after=1.0)
                return [s.workflow_id for s in status.stalled]

            async def listed() -> bool:
                return wf_id in await stalled_ids()

            # Longer than a lease (3 s): the heartbeat keeps it alive, the watchdog sees it.
            await wait_until(listed, timeout=20, what="the quiet run to be reported")
            status = await cluster_status(config, stalled_after=1.0)
            found = next(s for s in status.stalled if s.workflow_id == wf_id)
            assert found.app == app.name and found.lease_owner and found.quiet_seconds >= 1.0
            assert status.to_json()["stalled_total"] >= 1
            events["release"].set()
            assert await handle.result(timeout=20) == 1
            assert wf_id not in await stalled_ids()

    run(go(), timeout=60)


def test_a_write_that_gets_no_answer_abandons_the_run_loudly(
    config: ClusterConfig, caplog: pytest.LogCaptureFixture
) -> None:
    app, events = _gated_app()
    # Shorter than operation_timeout (3 s): the bound on the write is what fires.
    fast = config.replace(worker=replace(config.worker, write_timeout_seconds=1.0))

    async def go() -> None:
        events.update(entered=asyncio.Event(), release=asyncio.Event())
        wf_id = f"stalled-{uuid.uuid4().hex}"
        async with Client(fast, app=app) as client, Worker(app, fast) as worker:
            handle = await client.start("gated", workflow_id=wf_id)
            partition, owner = client.route(wf_id)
            await asyncio.wait_for(events["entered"].wait(), timeout=20)
            # Someone else holds the workflow's row: the run's final write cannot commit.
            owner_dsn = dsn_for(fast, client.placement.node(owner))
            blocker = await psycopg.AsyncConnection.connect(owner_dsn)
            async with blocker, blocker.transaction():
                await blocker.execute(
                    "SELECT 1 FROM shardflow.workflows WHERE partition = %s "
                    "AND workflow_id = %s FOR UPDATE",
                    (partition, wf_id),
                )
                events["release"].set()

                def abandoned() -> bool:
                    return any(
                        r.levelno == logging.ERROR and wf_id in r.getMessage()
                        for r in caplog.records
                    )

                await wait_until(abandoned, timeout=20, what="the run to be abandoned")
                message = next(m for r in caplog.records if wf_id in (m := r.getMessage()))
                assert owner in message and "got no answer within 1.0s" in message
                assert worker.outcomes["error"] >= 1

                # Abandoned means let go: the worker holds (and renews) nothing any more, so
                # the lease runs out and any worker may resume the workflow.
                await wait_until(lambda: worker.in_flight == 0, timeout=10, what="the run to end")
            # Let go: the workflow ends (the late write, or a resumed run), recorded once.
            assert await handle.result(timeout=30) == 1
            assert [s.step_seq for s in await client.steps(wf_id)] == [0]

    caplog.set_level(logging.WARNING)
    run(go(), timeout=80)


def test_a_timeout_caused_by_this_process_pausing_does_not_blame_the_node(
    config: ClusterConfig,
) -> None:
    node = config.nodes[0]

    async def go() -> None:
        watch_running_loop()
        connector = NodeConnector(
            name=node.name, dsn=node.dsn, schema=config.schema, operation_timeout=0.5
        )
        async with connector:
            await connector.run("placement_latest")
            with pytest.raises(NodeUnavailable, match="this process was paused") as info:
                async with connector.connection():
                    # What SIGSTOP or a step that never yields does to the process's clock.
                    end = time.monotonic() + 1.5
                    while time.monotonic() < end:
                        pass
                    await one_loop_turn()
            assert "may be healthy" in str(info.value)

    run(go(), timeout=20)
