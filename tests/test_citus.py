"""Citus only: scale-out through Citus's rebalancer under load, and the Citus rules shardflow's
statements are written around (docs/design.md, "Citus rules").

The scale-out test gets a Citus cluster of its own (a coordinator and two workers, 16
partitions on 16 shards) because it adds a worker and moves shards.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from shardflow import Client, Worker
from shardflow.cli import cli
from shardflow.cluster.admin import init_cluster
from shardflow.cluster.citus import CitusAdmin
from shardflow.cluster.local import LocalCluster, citus_installed
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.storage.conninfo import make_conninfo, parse_conninfo
from tests import apps
from tests.conftest import TEST_WORKER
from tests.helpers import run, wait_until
from tests.invariants import check_invariants, create_tx_effects_table
from tests.load import Load


@pytest.fixture(scope="module")
def citus_config(backend: str, config: ClusterConfig) -> ClusterConfig:
    """The shared Citus test cluster (these tests run in the citus half only)."""
    if backend != "citus":
        pytest.skip("Citus-only test")
    return config


@pytest.fixture(scope="module")
def scale_cluster(backend: str) -> Iterator[LocalCluster]:
    if backend != "citus":
        pytest.skip("Citus-only test")
    if not citus_installed():
        pytest.skip("the Citus extension is not installed")
    directory = Path(tempfile.mkdtemp(prefix="shardflow-citus-scale-", dir="/tmp"))
    directory.chmod(0o755)
    local = LocalCluster(directory / "cluster")
    config = local.create(nodes=0, partition_count=16, schema="shardflow", citus_workers=2)
    run(init_cluster(config), timeout=120)
    try:
        yield local
    finally:
        local.destroy()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.timeout(600)
def test_add_a_worker_under_load_and_let_citus_rebalance(scale_cluster: LocalCluster) -> None:
    config = scale_cluster.load_config().replace(worker=TEST_WORKER, connect_timeout=2.0)

    async def go() -> None:
        await create_tx_effects_table(config)
        async with Worker(apps.app, config) as worker, Client(config, app=apps.app) as client:
            before = client.placement
            async with Load(client, apps.transfer, pace=0.01) as load:
                added = scale_cluster.add_node()
                async with ClusterAdmin(config) as admin:
                    citus = CitusAdmin(admin)
                    await citus.add_node(added.dsn)
                    done = await citus.rebalance()
                    after = await admin.latest_placement()
                await wait_until(
                    lambda: len(load.acked) >= 200, timeout=60, what="more load after the moves"
                )
            assert done is not None and done.done == done.total > 0
            new_nodes = {n.name for n in after.nodes} - {n.name for n in before.nodes}
            assert len(new_nodes) == 1
            (new_node,) = new_nodes
            assert Counter(after.owners)[new_node] > 0, "shards moved onto the new worker"
            await wait_until(
                lambda: new_node in worker.nodes, what="the running worker to serve the new node"
            )
            report = await check_invariants(
                config, client, load.ids, steps_per_workflow=2, tx_steps=frozenset({"debit"})
            )
            report.assert_ok()
            assert load.errors == [], "client-visible errors during the rebalance"
            print(
                f"\ncitus add-node: {len(load.acked)} workflows acked, {done.total} shard moves, "
                f"{report.tx_effects} transactional effects, 0 duplicates"
            )

    run(go(), timeout=580)


def test_a_partition_lives_in_one_shard_group(citus_config: ClusterConfig) -> None:
    """Everything about one partition is on one node: its transactions stay local."""

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(citus_config.nodes[0].dsn) as conn:
            cur = await conn.execute(COLOCATION, (citus_config.partition_count,))
            rows = await cur.fetchall()
        assert len(rows) == citus_config.partition_count
        assert all(nodes == 1 for _, nodes in rows)

    run(go())


def test_row_locks_across_shards_are_refused(citus_config: ClusterConfig) -> None:
    """Why plain statements that lock rows of many partitions have per-partition Citus twins."""

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(citus_config.nodes[0].dsn) as conn:
            with pytest.raises(psycopg.Error, match="FOR UPDATE/SHARE"):
                await conn.execute(LOCK_TWO_PARTITIONS)

    run(go())


def test_an_unreachable_worker_is_reached_through_the_coordinator(
    citus_config: ClusterConfig,
) -> None:
    """Direct routing falls back to the coordinator when a worker cannot be reached (from
    this client); the fallback is counted."""

    async def go() -> None:
        async with Client(citus_config, app=apps.app) as probe:
            victim = probe.placement.nodes[0]
            wf_id = next(
                i for i in (f"fallback-{uuid.uuid4().hex}" for _ in range(1000))
                if probe.route(i)[1] == victim.name
            )  # fmt: skip
        # A configured address for that worker where nothing listens.
        params = parse_conninfo(citus_config.nodes[0].dsn)
        blocked = NodeConfig(
            name=victim.name, dsn=make_conninfo({**params, "host": "127.0.0.1", "port": "9"})
        )
        config = citus_config.replace(nodes=(*citus_config.nodes, blocked))
        async with Client(config, app=apps.app) as client:
            handle = await client.start(apps.echo, 7, workflow_id=wf_id)
            assert handle.created is True
            assert (await client.get(wf_id)).status == "pending"
            assert client.coordinator_fallbacks >= 2

    run(go())


def test_routing_through_the_coordinator_runs_workflows(citus_config: ClusterConfig) -> None:
    """citus_routing = "coordinator": one entry point; Citus forwards every statement."""
    config = citus_config.replace(citus_routing="coordinator")

    async def go() -> None:
        async with Client(config, app=apps.app) as client, Worker(apps.app, config) as worker:
            assert [n.name for n in client.placement.nodes] == [config.nodes[0].name]
            handles = await client.start_many(apps.three_steps, list(range(20)))
            results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
            assert results == [n + 3 for n in range(20)]
            assert worker.nodes == [config.nodes[0].name]

    run(go(), timeout=60)


# Test-only SQL against Citus's metadata.
COLOCATION = """
SELECT p, count(DISTINCT n.nodeid)
FROM generate_series(0, %s - 1) AS p
CROSS JOIN unnest(ARRAY['shardflow.workflows', 'shardflow.steps',
                        'shardflow.partition_ownership']::regclass[]) AS t
JOIN pg_dist_placement AS pl
  ON pl.shardid = get_shard_id_for_distribution_column(t, p)
JOIN pg_dist_node AS n ON n.groupid = pl.groupid
GROUP BY p
"""
LOCK_TWO_PARTITIONS = (
    "SELECT workflow_id FROM shardflow.workflows WHERE partition IN (1, 2) FOR UPDATE"
)


def test_migrate_roles_and_audit_go_through_the_coordinator(
    citus_config: ClusterConfig, tmp_path: Path
) -> None:
    """Every admin command works on Citus: migrate again (nothing to do, nothing distributed
    twice), roles (created once, propagated to the workers), audit (one table, read once)."""
    config_file = tmp_path / "citus.toml"
    config_file.write_text(citus_config.to_toml())

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--config", str(config_file), *args])
        assert result.exit_code == 0, result.output
        return result.output

    for _ in range(2):
        assert "up to date" in invoke("migrate")
    assert invoke("roles", "create").count("shardflow_worker") == 1
    marker = uuid.uuid4().hex
    invoke("roles", "create", "--prefix", f"r{marker[:8]}")
    assert invoke("audit", "--limit", "50").count(f"r{marker[:8]}") == 1
