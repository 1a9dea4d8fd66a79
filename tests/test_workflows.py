"""The workflow API end to end on the real cluster: replay, retries, sleep, timeouts, client."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import pytest

from shardflow import (
    Client,
    NonDeterminismError,
    ResultTimeout,
    Worker,
    WorkflowCancelled,
    WorkflowConflict,
    WorkflowFailed,
    WorkflowNotFound,
)
from shardflow.config import ClusterConfig
from tests import apps
from tests.helpers import run, wait_until


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_workload_w_runs_and_records_one_checkpoint_per_step(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.three_steps, 41, workflow_id=new_id("w"))
            assert handle.created
            assert await handle.result(timeout=20) == 44
            steps = await client.steps(handle.workflow_id)
            assert [(s.step_seq, s.step_name, s.output) for s in steps] == [
                (0, "add_one", 42),
                (1, "add_one", 43),
                (2, "add_one", 44),
            ]
            record = await handle.get()
            assert record.status == "succeeded"
            assert record.completed_at is not None

    run(go())


def test_a_stopped_worker_and_client_leave_no_connection_pool_open(
    config: ClusterConfig,
) -> None:
    """Every node's relay asks for the worker's delivery client at start: a second one made
    meanwhile was never closed, and its pool's workers, cancelled while connecting, hung the
    event loop's shutdown (CI: a test timed out after its body had passed)."""

    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.three_steps, 1, workflow_id=new_id("pools"))
            assert await handle.result(timeout=20) == 4
        # psycopg_pool names its tasks after the pool: shardflow-<node>-worker-N / -scheduler.
        left = sorted(
            t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("shardflow-")
        )
        assert left == []

    run(go(), timeout=60)


def test_completed_steps_are_not_re_executed_on_resume(config: ClusterConfig) -> None:
    async def go() -> None:
        wf_id = new_id("resume")
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.sleepy, 0.3, workflow_id=wf_id)
            result = await handle.result(timeout=20)
        # The workflow ran twice (before and after the sleep); each step body ran once.
        assert result["steps"] == ["before-sleep", "after-sleep"]
        assert result["slept"] >= 0.3
        assert apps.executions[(wf_id, "before-sleep")] == 1
        assert apps.executions[(wf_id, "after-sleep")] == 1

    run(go())


def test_durable_sleep_survives_a_worker_restart(config: ClusterConfig) -> None:
    async def go() -> None:
        wf_id = new_id("sleep")
        async with Client(config, app=apps.app) as client:
            async with Worker(apps.app, config):
                await client.start(apps.sleepy, 1.0, workflow_id=wf_id)

                async def sleeping() -> bool:
                    names = [s.step_name for s in await client.steps(wf_id)]
                    return "shardflow.sleep" in names

                await wait_until(sleeping, what="the workflow to start sleeping")
            assert await client.status(wf_id) == "pending"  # suspended, no worker holds it
            async with Worker(apps.app, config):
                result = await client.result(wf_id, timeout=20)
        assert result["slept"] >= 1.0

    run(go())


def test_retries_with_backoff_then_success(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.retrying, 2, workflow_id=new_id("retry"))
            assert await handle.result(timeout=20) == "ok after 3 attempts"
            (step,) = await client.steps(handle.workflow_id)
            assert step.attempts == 3
            assert apps.executions[(handle.workflow_id, "flaky")] == 3

    run(go())


def test_step_timeout_fails_the_step(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.times_out, workflow_id=new_id("step-timeout"))
            with pytest.raises(WorkflowFailed) as info:
                await handle.result(timeout=20)
            assert "ran past its 0.2s timeout" in info.value.error["message"]
            (step,) = await client.steps(handle.workflow_id)
            assert step.status == "failed"
            assert step.error is not None and step.error["type"] == "TimeoutError"

    run(go())


