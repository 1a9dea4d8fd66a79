"""Child workflows (issue 11): on the parent's partition (started in the parent's own
transaction) and all over the cluster (through the outbox and the relay), their ends
delivered to the parent exactly once, also when the relay is killed between writing and
delivering and between delivering and acknowledging; cancellation cascades to children."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from shardflow import Client, ResultTimeout, Worker, WorkflowNotFound
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.faults import RELAY_FAULT_POINTS, WORKER_FAULT_ENV
from tests import apps
from tests.helpers import run, spawn_worker, wait_until
from tests.invariants import check_invariants


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _children_of(client: Client, parent_id: str) -> list[tuple[str, str]]:
    """(child id, routing key) of every child the parent started, from its checkpoints."""
    return [
        (s.output["workflow_id"], s.output["routing_key"])
        for s in await client.steps(parent_id)
        if s.step_name.startswith("shardflow.start_child:")
    ]


async def _check_each_child_once(config: ClusterConfig, client: Client, parent_id: str) -> None:
    children = await _children_of(client, parent_id)
    records = [await client.get(c, routing_key=k) for c, k in children]
    assert all(r.parent_id == parent_id for r in records)
    # Every end reached the parent once: one receipt per child in its history.
    receipts = [
        s
        for s in await client.steps(parent_id)
        if s.step_name.startswith("shardflow.child_result:")
    ]
    assert sorted(s.step_name.split(":", 1)[1] for s in receipts) == sorted(c for c, _ in children)
    report = await check_invariants(config, client, [parent_id])
    report.assert_ok()


async def _diagnosis(client: Client, parent_id: str, worker: Worker) -> str:
    """What a parent that did not finish was doing, for the failure message."""
    record = await client.get(parent_id)
    steps = [s.step_name for s in await client.steps(parent_id)]
    children = []
    for child_id, key in await _children_of(client, parent_id):
        try:
            children.append((child_id, await client.status(child_id, routing_key=key)))
        except WorkflowNotFound:
            children.append((child_id, "not started"))
    return (
        f"parent {record.status} waiting for {record.waiting_for!r}; steps {steps}; children "
        f"{children}; worker stopped: {worker.stopped.is_set()}, outcomes {dict(worker.outcomes)}"
    )


def test_children_on_the_parents_partition(config: ClusterConfig) -> None:
    async def go() -> None:
        parent_id = new_id("family")
        async with Client(config, app=apps.app) as client:
            async with Worker(apps.app, config):
                await client.start(
                    apps.fan_out, {"count": 5, "spread": False}, workflow_id=parent_id
                )
                assert await client.result(parent_id, timeout=30) == sum(range(1, 6))
            children = await _children_of(client, parent_id)
            assert [c for c, _ in children] == [f"{parent_id}:{i}" for i in range(5)]
            parent_partition = client.route(parent_id)[0]
            assert {client.route(k)[0] for _, k in children} == {parent_partition}
            # Checked with the worker stopped: on Citus its lease writes to reference tables
            # are two-phase commits, which the hygiene check would count while in flight.
            await _check_each_child_once(config, client, parent_id)

    run(go())


def test_fifty_children_all_over_the_cluster(
    config: ClusterConfig, data_nodes: list[NodeConfig]
) -> None:
    async def go() -> None:
        parent_id = new_id("fan-out")
        async with Client(config, app=apps.app) as client:
            async with Worker(apps.app, config) as worker:
                started = time.monotonic()
                await client.start(
                    apps.fan_out, {"count": 50, "spread": True}, workflow_id=parent_id
                )
                assert await client.result(parent_id, timeout=60) == sum(range(1, 51))
                elapsed = time.monotonic() - started
                # Woken once per delivery and per ended child, a relay writes its lease
                # (a two-phase commit on Citus) only once half its TTL has passed, whether
                # it got it or another worker's relay holds it.
                ttl = max(config.worker.poll_seconds * 3, 1.0)
                relays = worker._relays.values()
                assert sum(r.told_total + r.delivered_total for r in relays) >= 50
                for relay in relays:
                    assert relay.lease_writes <= elapsed / (ttl / 2) + 2
            children = await _children_of(client, parent_id)
            assert len(children) == 50
            assert {client.route(k)[1] for _, k in children} == {n.name for n in data_nodes}
            await _check_each_child_once(config, client, parent_id)

    run(go(), timeout=90)


def test_a_failed_child_raises_in_its_parent(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.parent_of_failure, workflow_id=new_id("sad"))
            assert await handle.result(timeout=30) == "child failed: ValueError"

    run(go())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", RELAY_FAULT_POINTS)
def test_relay_killed_between_outbox_and_delivery_and_before_the_ack(
    config: ClusterConfig, config_file: Path, fault: str
) -> None:
    """A worker whose relay kills itself at ``fault`` (before its first delivery, or after
    it and before deleting the message), then a healthy worker: every child starts once and
    every end reaches the parent once."""

    async def go() -> None:
        parent_id = new_id(f"relay-{fault}")
        async with Client(config, app=apps.app) as client:
            victim = await spawn_worker(config_file, {WORKER_FAULT_ENV: fault})
            try:
                await client.start(
                    apps.fan_out, {"count": 10, "spread": True}, workflow_id=parent_id
                )
                assert await asyncio.wait_for(victim.wait(), 60) == -signal.SIGKILL
            finally:
                if victim.returncode is None:
                    victim.kill()
            async with Worker(apps.app, config) as worker:
                try:
                    total = await client.result(parent_id, timeout=60)
                except ResultTimeout:
                    raise AssertionError(await _diagnosis(client, parent_id, worker)) from None
                assert total == sum(range(1, 11))
            await _check_each_child_once(config, client, parent_id)

    assert WORKER_FAULT_ENV not in os.environ
    run(go(), timeout=110)


def test_cancelling_a_parent_cancels_its_children_everywhere(config: ClusterConfig) -> None:
    async def go() -> None:
        parent_id = new_id("cancel-family")
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            await client.start(apps.waiting_parent, 6, workflow_id=parent_id)

            async def children_waiting() -> bool:
                children = await _children_of(client, parent_id)
                if len(children) < 6:
                    return False
                try:
                    records = [await client.get(c, routing_key=k) for c, k in children]
                except WorkflowNotFound:
                    return False  # its start is still in the outbox
                return all(r.waiting_for == "item" for r in records)

            await wait_until(children_waiting, timeout=30, what="six waiting children")
            assert await client.cancel(parent_id)
            children = await _children_of(client, parent_id)

            async def all_cancelled() -> bool:
                statuses = [await client.status(c, routing_key=k) for c, k in children]
                return statuses == ["cancelled"] * len(children)

            await wait_until(all_cancelled, timeout=30, what="the children to be cancelled")
            assert {client.route(k)[1] for _, k in children} != set(), "children somewhere"

    run(go())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"quick": True, "timeout": 60}, {"winner": 1, "result": 42}),
        ({"quick": False, "timeout": 0.5}, "timed out"),
    ],
)
def test_racing_children_against_a_timeout(
    config: ClusterConfig, spec: dict[str, object], expected: object
) -> None:
    """`ctx.first_to_end(children, timeout)`: the quick child wins over one that waits for a
    signal; alone, the waiting one loses to the timeout."""

    async def go() -> None:
        parent_id = new_id("race")
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            await client.start(apps.race, spec, workflow_id=parent_id)
            assert await client.result(parent_id, timeout=30) == expected
            names = [s.step_name for s in await client.steps(parent_id)]
            assert "shardflow.first_to_end" in names

    run(go())
