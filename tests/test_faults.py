"""Faults: a worker killed mid-step, a node stopped, a step that starves the event loop."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest

from shardflow import Client, NodeUnavailable, Worker
from shardflow.cluster.local import LocalCluster
from shardflow.config import ClusterConfig, NodeConfig
from tests import apps
from tests.helpers import local_node, run, spawn_worker, wait_until


@pytest.mark.timeout(90)
def test_worker_killed_mid_step_completes_elsewhere(
    config: ClusterConfig, config_file: Path, tmp_path: Path
) -> None:
    paths = {
        "log": str(tmp_path / "steps.log"),
        "marker": str(tmp_path / "gate-step-running"),
        "gate": str(tmp_path / "gate-open"),
    }

    async def go() -> None:
        wf_id = f"kill-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as client:
            victim = await spawn_worker(config_file)
            try:
                await client.start(apps.gated, paths, workflow_id=wf_id)
                await wait_until(
                    lambda: Path(paths["marker"]).exists(),
                    timeout=30,
                    what="the step to start in the worker process",
                )
                victim.send_signal(signal.SIGKILL)
                assert await victim.wait() == -signal.SIGKILL
            finally:
                if victim.returncode is None:
                    victim.kill()
            Path(paths["gate"]).touch()
            async with Worker(apps.app, config) as worker:
                assert await client.result(wf_id, timeout=30) == "through the gate"
                steps = await client.steps(wf_id)
                record = await client.get(wf_id)
                # The rescuing worker was handed the workflow by the reaper.
                assert worker.outcomes["succeeded"] >= 1
        lines = Path(paths["log"]).read_text().split()
        assert lines.count("first-step") == 1, "a completed step is never re-run"
        assert lines.count("gate-step") == 2, "the interrupted step ran again"
        assert lines.count("last-step") == 1
        assert [s.step_seq for s in steps] == [0, 1, 2], "exactly one checkpoint per step"
        assert record.claim_count == 2

    run(go(), timeout=80)


@pytest.mark.timeout(120)
def test_stopped_node_only_affects_its_own_partitions(
    config: ClusterConfig, restore_nodes: LocalCluster, data_nodes: list[NodeConfig]
) -> None:
    cluster = restore_nodes
    down = data_nodes[1].name

    async def go() -> None:
        async with Client(config, app=apps.app) as client:

            def ids_on(node: str, n: int) -> list[str]:
                found: list[str] = []
                while len(found) < n:
                    candidate = f"outage-{uuid.uuid4().hex}"
                    if client.route(candidate)[1] == node:
                        found.append(candidate)
                return found

            stranded = ids_on(down, 5)
            for wf_id in stranded:
                await client.start(apps.three_steps, 0, workflow_id=wf_id)
            cluster.stop_node(local_node(cluster, data_nodes[1]), mode="immediate")

            async with Worker(apps.app, config):
                healthy = [
                    i for node in data_nodes if node.name != down for i in ids_on(node.name, 10)
                ]
                for wf_id in healthy:
                    await client.start(apps.three_steps, 0, workflow_id=wf_id)
                results = await asyncio.gather(*(client.result(i, timeout=30) for i in healthy))
                assert results == [3] * len(healthy)

                # Starts for the stopped node fail fast with a typed error.
                with pytest.raises(NodeUnavailable) as info:
                    await client.start(apps.three_steps, 0, workflow_id=ids_on(down, 1)[0])
                assert info.value.node == down

                cluster.start_node(local_node(cluster, data_nodes[1]))
                results = await asyncio.gather(*(client.result(i, timeout=45) for i in stranded))
                assert results == [3] * len(stranded)
            for wf_id in stranded:
                assert [s.step_seq for s in await client.steps(wf_id)] == [0, 1, 2]

    run(go(), timeout=110)


@pytest.mark.timeout(60)
def test_heartbeat_survives_a_step_that_blocks_the_event_loop(config: ClusterConfig) -> None:
    async def go() -> None:
        wf_id = f"hog-{uuid.uuid4().hex}"
        hold = config.worker.lease_seconds * 1.7
        async with Worker(apps.app, config) as worker, Client(config, app=apps.app) as client:
            await client.start(apps.hog, hold, workflow_id=wf_id)
            assert await client.result(wf_id, timeout=40) == "done"
            assert worker.outcomes["lost"] == 0
        # Longer than the lease, yet never reaped and re-run: the heartbeat kept it.
        assert apps.executions[(wf_id, "hog")] == 1

    run(go(), timeout=55)
