"""Test fixtures: real local clusters, started by shardflow's own cluster code (as the postgres
user when the tests run as root), one per backend and test session.

The conformance suite runs once per backend (like River runs one suite against every
driver): every test that takes ``config`` (or anything built on it) is parametrised over
``plain`` (three independent PostgreSQL nodes) and ``citus`` (a coordinator and two workers).
A test about plain-node machinery (shardflow's own partition mover, ownership rows, plans of
the plain claim statements) is marked ``plain_only`` with the reason. Without the Citus
extension the ``citus`` half skips with a reason, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardflow.cluster.admin import init_cluster
from shardflow.cluster.local import LocalCluster, citus_installed
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig, NodeConfig, WorkerSettings
from shardflow.connectors import dsn_for
from tests.helpers import run
from tests.invariants import create_tx_effects_table

BACKENDS = ("plain", "citus")

# Short leases and polls so fault scenarios finish in seconds (docs/reliability.md).
TEST_WORKER = WorkerSettings(
    concurrency=32,
    lease_seconds=3.0,
    heartbeat_seconds=1.0,
    poll_seconds=0.5,
    reaper_seconds=0.5,
    membership_seconds=0.5,
    max_lease_expiries=3,
    shutdown_grace_seconds=5.0,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "plain_only(reason): a test of plain-node machinery; the citus run skips it",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("plain_only")
        if marker is not None and "[citus" in item.nodeid:
            reason = marker.args[0] if marker.args else "plain nodes only"
            item.add_marker(pytest.mark.skip(reason=f"plain backend only: {reason}"))


@pytest.fixture(scope="session")
def cluster_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to root, and the servers may run as
    # the postgres user, which must be able to enter the directory.
    directory = Path(tempfile.mkdtemp(prefix="shardflow-tests-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _cluster(directory: Path, *, citus: bool) -> Iterator[LocalCluster]:
    cluster = LocalCluster(directory)
    config = cluster.create(
        nodes=3, partition_count=256, schema="shardflow", citus_workers=2 if citus else None
    )
    run(init_cluster(config), timeout=120)
    try:
        yield cluster
    finally:
        if not os.environ.get("SHARDFLOW_KEEP_TEST_CLUSTER"):
            cluster.destroy()


@pytest.fixture(scope="session")
def plain_cluster(cluster_dir: Path) -> Iterator[LocalCluster]:
    yield from _cluster(cluster_dir / "plain", citus=False)


@pytest.fixture(scope="session")
def citus_cluster(cluster_dir: Path) -> Iterator[LocalCluster]:
    if not citus_installed():
        message = (
            "the Citus extension is not installed for this PostgreSQL: "
            "`make citus CITUS_SRC=path/to/citus.tar.gz` builds it"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Citus half of the suite: {message}")
        pytest.skip(message)
    yield from _cluster(cluster_dir / "citus", citus=True)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def local_cluster(backend: str, request: pytest.FixtureRequest) -> LocalCluster:
    cluster: LocalCluster = request.getfixturevalue(f"{backend}_cluster")
    return cluster


@pytest.fixture(scope="session")
def config(local_cluster: LocalCluster) -> ClusterConfig:
    """The test cluster's configuration, with short leases."""
    return local_cluster.load_config().replace(
        worker=TEST_WORKER, connect_timeout=2.0, operation_timeout=3.0
    )


@pytest.fixture(scope="session")
def config_file(config: ClusterConfig, local_cluster: LocalCluster) -> Path:
    """The same configuration as a file, for worker subprocesses and the CLI."""
    path = local_cluster.directory / "test-config.toml"
    path.write_text(config.to_toml())
    return path


@pytest.fixture
def restore_nodes(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """For tests that stop nodes: every node is running again afterwards."""
    yield local_cluster
    local_cluster.start_all()


@pytest.fixture(scope="session")
def tx_effects_table(config: ClusterConfig) -> None:
    """The table transactional steps in tests.apps write to, on every node."""
    run(create_tx_effects_table(config))


@pytest.fixture(scope="session")
def data_nodes(config: ClusterConfig) -> list[NodeConfig]:
    """The nodes that hold workflows: the configured ones (plain), or Citus's workers (the
    configured coordinator holds none), with the DSN a client uses for each."""

    async def read() -> list[NodeConfig]:
        async with ClusterAdmin(config) as admin:
            placement = await admin.latest_placement()
        return [NodeConfig(name=n.name, dsn=dsn_for(config, n)) for n in placement.nodes]

    return run(read())
