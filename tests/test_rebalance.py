"""Scale-out: add, drain and remove nodes online, and rebalances interrupted at every phase.

These tests get a cluster of their own (3 nodes, 64 partitions) because they change its
membership and placement.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from shardflow import Client, Worker, WorkflowNotFound
from shardflow.cluster.admin import cluster_status, init_cluster
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.rebalance import PlannedMove, Rebalancer
from shardflow.cluster.verify import check_cluster
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.connectors import node_connector
from shardflow.errors import ConfigurationError, NodeUnavailable
from shardflow.faults import REBALANCE_FAULT_ENV as FAULT_ENV
from shardflow.faults import REBALANCE_FAULT_POINTS as FAULT_POINTS
from shardflow.storage import NodeConnector, WorkerStore
from shardflow.storage import connector as connector_module
from tests import apps
from tests.conftest import TEST_WORKER
from tests.helpers import REPO, run, wait_until
from tests.load import Load

pytestmark = pytest.mark.plain_only(
    "shardflow's own partition mover; on Citus, Citus moves shards (tests/test_citus.py)"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    directory = Path(tempfile.mkdtemp(prefix="shardflow-rebalance-", dir="/tmp"))
    directory.chmod(0o755)
    local = LocalCluster(directory / "cluster")
    config = local.create(nodes=3, partition_count=64, schema="shardflow")
    run(init_cluster(config))
    try:
        yield local
    finally:
        local.destroy()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def config(cluster: LocalCluster) -> ClusterConfig:
    """The cluster's configuration as it is now (nodes added by earlier tests included)."""
    return cluster.load_config().replace(worker=TEST_WORKER, connect_timeout=2.0)


@pytest.fixture
def config_file(config: ClusterConfig, cluster: LocalCluster) -> Path:
    path = cluster.directory / "test-config.toml"
    path.write_text(config.to_toml())
    return path


async def verify_all_completed(client: Client, load: Load) -> None:
    results = await asyncio.gather(*(client.result(wf_id, timeout=60) for wf_id in load.ids))
    assert results == [n + 3 for _, n in load.acked]
    histories = await asyncio.gather(*(client.steps(wf_id) for wf_id in load.ids))
    assert all([s.step_seq for s in h] == [0, 1, 2] for h in histories)


async def assert_consistent(config: ClusterConfig) -> int:
    async with ClusterAdmin(config) as admin:
        report = await check_cluster(admin)
    assert report.problems == []
    return report.workflows


@pytest.mark.timeout(150)
def test_add_a_fourth_node_under_load(cluster: LocalCluster, config: ClusterConfig) -> None:
    async def go() -> None:
        moved_before = sum(n.moves_done for n in (await cluster_status(config)).nodes)
        async with Worker(apps.app, config) as worker, Client(config, app=apps.app) as client:
            async with Load(client, apps.three_steps) as load:
                new_node = cluster.add_node()
                async with ClusterAdmin(config) as admin:
                    await admin.add_node(new_node)
                    report = await Rebalancer(admin).run()
                    placement = await admin.latest_placement()
                await wait_until(
                    lambda: len(load.acked) >= len(report.moves) + 100,
                    what="more load after the moves",
                )
            await verify_all_completed(client, load)
            assert load.errors == [], "client-visible errors during the rebalance"
            assert new_node.name in worker.nodes, "the running worker picked up the new node"
        counts = Counter(placement.owners)
        assert len(counts) == 4 and max(counts.values()) - min(counts.values()) <= 1
        assert len(report.moves) == 16
        assert all(m.target == new_node.name for m in report.moves)
        freezes = sorted(m.freeze_seconds for m in report.moves)
        print(
            f"\nadd-node: {len(load.acked)} workflows acked, {report.rows} rows moved, "
            f"freeze p50 {freezes[len(freezes) // 2] * 1000:.1f} ms "
            f"max {freezes[-1] * 1000:.1f} ms"
        )
        await assert_consistent(config)
        # The dashboard's partitions-moved counter and progress read the move journal.
        after = await cluster_status(config)
        assert sum(n.moves_done for n in after.nodes) == moved_before + len(report.moves)
        assert sum(n.moves_done_last_hour for n in after.nodes) >= len(report.moves)
        assert after.rebalance_progress() is None, "no rebalance in progress any more"

    run(go(), timeout=140)