def test_retries_exhausted_fail_the_workflow_with_the_error(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.retrying, 10, workflow_id=new_id("exhaust"))
            with pytest.raises(WorkflowFailed) as info:
                await handle.result(timeout=20)
            assert info.value.error["type"] == "StepFailedError"
            assert "transient failure on attempt 4" in info.value.error["message"]
            (step,) = await client.steps(handle.workflow_id)
            assert (step.status, step.attempts) == ("failed", 4)
            assert step.error is not None and step.error["type"] == "ConnectionError"

    run(go())


def test_workflow_can_catch_a_failed_step(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.compensating, 10, workflow_id=new_id("comp"))
            assert await handle.result(timeout=20) == "compensated: StepFailedError"

    run(go())


def test_non_determinism_parks_the_workflow_until_resumed(config: ClusterConfig) -> None:
    """Code that no longer matches a workflow's history parks it as `stuck` (visible, not
    failed, nothing recorded past the mismatch); `resume` after a fix runs it to its end."""

    async def go() -> None:
        wf_id = new_id("nondet")
        apps.shape["first_step"] = "step_a"
        try:
            async with Client(config, app=apps.app) as client:
                async with Worker(apps.app, config):
                    await client.start(apps.shape_shifter, workflow_id=wf_id)

                    async def suspended() -> bool:
                        record = await client.get(wf_id)
                        steps = await client.steps(wf_id)
                        return record.status == "pending" and len(steps) == 2

                    await wait_until(suspended, what="the first run to suspend")
                apps.shape["first_step"] = "step_b"  # "deploy" incompatible code
                async with Worker(apps.app, config):

                    async def stuck() -> bool:
                        return (await client.get(wf_id)).status == "stuck"

                    await wait_until(stuck, what="the workflow to be parked")
                record = await client.get(wf_id)
                assert record.error is not None and record.completed_at is None
                assert record.error["type"] == NonDeterminismError.__name__
                assert "'step_a'" in record.error["message"]
                assert "ctx.patched" in record.error["message"]
                assert len(await client.steps(wf_id)) == 2  # nothing past the mismatch
                listed = await client.list(status="stuck", limit=1000)
                assert wf_id in {r.workflow_id for r in listed.items}
                apps.shape["first_step"] = "step_a"  # deploy the fix
                assert await client.resume(wf_id)
                assert not await client.resume(wf_id)  # pending now: nothing to do
                async with Worker(apps.app, config):
                    assert await client.result(wf_id, timeout=20) == "a"
        finally:
            apps.shape["first_step"] = "step_a"

    run(go())


def test_workflow_timeout(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.overdue, workflow_id=new_id("overdue"))
            with pytest.raises(WorkflowFailed) as info:
                await handle.result(timeout=20)
            assert info.value.error["type"] == "WorkflowTimeout"

    run(go())


