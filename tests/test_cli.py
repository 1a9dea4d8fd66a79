"""The command line against the real cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

from click.testing import CliRunner

from shardflow.cli import cli
from shardflow.config import ClusterConfig, load_config
from shardflow.storage import AdminStore, NodeConnector
from tests.helpers import run, worker_command


def invoke(config_file: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", str(config_file), *args])
    return result.exit_code, result.output


def test_cluster_status_and_config_show(config_file: Path) -> None:
    code, out = invoke(config_file, "cluster", "status")
    assert code == 0, out
    assert out.count(" yes ") == 3
    code, out = invoke(config_file, "cluster", "status", "--json")
    assert code == 0
    nodes = json.loads(out)["nodes"]
    assert sum(n["partitions_owned"] for n in nodes) == 256
    code, out = invoke(config_file, "config", "show")
    assert code == 0 and "passfile=" in out


def test_start_get_list_cancel(config_file: Path) -> None:
    wf_id = f"cli-{uuid.uuid4().hex}"
    code, out = invoke(
        config_file,
        "start",
        "echo",
        "--app",
        "tests.apps:app",
        "--input",
        '{"a": [1, 2]}',
        "--id",
        wf_id,
    )
    assert code == 0, out
    assert json.loads(out) == {"workflow_id": wf_id, "created": True}
    code, out = invoke(config_file, "get", wf_id)
    assert code == 0 and '"status": "pending"' in out
    code, out = invoke(config_file, "list", "--name", "echo", "--status", "pending")
    assert code == 0 and wf_id in out
    code, out = invoke(config_file, "cancel", wf_id)
    assert code == 0 and "cancelled" in out
    code, out = invoke(config_file, "start", "echo", "--app", "tests.apps:app", "--input", "{")
    assert code != 0 and "not valid JSON" in out
    code, out = invoke(config_file, "start", "nope", "--app", "tests.apps:app")
    assert code != 0 and "UnknownWorkflow" in out
    code, out = invoke(config_file, "get", f"missing-{wf_id}")
    assert code != 0 and "WorkflowNotFound" in out


def test_cluster_init_on_existing_servers(config: ClusterConfig, tmp_path: Path) -> None:
    out_file = tmp_path / "init.toml"
    args = [
        "cluster",
        "init",
        "--schema",
        "sf_cli_init",
        "--partitions",
        "16",
        "--write-config",
        str(out_file),
    ]
    for node in config.nodes:
        args += ["--node", node.dsn]
    try:
        for _ in range(2):  # idempotent
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
        written = load_config(out_file, environ={})
        assert written.partition_count == 16 and len(written.nodes) == 3
        code, out = invoke(out_file, "cluster", "status", "--json")
        assert code == 0, out
        assert sum(n["partitions_owned"] for n in json.loads(out)["nodes"]) == 16
    finally:

        async def drop() -> None:
            for node in config.nodes:
                async with NodeConnector(
                    name=node.name, dsn=node.dsn, schema="sf_cli_init"
                ) as conn:
                    await AdminStore(conn).drop_schema()

        run(drop())


def test_password_on_command_line_is_refused() -> None:
    result = CliRunner().invoke(
        cli, ["cluster", "init", "--node", "host=127.0.0.1 user=x password=canary-secret"]
    )
    assert result.exit_code != 0
    assert "canary-secret" not in result.output
    assert "PGPASSWORD" in result.output


def test_worker_stops_gracefully_on_sigterm(config_file: Path) -> None:
    argv, options = worker_command(config_file)
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, **options)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # printed once the worker is serving
        assert "serving 3 nodes" in line, line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
