"""Faults from docs/reliability.md: poison workflows, paused workers, ambiguous commits, network
faults on one node through a TCP proxy, a killed LISTEN connection, secrets, the audit log."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardflow import Client, NodeUnavailable, Worker, WorkflowFailed
from shardflow.cli import cli
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.storage.conninfo import make_conninfo, parse_conninfo
from shardflow.worker.listener import Listener
from tests import apps
from tests.fault_proxy import FaultProxy
from tests.helpers import run, wait_until, worker_command


def ids_on(client: Client, node: str, n: int, prefix: str) -> list[str]:
    found: list[str] = []
    while len(found) < n:
        candidate = f"{prefix}-{uuid.uuid4().hex}"
        if client.route(candidate)[1] == node:
            found.append(candidate)
    return found


@asynccontextmanager
async def proxied(
    config: ClusterConfig, node: NodeConfig
) -> AsyncIterator[tuple[FaultProxy, ClusterConfig]]:
    """A fault proxy in front of data node ``node`` and a config that reaches it through the
    proxy (on Citus: a configured address for that worker, which overrides the published one)."""
    params = parse_conninfo(node.dsn)
    proxy = FaultProxy(params["host"], int(params["port"]))
    port = await proxy.start()
    # In clear: the proxy matches statements in the traffic (Citus turns TLS on by default).
    through = NodeConfig(
        name=node.name, dsn=make_conninfo({**params, "port": str(port), "sslmode": "disable"})
    )
    if any(n.name == node.name for n in config.nodes):
        nodes = tuple(through if n.name == node.name else n for n in config.nodes)
    else:
        nodes = (*config.nodes, through)
    try:
        yield proxy, config.replace(nodes=nodes)
    finally:
        await proxy.close()


@pytest.mark.timeout(120)
def test_poison_workflow_is_dead_lettered_then_requeued(
    config: ClusterConfig, config_file: Path, tmp_path: Path
) -> None:
    cure = tmp_path / "cured"

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            poison = await client.start(
                apps.poison, str(cure), workflow_id=f"poison-{uuid.uuid4().hex}"
            )
            healthy = [await client.start(apps.three_steps, 1) for _ in range(10)]
            crashes = 0
            argv, options = worker_command(config_file)
            # A supervisor that restarts the worker whenever the poison kills it.
            while await client.status(poison.workflow_id) != "dead":
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    **options,
                )
                try:
                    await asyncio.wait_for(proc.wait(), timeout=15)
                    crashes += 1
                except TimeoutError:
                    pass  # the worker is alive: the poison is dead-lettered by now
                finally:
                    if proc.returncode is None:
                        proc.terminate()
                        await proc.wait()
                assert crashes <= config.worker.max_lease_expiries + 1, "crash loop"
            assert crashes == config.worker.max_lease_expiries
            with pytest.raises(WorkflowFailed) as info:
                await poison.result(timeout=1)
            assert info.value.error["type"] == "DeadLettered"
            # A worker keeps serving everything else, with no crash loop.
            async with Worker(apps.app, config):
                assert [await h.result(timeout=30) for h in healthy] == [4] * 10
                cure.touch()
                result = await asyncio.to_thread(  # the CLI runs its own event loop
                    CliRunner().invoke,
                    cli,
                    ["--config", str(config_file), "requeue", poison.workflow_id],
                )
                assert result.exit_code == 0 and "requeued" in result.output
                assert await poison.result(timeout=30) == "cured"
            async with ClusterAdmin(config) as admin:
                log = await admin.audit_log(limit=200)
            assert any(r["action"] == "requeue" and r["target"] == poison.workflow_id for r in log)

    run(go(), timeout=110)


@pytest.mark.timeout(90)
def test_paused_worker_past_its_lease_commits_nothing(
    config: ClusterConfig, config_file: Path, tmp_path: Path
) -> None:
    paths = {
        "log": str(tmp_path / "log"),
        "marker": str(tmp_path / "marker"),
        "gate": str(tmp_path / "gate"),
    }

    async def go() -> None:
        wf_id = f"paused-{uuid.uuid4().hex}"
        argv, options = worker_command(config_file)
        argv.insert(argv.index("--config"), "-v")  # info logs: the lease loss is one
        paused = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, **options
        )
        log_lines: list[str] = []

        async def read_log() -> None:
            assert paused.stderr is not None
            async for line in paused.stderr:
                log_lines.append(line.decode(errors="replace"))

        reader = asyncio.ensure_future(read_log())
        try:
            async with Client(config, app=apps.app) as client:
                await client.start(apps.gated, paths, workflow_id=wf_id)
                await wait_until(
                    lambda: Path(paths["marker"]).exists(),
                    timeout=30,
                    what="the step to run in the worker to pause",
                )
                paused.send_signal(signal.SIGSTOP)
                Path(paths["marker"]).unlink()
                Path(paths["gate"]).touch()
                async with Worker(apps.app, config):
                    assert await client.result(wf_id, timeout=30) == "through the gate"
                steps_before = await client.steps(wf_id)
                paused.send_signal(signal.SIGCONT)  # resumes mid-step, past its lease
                # Wait until the resumed worker has tried (and failed) to record its step.
                await wait_until(
                    lambda: any(f"lost the lease of {wf_id}" in x for x in log_lines),
                    timeout=20,
                    what="the resumed worker to find its lease gone",
                )
                assert await client.steps(wf_id) == steps_before
                # Its timeouts fired because it was paused, not because a node was slow: the
                # log must not blame a healthy node (issue 9).
                assert not any("did not answer within" in x for x in log_lines)
                record = await client.get(wf_id)
                assert [s.step_seq for s in steps_before] == [0, 1, 2]
                assert record.claim_count == 2
        finally:
            if paused.returncode is None:
                paused.send_signal(signal.SIGCONT)
                paused.terminate()
            await paused.wait()
            await reader
        lines = Path(paths["log"]).read_text().split()
        assert lines.count("first-step") == 1 and lines.count("last-step") == 1

    run(go(), timeout=80)


@pytest.mark.timeout(60)
def test_ambiguous_commit_of_a_start_is_resolved_by_lookup(
    config: ClusterConfig, data_nodes: list[NodeConfig]
) -> None:
    async def go() -> None:
        node = data_nodes[0].name
        async with (
            proxied(config, data_nodes[0]) as (proxy, via_proxy),
            Client(via_proxy, app=apps.app) as client,
        ):
            (wf_id,) = ids_on(client, node, 1, "ambiguous")
            # A start is one autocommit statement: its answer comes after the commit.
            proxy.drop_after(b'INSERT INTO "shardflow".workflows')
            handle = await client.start(apps.three_steps, 1, workflow_id=wf_id)
            assert proxy.dropped == 1, "the commit's answer was lost"
            assert handle.created is None  # resolved by looking it up
            again = await client.start(apps.three_steps, 1, workflow_id=wf_id)
            assert again.created is False
        async with Worker(apps.app, config), Client(config, app=apps.app) as direct:
            assert await direct.result(wf_id, timeout=30) == 4
            assert [s.step_seq for s in await direct.steps(wf_id)] == [0, 1, 2]

    run(go(), timeout=50)


@pytest.mark.timeout(90)
def test_ambiguous_commit_of_a_checkpoint_is_not_recorded_twice(
    config: ClusterConfig, data_nodes: list[NodeConfig]
) -> None:
    async def go() -> None:
        node = data_nodes[1].name
        async with Client(config, app=apps.app) as client:
            (wf_id,) = ids_on(client, node, 1, "ambiguous-step")
            async with proxied(config, data_nodes[1]) as (proxy, via_proxy):
                # Plain: one autocommit statement. Citus: a transaction, committed at COMMIT.
                then = b"COMMIT" if config.backend == "citus" else None
                proxy.drop_after(b'INSERT INTO "shardflow".steps', then=then)
                await client.start(apps.three_steps, 1, workflow_id=wf_id)
                async with Worker(apps.app, via_proxy) as worker:
                    assert await client.result(wf_id, timeout=40) == 4
                    assert proxy.dropped == 1
                    assert worker.outcomes["error"] >= 1  # that run was abandoned
            steps = await client.steps(wf_id)
            assert [s.step_seq for s in steps] == [0, 1, 2]
            # Replay found the checkpoint whose answer was lost: step 0 ran once.
            assert apps.executions[(wf_id, "add_one")] == 3

    run(go(), timeout=80)


@pytest.mark.timeout(90)
def test_blackholed_node_fails_fast_and_others_keep_serving(
    config: ClusterConfig, data_nodes: list[NodeConfig]
) -> None:
    async def go() -> None:
        node = data_nodes[-1].name
        async with (
            proxied(config, data_nodes[-1]) as (proxy, via_proxy),
            Worker(apps.app, via_proxy),
            Client(via_proxy, app=apps.app) as client,
        ):
            stranded = ids_on(client, node, 3, "blackhole")
            for wf_id in stranded:
                await client.start(apps.three_steps, 1, workflow_id=wf_id)
            proxy.blackhole = True
            others = [
                i
                for n in data_nodes
                if n.name != node
                for i in ids_on(client, n.name, 5, "healthy")
            ]
            for wf_id in others:
                await client.start(apps.three_steps, 1, workflow_id=wf_id)
            results = await asyncio.gather(*(client.result(i, timeout=30) for i in others))
            assert results == [4] * len(others)
            if config.backend == "citus":
                # The coordinator still reaches the worker: a read goes through it.
                before = client.coordinator_fallbacks
                assert (await client.get(stranded[0])).workflow_id == stranded[0]
                assert client.coordinator_fallbacks > before
            else:
                with pytest.raises(NodeUnavailable):
                    await client.get(stranded[0])
            proxy.heal()
            proxy.reset()  # connections stuck in the blackhole are dropped
            results = await asyncio.gather(*(client.result(i, timeout=45) for i in stranded))
            assert results == [4] * len(stranded)

    run(go(), timeout=80)


@pytest.mark.timeout(60)
def test_reset_connections_and_killed_listen_recover(
    config: ClusterConfig, data_nodes: list[NodeConfig]
) -> None:
    async def go() -> None:
        node = data_nodes[0].name
        async with (
            proxied(config, data_nodes[0]) as (proxy, via_proxy),
            Worker(apps.app, via_proxy) as worker,
            Client(config, app=apps.app) as client,
        ):
            listener = next(s for s in worker._node_services[node] if isinstance(s, Listener))
            await wait_until(lambda: proxy._writers != set(), what="worker connections")
            proxy.reset()  # kills the LISTEN connection and every pooled one
            ids = ids_on(client, node, 10, "reset")
            before = listener.notifications
            for wf_id in ids:
                await client.start(apps.three_steps, 1, workflow_id=wf_id)
            results = await asyncio.gather(*(client.result(i, timeout=30) for i in ids))
            assert results == [4] * len(ids)

            # Work was found; and the listener came back: it hears new starts again
            # (starts made while it was reconnecting were found by polling).
            async def heard_again() -> bool:
                await client.start(apps.echo, 1, workflow_id=ids_on(client, node, 1, "re")[0])
                return listener.notifications > before

            await wait_until(heard_again, timeout=15, what="the listener to reconnect")

    run(go(), timeout=50)


def test_password_never_in_argv_logs_or_errors(
    config: ClusterConfig, config_file: Path, tmp_path: Path
) -> None:
    passfile = Path(parse_conninfo(config.nodes[0].dsn)["passfile"])
    canary = passfile.read_text().strip().rsplit(":", 1)[1]
    # The same cluster, with the password from PGPASSWORD instead of the password file.
    nodes = tuple(
        NodeConfig(
            name=n.name,
            dsn=make_conninfo({k: v for k, v in parse_conninfo(n.dsn).items() if k != "passfile"}),
        )
        for n in config.nodes
    )
    env_config = tmp_path / "env.toml"
    env_config.write_text(config.replace(nodes=nodes).to_toml())
    argv, options = worker_command(env_config)
    argv.insert(argv.index("--config"), "-vv")
    proc = subprocess.Popen(
        argv,
        stderr=subprocess.PIPE,
        text=True,
        cwd=options["cwd"],
        env={**options["env"], "PGPASSWORD": canary},
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving app 'tests'" in line:
                break
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert canary.encode() not in cmdline
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert canary not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
    shown = CliRunner().invoke(cli, ["--config", str(env_config), "config", "show"])
    assert shown.exit_code == 0 and canary not in shown.output
    wrong = CliRunner(env={"PGPASSWORD": canary + "-wrong"}).invoke(
        cli, ["--config", str(env_config), "cluster", "status"]
    )
    assert canary not in wrong.output
    assert "NO" in wrong.output  # every node refused the wrong password


def test_cancel_is_audited(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Client(config, app=apps.app, actor="alice@test") as client:
            handle = await client.start(apps.echo, 1)
            assert await handle.cancel()
        async with ClusterAdmin(config) as admin:
            log = await admin.audit_log(limit=500)
        row = next(r for r in log if r["target"] == handle.workflow_id)
        assert (row["actor"], row["action"]) == ("alice@test", "cancel")

    run(go())