def test_a_result_too_large_fails_the_step_not_the_node(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(
                apps.big_result, config.limits.max_payload_bytes + 10, workflow_id=new_id("big")
            )
            with pytest.raises(WorkflowFailed) as info:
                await handle.result(timeout=20)
            assert "PayloadTooLarge" in info.value.error["message"]
            (step,) = await client.steps(handle.workflow_id)
            assert step.status == "failed" and step.attempts == 1
            # The node is fine: the next workflow runs normally.
            ok = await client.start(apps.three_steps, 1, workflow_id=new_id("after-big"))
            assert await ok.result(timeout=20) == 4

    run(go())


def test_start_is_idempotent_and_conflicts_are_typed(config: ClusterConfig) -> None:
    async def go() -> None:
        wf_id = new_id("idem")
        async with Client(config, app=apps.app) as client:
            first = await client.start(apps.echo, {"v": 1}, workflow_id=wf_id)
            again = await client.start(apps.echo, {"v": 2}, workflow_id=wf_id)
            assert first.created and not again.created
            assert (await client.get(wf_id)).input == {"v": 1}
            with pytest.raises(WorkflowConflict, match="another id"):
                await client.start(apps.no_input, workflow_id=wf_id)
            async with Worker(apps.app, config):
                assert await again.result(timeout=20) == {"v": 1}

    run(go())


def test_cancel_pending_workflow(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            handle = await client.start(apps.echo, 1, workflow_id=new_id("cancel"))
            assert await handle.cancel() is True
            assert await handle.cancel() is False
            with pytest.raises(WorkflowCancelled):
                await handle.result(timeout=5)
            async with Worker(apps.app, config) as worker:
                await wait_until(lambda: worker.in_flight == 0, what="worker idle")
            assert await handle.status() == "cancelled"

    run(go())


def test_get_unknown_and_result_timeout(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            with pytest.raises(WorkflowNotFound, match="check the id"):
                await client.get(new_id("nobody"))
            handle = await client.start(apps.echo, 1, workflow_id=new_id("waiting"))
            with pytest.raises(ResultTimeout, match="still pending"):
                await handle.result(timeout=0.1)
            await handle.cancel()

    run(go())


def test_routing_key_co_locates_and_is_needed_to_find(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            key = new_id("customer")
            handles = [
                await client.start(apps.echo, i, workflow_id=new_id("child"), routing_key=key)
                for i in range(5)
            ]
            partitions = {(await h.get()).partition for h in handles}
            assert len(partitions) == 1
            assert [await h.result(timeout=20) for h in handles] == list(range(5))

    run(go())


def test_list_by_time_range_across_nodes(config: ClusterConfig) -> None:
    """created_since is inclusive, created_until exclusive, on every node; the bounds are the
    nodes' own start times, so the two batches split exactly at the second one's first."""

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            earlier = [new_id("range-a") for _ in range(8)]
            later = [new_id("range-b") for _ in range(8)]
            await client.start_many(apps.no_input, [None] * 8, workflow_ids=earlier)
            ends = [(await client.get(i)).created_at for i in earlier]
            later_handles = []
            for wf_id in later:  # one at a time: every start is after the earlier batch's
                later_handles.append(await client.start(apps.no_input, workflow_id=wf_id))
            starts = [(await h.get()).created_at for h in later_handles]
            assert all(s is not None for s in starts + ends)
            boundary = min(s for s in starts if s is not None)
            assert boundary > max(e for e in ends if e is not None)
            assert len({client.route(i)[1] for i in earlier + later}) > 1

            async def listed(**bounds: datetime) -> set[str]:
                found: set[str] = set()
                cursor = None
                while True:
                    page = await client.list(name="no_input", limit=7, cursor=cursor, **bounds)
                    found |= {r.workflow_id for r in page.items}
                    if (cursor := page.next_cursor) is None:
                        return found

            since = await listed(created_since=boundary)
            assert set(later) <= since and not set(earlier) & since
            until = await listed(
                created_since=boundary - timedelta(minutes=5), created_until=boundary
            )
            assert set(earlier) <= until and not set(later) & until
            for wf_id in earlier + later:
                await client.cancel(wf_id)

    run(go())


def test_list_across_nodes_with_filters_and_pages(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            ids = {
                (await client.start(apps.no_input, workflow_id=new_id("list"))).workflow_id
                for _ in range(12)
            }
            seen: list[str] = []
            cursor = None
            while True:
                page = await client.list(name="no_input", status="pending", limit=5, cursor=cursor)
                assert page.unavailable_nodes == []
                seen += [r.workflow_id for r in page.items]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert ids <= set(seen)
            assert len(seen) == len(set(seen)), "no workflow on two pages"
            nodes = {client.route(i)[1] for i in ids}
            assert len(nodes) > 1
            for wf_id in ids:
                await client.cancel(wf_id)

    run(go())


def test_sync_client_facade(config: ClusterConfig) -> None:
    from shardflow import SyncClient

    async def serve(ready_id: str) -> None:
        async with Worker(apps.app, config), Client(config) as client:
            await client.result(ready_id, timeout=20)

    wf_id = new_id("sync")
    with SyncClient(config, app=apps.app) as client:
        handle = client.start("three_steps", 1, workflow_id=wf_id)
        assert handle.status() == "pending"
        run(serve(wf_id))
        assert handle.result(timeout=1) == 4
        assert [s.step_name for s in client.steps(wf_id)] == ["add_one"] * 3
