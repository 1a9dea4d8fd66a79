"""The command line against the real cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

from click.testing import CliRunner

from shardflow import Client, Worker
from shardflow.cli import cli
from shardflow.cluster.local import LocalCluster
from shardflow.config import ClusterConfig, NodeConfig, load_config
from shardflow.storage import AdminStore, NodeConnector
from tests import apps
from tests.helpers import local_node, run, worker_command


def invoke(config_file: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", str(config_file), *args])
    return result.exit_code, result.output


def test_cluster_status_and_config_show(config_file: Path, data_nodes: list[NodeConfig]) -> None:
    code, out = invoke(config_file, "cluster", "status")
    assert code == 0, out
    assert out.count(" yes ") == len(data_nodes)
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
    code, out = invoke(config_file, "list", "--name", "echo", "--since", "10m")
    assert code == 0 and wf_id in out
    code, out = invoke(config_file, "list", "--name", "echo", "--until", "1h")
    assert code == 0 and wf_id not in out
    code, out = invoke(config_file, "list", "--since", "yesterday")
    assert code != 0 and "--since must be a duration ago like 30s" in out
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
    if config.backend == "citus":
        args += ["--citus", config.nodes[0].dsn]
    else:
        for node in config.nodes:
            args += ["--node", node.dsn]
    try:
        for _ in range(2):  # idempotent
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
        written = load_config(out_file, environ={})
        assert written.partition_count == 16 and written.nodes == config.nodes
        assert written.backend == config.backend
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
        assert "serving app 'tests'" in line, line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_one_node_down_slows_only_calls_that_need_it(
    config: ClusterConfig, restore_nodes: LocalCluster, tmp_path: Path, data_nodes: list[NodeConfig]
) -> None:
    """Issue 9: with one node down, every CLI call waited out the connect timeout, status showed
    the down node with 0 partitions and `cluster check` refused to check anything."""
    cluster = restore_nodes
    down = data_nodes[1].name
    # A long connect timeout makes waiting on the down node obvious.
    slow_file = tmp_path / "slow.toml"
    slow_file.write_text(config.replace(connect_timeout=20.0).to_toml())

    async def ids() -> tuple[str, str]:
        async with Client(config, app=apps.app) as client:
            healthy = next(
                i
                for i in (f"down-{uuid.uuid4().hex}" for _ in range(1000))
                if client.route(i)[1] != down
            )
            await client.start(apps.echo, 1, workflow_id=healthy)
            stranded = next(
                i
                for i in (f"down-{uuid.uuid4().hex}" for _ in range(1000))
                if client.route(i)[1] == down
            )
            return healthy, stranded

    healthy, stranded = run(ids())
    cluster.stop_node(local_node(cluster, data_nodes[1]), mode="immediate")
    started = time.monotonic()
    code, out = invoke(slow_file, "get", healthy)
    assert code == 0 and '"status": "pending"' in out
    code, out = invoke(slow_file, "get", stranded)
    assert code != 0 and "NodeUnavailable" in out and down in out
    # Far below the 20 s connect timeout: a refused connection is known at once.
    assert time.monotonic() - started < 10

    code, out = invoke(slow_file, "cluster", "status", "--json")
    assert code == 0, out
    status = json.loads(out)
    node = next(n for n in status["nodes"] if n["name"] == down)
    assert not node["reachable"] and node["partitions_placed"] > 0
    assert status["rebalance_in_progress"] is False
    code, out = invoke(slow_file, "cluster", "check")
    assert code == 1
    assert f"{down} is unreachable" in out and "owned by nobody" not in out


def test_start_input_from_a_file_or_stdin_and_app_by_path(
    config_file: Path, tmp_path: Path
) -> None:
    """Issue 9: --input cannot carry the documented 1 MiB (argv limit); --app module:attr
    worked only from the module's directory."""
    big = {"blob": "x" * (900 * 1024)}
    input_file = tmp_path / "input.json"
    input_file.write_text(json.dumps(big))
    wf_id = f"cli-file-{uuid.uuid4().hex}"
    apps_file = Path(apps.__file__)
    code, out = invoke(
        config_file, "start", "echo", "--app", f"{apps_file}:app", "--input-file",
        str(input_file), "--id", wf_id,
    )  # fmt: skip
    assert code == 0, out
    runner = CliRunner()
    stdin_id = f"cli-stdin-{uuid.uuid4().hex}"
    result = runner.invoke(
        cli,
        ["--config", str(config_file), "start", "echo", "--app", "tests.apps:app",
         "--input-file", "-", "--id", stdin_id],
        input='{"from": "stdin"}',
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    async def inputs() -> tuple[object, object]:
        async with Client(load_config(str(config_file))) as client:
            return (await client.get(wf_id)).input, (await client.get(stdin_id)).input

    assert run(inputs()) == (big, {"from": "stdin"})
    code, out = invoke(config_file, "start", "echo", "--app", "tests.apps:app", "--input", "1",
                       "--input-file", str(input_file))  # fmt: skip
    assert code != 0 and "give the input once" in out
    code, out = invoke(config_file, "start", "echo", "--app", "nowhere/shop.py:app")
    assert code != 0 and "--app path/to/file.py:app" in out
    code, out = invoke(config_file, "list", "--status", "sleeping")
    assert code != 0 and "pending" in out  # the choices are listed


def test_signal_and_events_from_the_command_line(config: ClusterConfig, config_file: Path) -> None:
    """`signal` stores a signal (a resend with the same --signal-id is a no-op), `list` shows
    what a workflow waits for, `events` prints what it published; bad input is refused with
    the fix named, and nothing is stored."""
    wf_id = f"cli-signal-{uuid.uuid4().hex}"
    code, out = invoke(
        config_file, "start", "collect", "--app", "tests.apps:app", "--id", wf_id, "--input", "1"
    )
    assert code == 0, out
    code, out = invoke(config_file, "signal", wf_id, "item", "--payload", "{not json")
    assert code != 0 and "--payload is not valid JSON" in out
    code, out = invoke(config_file, "signal", wf_id, "shardflow.child", "--payload", "1")
    assert code != 0 and "reserves" in out
    code, out = invoke(config_file, "events", wf_id, "--key", "received", "--timeout", "0.1")
    assert code != 0 and "EventTimeout" in out and f"shardflow events {wf_id}" in out
    for expected in ("sent", "already sent"):
        code, out = invoke(
            config_file, "signal", wf_id, "item", "--payload", '{"n": 1}', "--signal-id", "s-1"
        )
        assert code == 0 and out.startswith(expected), out

    async def go() -> None:
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            assert await client.result(wf_id, timeout=30) == [{"n": 1}]

    run(go())
    code, out = invoke(config_file, "events", wf_id)
    assert code == 0 and json.loads(out) == {"received": 1}
    code, out = invoke(config_file, "events", wf_id, "--key", "received")
    assert code == 0 and json.loads(out) == 1
    code, out = invoke(config_file, "signal", wf_id, "item")
    assert code != 0 and "SignalRefused" in out and "succeeded" in out
    code, out = invoke(config_file, "get", wf_id, "--steps")
    assert code == 0 and "received signal 'item' (id s-1)" in out
    assert "published event 'received'" in out
