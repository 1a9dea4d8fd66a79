"""Signals and events (issue 11) end to end on the real cluster, both backends.

A signal is stored on the workflow's node whenever it is sent; a wait takes the oldest unread
one of its name, exactly once, in the transaction of its checkpoint. A waiting workflow is
released (no worker slot) and woken by the send. Events are published durably with the
workflow's history.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardflow import (
    Client,
    EventTimeout,
    InvalidInput,
    PayloadNotSerializable,
    PayloadTooLarge,
    SignalRefused,
    Worker,
    WorkflowNotFound,
)
from shardflow.config import ClusterConfig
from shardflow.connectors import node_connector
from shardflow.storage import WorkerStore
from shardflow.storage.worker_store import UNTIL_SIGNALLED
from tests import apps
from tests.helpers import run, wait_until


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _waiting_for(client: Client, wf_id: str, name: str) -> None:
    async def waiting() -> bool:
        record = await client.get(wf_id)
        return record.status == "pending" and record.waiting_for == name

    await wait_until(waiting, what=f"{wf_id} to wait for signal {name!r}")


def test_signals_sent_before_the_wait_are_kept_and_received_in_order(
    config: ClusterConfig,
) -> None:
    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            handle = await client.start(apps.collect, 3, workflow_id=new_id("early"))
            for item in ("first", "second", "third"):
                assert await handle.signal("item", item)
            async with Worker(apps.app, config):
                assert await handle.result(timeout=20) == ["first", "second", "third"]
            steps = [s.step_name for s in await client.steps(handle.workflow_id)]
            assert steps.count("shardflow.signal:item") == 3

    run(go())


def test_a_waiting_workflow_holds_no_slot_and_a_signal_wakes_it(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config) as worker, Client(config, app=apps.app) as client:
            handle = await client.start(apps.approval, 600, workflow_id=new_id("approve"))
            assert await handle.get_event("stage", timeout=20) == "waiting for approval"
            await _waiting_for(client, handle.workflow_id, "approve")
            # Other tests' leftovers on the shared cluster may hold slots; this one holds none.
            assert handle.workflow_id not in worker.running
            assert await handle.signal("approve", {"by": "ana"})
            # Woken by the send's notification, long before its 600 s timeout.
            assert await handle.result(timeout=20) == {"approved": True, "by": "ana"}
            assert await client.events(handle.workflow_id) == {"stage": "approved"}

    run(go())


def test_a_wait_times_out_and_a_late_signal_is_refused(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.approval, 0.5, workflow_id=new_id("late"))
            assert await handle.result(timeout=20) == {"approved": False, "by": None}
            assert await handle.get_event("stage") == "timed out"
            with pytest.raises(SignalRefused, match="succeeded"):
                await handle.signal("approve", {"by": "too late"})
            with pytest.raises(WorkflowNotFound):
                await client.signal(new_id("nobody"), "approve")

    run(go())


def test_a_resent_signal_id_is_received_once(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            handle = await client.start(apps.collect, 2, workflow_id=new_id("dup"))
            assert await handle.signal("item", "once", signal_id="order-7")
            assert not await handle.signal("item", "again", signal_id="order-7")
            assert await handle.signal("item", "next", signal_id="order-8")
            async with Worker(apps.app, config):
                assert await handle.result(timeout=20) == ["once", "next"]
            # A retry after the workflow ended is still a no-op, not an error.
            assert not await handle.signal("item", "once", signal_id="order-7")
            with pytest.raises(SignalRefused):
                await handle.signal("item", "new", signal_id="order-9")

    run(go())


def test_bad_signals_are_refused_and_store_nothing(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            handle = await client.start(apps.collect, 1, workflow_id=new_id("bad"))
            bad_names: list[object] = ["", "  ", 7, None, "x" * 201, "shardflow.child", "a\x00b"]
            for name in bad_names:
                with pytest.raises(InvalidInput):
                    await client.signal(handle.workflow_id, name, "x")  # type: ignore[arg-type]
            limit = config.limits.max_payload_bytes
            with pytest.raises(PayloadTooLarge):
                await handle.signal("item", "x" * (limit + 1))
            with pytest.raises(PayloadNotSerializable):
                await handle.signal("item", {1, 2})
            with pytest.raises(InvalidInput):
                await handle.signal("item", "x", signal_id="")
            with pytest.raises(InvalidInput):
                await client.get_event(handle.workflow_id, "shardflow.internal")
            assert await handle.signal("item", "good")
            async with Worker(apps.app, config):
                assert await handle.result(timeout=20) == ["good"]

    run(go())


def test_get_event_waits_for_the_key_and_says_when_it_did_not_come(
    config: ClusterConfig,
) -> None:
    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            handle = await client.start(apps.approval, 600, workflow_id=new_id("event"))
            with pytest.raises(EventTimeout, match="stage"):
                await handle.get_event("stage", timeout=0.2)  # no worker runs it yet
            async with Worker(apps.app, config):
                waiting = asyncio.ensure_future(handle.get_event("stage", timeout=20))
                assert await waiting == "waiting for approval"
                await _waiting_for(client, handle.workflow_id, "approve")
                await handle.signal("approve", {"by": "bo"})
                await handle.result(timeout=20)
            assert await client.events(handle.workflow_id) == {"stage": "approved"}
            with pytest.raises(WorkflowNotFound):
                await client.get_event(new_id("nobody"), "stage")

    run(go())


def test_a_signal_sent_while_the_run_lets_go_wakes_it_at_once(
    config: ClusterConfig, data_nodes: list
) -> None:
    """The interleaving a wait must survive, step by step on the storage seam: the run finds
    no signal, the signal is sent (the workflow is still running: nothing to wake), then the
    run releases the workflow. The release sees the newer signal count and leaves it due now
    instead of waiting for its timeout (or forever)."""

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            wf_id = new_id("race")
            await client.start(apps.collect, 1, workflow_id=wf_id)
            partition, node_name = client.route(wf_id)
            node = next(n for n in data_nodes if n.name == node_name)
            connector = node_connector(config, node.name, node.dsn, role="test")
            try:
                store = WorkerStore(connector, app_name=apps.app.name, workflow_names=["collect"])
                store.partitions = sorted(client.placement.partitions_of(node.name))
                (work,) = await store.claim(
                    partition=partition, limit=1, owner="race", lease=timedelta(seconds=60)
                )
                async with store.step_transaction() as conn:
                    taken = await store.unread_signal(conn, work, name="item")
                assert taken == (0, None, None)
                assert await client.signal(wf_id, "item", "in the gap")
                due = await store.release(
                    work, delay=None, waiting_for="item", seen_signal_seq=taken[0]
                )
                assert due is True
                record = await client.get(wf_id)
                assert record.status == "pending" and record.run_at is not None
                # Due now (the database's clock), not in a hundred years.
                assert record.run_at <= record.updated_at + timedelta(seconds=1)
            finally:
                await connector.close()
            async with Worker(apps.app, config):
                assert await client.result(wf_id, timeout=20) == ["in the gap"]

    run(go())


def test_a_signal_sent_while_the_release_commits_wakes_it(
    config: ClusterConfig, data_nodes: list
) -> None:
    """The other interleaving: the release's UPDATE holds the workflow's row, not committed
    yet, when the signal is sent. The send waits for the row and must then see the released
    workflow and wake it. (Sent as wake-then-count, the wake read the row still running,
    locked nothing, and the signal woke nobody: the rebalance test found a workflow pending
    until the year 2126, one run in two.)"""

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            wf_id = new_id("race-commit")
            await client.start(apps.collect, 1, workflow_id=wf_id)
            partition, node_name = client.route(wf_id)
            node = next(n for n in data_nodes if n.name == node_name)
            connector = node_connector(config, node.name, node.dsn, role="test")
            try:
                store = WorkerStore(connector, app_name=apps.app.name, workflow_names=["collect"])
                store.partitions = sorted(client.placement.partitions_of(node.name))
                (work,) = await store.claim(
                    partition=partition, limit=1, owner="race", lease=timedelta(seconds=60)
                )
                release = {
                    "partition": partition,
                    "workflow_id": wf_id,
                    "lease_token": work.lease_token,
                    "delay": UNTIL_SIGNALLED,
                    "retry_step_seq": None,
                    "retry_attempts": 0,
                    "error": None,
                    "waiting_for": "item",
                    "seen_signal_seq": 0,
                }
                async with connector.transaction() as conn:
                    (row,) = await connector.fetch(conn, "workflow_release", release)
                    assert row["due"] is False
                    send = asyncio.ensure_future(client.signal(wf_id, "item", "while releasing"))
                    await wait_until(
                        lambda: _waiting_on_a_lock(node.dsn), what="the send to wait for the row"
                    )
                assert await send
                record = await client.get(wf_id)
                assert record.run_at is not None
                assert record.run_at <= record.updated_at + timedelta(seconds=1), record.run_at
            finally:
                await connector.close()
            async with Worker(apps.app, config):
                assert await client.result(wf_id, timeout=20) == ["while releasing"]

    run(go())


# Where a send can land relative to one wait: before the run reads, between its read and
# its release, while the release's UPDATE holds the row, after the release committed.
MOMENTS = ("before_read", "after_read", "during_release", "after_release")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sends=st.lists(st.sampled_from(MOMENTS), min_size=0, max_size=3))
def test_no_order_of_sends_and_a_wait_loses_a_wake_up(
    config: ClusterConfig, data_nodes: list, sends: list[str]
) -> None:
    """Random orders of sends around one wait (read, release): whenever a signal arrives
    after the wait's read, the workflow ends the release due now, never waiting for its
    timeout (a hundred years here); one the read saw does not wake it (the run takes it)."""

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            wf_id = new_id("orders")
            await client.start(apps.collect, 1, workflow_id=wf_id)
            partition, node_name = client.route(wf_id)
            node = next(n for n in data_nodes if n.name == node_name)
            connector = node_connector(config, node.name, node.dsn, role="test")

            async def send_at(moment: str) -> None:
                for _ in range(sends.count(moment)):
                    assert await client.signal(wf_id, "item", moment)

            try:
                store = WorkerStore(connector, app_name=apps.app.name, workflow_names=["collect"])
                (work,) = await store.claim(
                    partition=partition, limit=1, owner="orders", lease=timedelta(seconds=60)
                )
                await send_at("before_read")
                async with store.step_transaction() as conn:
                    found = await store.unread_signal(conn, work, name="item")
                assert found is not None
                seen, first, _ = found
                await send_at("after_read")
                release = {
                    "partition": partition,
                    "workflow_id": wf_id,
                    "lease_token": work.lease_token,
                    "delay": UNTIL_SIGNALLED,
                    "retry_step_seq": None,
                    "retry_attempts": 0,
                    "error": None,
                    "waiting_for": "item",
                    "seen_signal_seq": seen,
                }
                async with connector.transaction() as conn:
                    await connector.fetch(conn, "workflow_release", release)
                    during = asyncio.ensure_future(send_at("during_release"))
                    if "during_release" in sends:
                        await wait_until(
                            lambda: _waiting_on_a_lock(node.dsn), what="the send to wait"
                        )
                await during
                await send_at("after_release")
                record = await client.get(wf_id)
            finally:
                await connector.close()
            assert record.run_at is not None and record.updated_at is not None
            due_now = record.run_at <= record.updated_at + timedelta(seconds=1)
            # A signal the read saw is the run's to take (here: released as if it had not);
            # any signal that came after the read must leave the workflow due now.
            came_later = any(moment != "before_read" for moment in sends)
            assert due_now == came_later, (sends, first, record.run_at)
            await client.cancel(wf_id)

    run(go())


async def _waiting_on_a_lock(dsn: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        )
        row = await cur.fetchone()
        return bool(row and row[0])


def test_many_waiting_workflows_hold_no_slots_and_all_finish_once_signalled(
    config: ClusterConfig,
) -> None:
    """1,000 workflows waiting for a signal hold zero worker slots; signalled, every one
    completes (bounded by the test's timeout)."""
    count = 1000

    async def go() -> None:
        async with Worker(apps.app, config) as worker, Client(config, app=apps.app) as client:
            ids = [new_id("many") for _ in range(count)]
            await client.start_many(apps.collect, [1] * count, workflow_ids=ids)

            async def all_waiting() -> bool:
                waiting: set[str] = set()
                cursor = None
                while True:
                    page = await client.list(
                        name="collect", status="pending", limit=1000, cursor=cursor
                    )
                    waiting |= {r.workflow_id for r in page.items if r.waiting_for == "item"}
                    if page.next_cursor is None:
                        return set(ids) <= waiting
                    cursor = page.next_cursor

            await wait_until(all_waiting, timeout=120, what="1,000 workflows to wait")
            assert not worker.running & set(ids)
            signals = asyncio.Semaphore(32)

            async def send(wf_id: str) -> None:
                async with signals:
                    await client.signal(wf_id, "item", wf_id)

            await asyncio.gather(*(send(i) for i in ids))
            results = await asyncio.gather(*(client.result(i, timeout=120) for i in ids))
            assert results == [[i] for i in ids]

    run(go(), timeout=300)
