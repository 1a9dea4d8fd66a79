"""Test fixtures: one real 3-node local cluster per test session, started by shardflow's own
cluster code (as the postgres user when the tests run as root)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardflow.cluster.admin import init_cluster
from shardflow.cluster.local import LocalCluster
from shardflow.config import ClusterConfig, WorkerSettings
from tests.helpers import run
from tests.invariants import create_tx_effects_table

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


@pytest.fixture(scope="session")
def cluster_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to root, and the servers may run as
    # the postgres user, which must be able to enter the directory.
    directory = Path(tempfile.mkdtemp(prefix="shardflow-tests-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def local_cluster(cluster_dir: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(cluster_dir / "cluster")
    config = cluster.create(nodes=3, partition_count=256, schema="shardflow")
    run(init_cluster(config))
    try:
        yield cluster
    finally:
        if not os.environ.get("SHARDFLOW_KEEP_TEST_CLUSTER"):
            cluster.destroy()


@pytest.fixture(scope="session")
def config(local_cluster: LocalCluster) -> ClusterConfig:
    """The test cluster's configuration, with short leases."""
    return local_cluster.load_config().replace(
        worker=TEST_WORKER, connect_timeout=2.0, operation_timeout=3.0
    )


@pytest.fixture(scope="session")
def config_file(config: ClusterConfig, cluster_dir: Path) -> Path:
    """The same configuration as a file, for worker subprocesses and the CLI."""
    path = cluster_dir / "test-config.toml"
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