def _flip_weight(admin_config: ClusterConfig) -> None:
    """Change node1's weight so that a rebalance has partitions to move."""

    async def go() -> None:
        async with ClusterAdmin(admin_config) as admin:
            placement = await admin.latest_placement()
            weight = placement.weights()["node1"]
            await admin.set_weight("node1", 2 if weight == 1 else 1)
            assert await Rebalancer(admin).plan()

    run(go())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_rebalance_killed_at_each_phase_converges(
    config: ClusterConfig, config_file: Path, fault: str
) -> None:
    async def seed() -> int:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            ids = [f"seed-{fault}-{uuid.uuid4().hex[:6]}-{i}" for i in range(60)]
            await asyncio.gather(*(client.start(apps.three_steps, 1, workflow_id=i) for i in ids))
            await asyncio.gather(*(client.result(i, timeout=30) for i in ids))
        return await assert_consistent(config)

    before = run(seed())
    _flip_weight(config)
    crashed = subprocess.run(
        [*_cli(config_file), "cluster", "rebalance"],
        env=_env({FAULT_ENV: fault}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    async def status_then_resume() -> None:
        async with ClusterAdmin(config) as admin:
            interrupted = await check_cluster(admin)
            assert interrupted.problems, "the kill left a move unfinished"
            report = await Rebalancer(admin).run()
            assert any(m.resumed for m in report.moves)
            assert await Rebalancer(admin).plan() == []

    run(status_then_resume())
    assert run(assert_consistent(config)) == before, "no workflow lost or duplicated"

    async def still_works() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handles = [await client.start(apps.three_steps, 5) for _ in range(20)]
            assert [await h.result(timeout=30) for h in handles] == [8] * 20

    run(still_works())


def _cli(config_file: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "shardflow", "--config", str(config_file)]


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


@pytest.mark.timeout(90)
def test_stale_worker_and_client_after_a_move(config: ClusterConfig) -> None:
    async def go() -> None:
        key = f"stale-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as stale, Client(config, app=apps.app) as fresh:
            partition, source = stale.route(key)
            target = next(n.name for n in stale.placement.nodes if n.name != source)
            await fresh.start(apps.three_steps, 10, workflow_id=key)
            node = next(n for n in stale.placement.nodes if n.name == source)
            dsn = next((c.dsn for c in config.nodes if c.name == source), "")
            async with NodeConnector(
                name=source, dsn=dsn or str(node.conninfo), schema=config.schema
            ) as conn:
                old_worker = WorkerStore(
                    conn, app_name=apps.app.name, workflow_names=list(apps.app.workflows)
                )
                claimed = await old_worker.claim(
                    partition=partition, limit=50, owner="stale", lease=timedelta(seconds=2)
                )
                work = next(w for w in claimed if w.workflow_id == key)
                version_before = stale.placement.version

                async with ClusterAdmin(config) as admin:
                    await Rebalancer(admin).move(PlannedMove(partition, source, target))

                # The stale worker's writes are refused by the old node: nothing committed.
                assert not await old_worker.write_progress(
                    work,
                    [
                        {
                            "step_seq": 0,
                            "step_name": "add_one",
                            "status": "succeeded",
                            "output": "11",
                            "error": None,
                            "attempts": 1,
                        }
                    ],
                    None,
                )
                assert not await old_worker.write_progress(
                    work, [], {"status": "succeeded", "output": "13", "error": None}
                )

            # The stale client is re-routed transparently, for writes and reads.
            other = await stale.start(apps.three_steps, 20, workflow_id=f"{key}-2", routing_key=key)
            assert other.created
            assert stale.placement.version > version_before
            assert stale.route(key) == (partition, target)
            async with Worker(apps.app, config):
                assert await stale.result(key, timeout=30) == 13
                assert await stale.result(f"{key}-2", routing_key=key, timeout=30) == 23
            assert [s.step_seq for s in await stale.steps(key)] == [0, 1, 2]

        async with ClusterAdmin(config) as admin:  # put the partition back in balance
            await Rebalancer(admin).run()
        await assert_consistent(config)

    run(go(), timeout=80)


@pytest.mark.timeout(150)
def test_drain_then_remove_a_node_under_load(cluster: LocalCluster, config: ClusterConfig) -> None:
    async def go() -> None:
        async with ClusterAdmin(config) as admin:
            victim = NodeConfig(
                name=cluster.add_node().name, dsn=cluster.load_config().nodes[-1].dsn
            )
            await admin.add_node(victim)
            await Rebalancer(admin).run()
            assert (await admin.latest_placement()).partitions_of(victim.name)
        async with Worker(apps.app, config) as worker, Client(config, app=apps.app) as client:
            await wait_until(lambda: victim.name in worker.nodes, what="worker to serve it")
            async with Load(client, apps.three_steps) as load:
                async with ClusterAdmin(config) as admin:
                    with pytest.raises(ConfigurationError, match="drain"):
                        await admin.remove_node(victim.name)
                    await admin.set_weight(victim.name, 0)
                    report = await Rebalancer(admin).run()
                    assert all(m.source == victim.name for m in report.moves)
                    placement = await admin.remove_node(victim.name)
                assert victim.name not in {n.name for n in placement.nodes}
                await wait_until(
                    lambda: victim.name not in worker.nodes,
                    what="worker to stop serving the removed node",
                )
                await wait_until(lambda: len(load.acked) >= 100, what="load after removal")
            await verify_all_completed(client, load)
            assert load.errors == []
        cluster.forget_node(victim.name)
        await assert_consistent(config)

    run(go(), timeout=140)


@pytest.mark.timeout(60)
def test_a_stopped_node_fails_fast_while_its_pool_retries(
    cluster: LocalCluster, config: ClusterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool that lost its node counts the connections it keeps trying to open in its size:
    that once read as "busy, wait on" and a call waited out the whole operation timeout
    (the remove-while-unreachable test hung on it in CI). The node is probed instead."""
    monkeypatch.setattr(connector_module, "IDLE_CHECK_SECONDS", 0.0)  # ping every idle conn
    node = cluster.nodes()[-1]
    conf = config.node(node.name)
    # Far longer than the test's own timeout: waiting it out would fail the test.
    connector = node_connector(
        config, node.name, conf.dsn, role="test", pool_max_size=2, operation_timeout=600.0
    )

    async def go() -> None:
        async with connector:
            await connector.run("ownership_list")
            cluster.stop_node(node, mode="immediate")
            try:
                for _ in range(3):  # the first call finds the dead connection; then the pool
                    with pytest.raises(NodeUnavailable):
                        await connector.run("ownership_list")
            finally:
                cluster.start_node(node)
            await wait_until(lambda: _answers(connector), what="the node back")

    run(go(), timeout=50)


async def _answers(connector: NodeConnector) -> bool:
    try:
        await connector.run("ownership_list")
    except NodeUnavailable:
        return False
    return True


@pytest.mark.timeout(90)
def test_remove_refused_while_unreachable(cluster: LocalCluster, config: ClusterConfig) -> None:
    async def go() -> None:
        added = cluster.add_node()
        async with ClusterAdmin(config) as admin:
            await admin.add_node(added)
            await admin.set_weight(added.name, 0)  # owns nothing, but may hold rows
            cluster.stop_node(cluster.node(added.name), mode="immediate")
            try:
                with pytest.raises(ConfigurationError, match="unreachable"):
                    await admin.remove_node(added.name)
            finally:
                cluster.start_node(cluster.node(added.name))
            await admin.remove_node(added.name)
        cluster.forget_node(added.name)
        await assert_consistent(config)

    run(go(), timeout=80)


def test_cli_check_dry_run_and_bench(config_file: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from shardflow.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config_file), "cluster", "check"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("ok")
    result = runner.invoke(cli, ["--config", str(config_file), "cluster", "rebalance", "--dry-run"])
    assert result.exit_code == 0 and "0 partitions to move" in result.output
    result = runner.invoke(cli, ["--config", str(config_file), "cluster", "status"])
    assert result.exit_code == 0 and "no move in progress" in result.output
    out = tmp_path / "bench.json"
    result = runner.invoke(
        cli,
        [
            "bench",
            "rebalance",
            "--partitions",
            "8",
            "--per-partition",
            "20",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(out.read_text())
    assert data["partitions_moved"] == 2
    assert data["rows_copied"] >= 2 * 20 * 4
    assert data["client_errors"] == 0 and data["consistency_problems"] == 0
    assert data["load_completed"] == data["load_started"]


@pytest.mark.timeout(150)
def test_signals_and_events_move_with_their_partition(
    cluster: LocalCluster, config: ClusterConfig
) -> None:
    """Workflows waiting for signals, with events published and signals stored unread, and
    parents waiting for children that wait for signals, while a node is added and partitions
    move to it: every signal is received once, in order, the events are where the workflows
    are, signals sent with the old placement reach the new owner, every parent gets every
    child's end."""
    count = 64

    async def go() -> None:
        ids = [f"moving-signals-{uuid.uuid4().hex}" for _ in range(count)]
        async with Client(config, app=apps.app) as client:
            async with Worker(apps.app, config):
                await client.start_many(apps.collect, [2] * count, workflow_ids=ids)
                for wf_id in ids:
                    await client.signal(wf_id, "item", f"{wf_id}:a", signal_id=f"{wf_id}:a")

                async def all_got_the_first() -> bool:
                    events = await asyncio.gather(*(client.events(i) for i in ids))
                    return all(e == {"received": 1} for e in events)

                await wait_until(all_got_the_first, timeout=60, what="every first signal")
                parents = [f"moving-parent-{uuid.uuid4().hex}" for _ in range(4)]
                await client.start_many(apps.waiting_parent, [3] * 4, workflow_ids=parents)
                children = [(f"{p}:{i}", f"{p}-key-{i}") for p in parents for i in range(3)]

                async def children_wait() -> bool:
                    try:
                        records = [await client.get(c, routing_key=k) for c, k in children]
                    except WorkflowNotFound:
                        return False
                    return all(r.waiting_for == "item" for r in records)

                await wait_until(children_wait, timeout=60, what="the children to wait")
            # No worker: half of the second signals wait unread through the move.
            for wf_id in ids[: count // 2]:
                await client.signal(wf_id, "item", f"{wf_id}:b", signal_id=f"{wf_id}:b")
            new_node = cluster.add_node()
            async with ClusterAdmin(config) as admin:
                await admin.add_node(new_node)
                report = await Rebalancer(admin).run()
            assert report.moves
            moved = {m.partition for m in report.moves}
            assert any(client.route(i)[0] in moved for i in ids), "nothing moved: add ids"
            # The other half goes through the client's placement from before the move (moved
            # partitions answer PartitionMoved and it follows); a resend is still a no-op.
            for wf_id in ids[count // 2 :]:
                assert await client.signal(wf_id, "item", f"{wf_id}:b", signal_id=f"{wf_id}:b")
            assert not await client.signal(ids[0], "item", "again", signal_id=f"{ids[0]}:b")
            for child_id, key in children:
                await client.signal(child_id, "item", child_id, routing_key=key)
            async with Worker(apps.app, config):
                results = await asyncio.gather(*(client.result(i, timeout=60) for i in ids))
                family = await asyncio.gather(*(client.result(p, timeout=60) for p in parents))
            assert results == [[f"{i}:a", f"{i}:b"] for i in ids]
            assert family == [[[f"{p}:{i}"] for i in range(3)] for p in parents]
            events = await asyncio.gather(*(client.events(i) for i in ids))
            assert all(e == {"received": 2} for e in events)
        await assert_consistent(config)

    run(go(), timeout=140)
