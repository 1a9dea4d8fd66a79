"""Configuration: file + environment, validation, and secrets kept out."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardflow.config import ClusterConfig, NodeConfig, load_config
from shardflow.errors import ConfigurationError
from shardflow.storage.conninfo import redact

DSN = "host=127.0.0.1 port=5432 dbname=app user=shardflow"


def test_round_trip_through_toml(tmp_path: Path) -> None:
    config = ClusterConfig(nodes=(NodeConfig(name="n1", dsn=DSN, weight=2),), local_dir="/x")
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert load_config(path, environ={}) == config


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(ClusterConfig(nodes=(NodeConfig(name="n1", dsn=DSN),)).to_toml())
    env = {
        "SHARDFLOW_WORKER_CONCURRENCY": "7",
        "SHARDFLOW_LIMITS_MAX_PAYLOAD_BYTES": "2048",
        "SHARDFLOW_NODES": f"a={DSN};b={DSN} port=5433",
    }
    config = load_config(path, environ=env)
    assert config.worker.concurrency == 7
    assert config.limits.max_payload_bytes == 2048
    assert [n.name for n in config.nodes] == ["a", "b"]
    assert "5433" in config.nodes[1].dsn


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(ClusterConfig(name="fromenv", nodes=(NodeConfig(name="n", dsn=DSN),)).to_toml())
    assert load_config(environ={"SHARDFLOW_CONFIG": str(path)}).name == "fromenv"


@pytest.mark.parametrize(
    "dsn",
    [
        DSN + " password=hunter2",
        "postgresql://shardflow:hunter2@127.0.0.1:5432/app",
    ],
)
def test_password_in_dsn_is_refused_without_echoing_it(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        NodeConfig(name="n1", dsn=dsn)
    assert "hunter2" not in str(info.value)
    assert "PGPASSWORD" in str(info.value)


def test_redact_hides_secrets() -> None:
    assert "hunter2" not in redact(DSN + " password=hunter2")
    assert "***" in redact(DSN + " password=hunter2")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"partition_count": 100}, "power of two"),
        ({"schema": "Bad-Name"}, "schema"),
        ({"nodes": (NodeConfig(name="a", dsn=DSN), NodeConfig(name="a", dsn=DSN))}, "unique"),
    ],
)
def test_invalid_config_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ClusterConfig(**changes)  # type: ignore[arg-type]


def test_bad_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cluster up"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("partition_count = [")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(bad, environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigurationError, match="unknown configuration keys"):
        load_config(unknown, environ={})
    with pytest.raises(ConfigurationError, match="must be int"):
        load_config(None, environ={"SHARDFLOW_WORKER_CONCURRENCY": "many"})


def test_worker_settings_validated() -> None:
    from shardflow.config import WorkerSettings

    with pytest.raises(ConfigurationError, match="heartbeat"):
        WorkerSettings(lease_seconds=5, heartbeat_seconds=5)


def test_no_nodes_message() -> None:
    with pytest.raises(ConfigurationError, match="SHARDFLOW_NODES"):
        ClusterConfig().require_nodes()


def test_deploy_example_config_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "shardflow.example.toml"
    config = load_config(example, environ={})
    assert [n.name for n in config.nodes] == ["pg1", "pg2"]
    assert "verify-full" in config.nodes[0].dsn
