"""Transactional steps: the step's writes and its checkpoint commit together, exactly once,
including when the worker is killed -9 on either side of the commit."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest

from shardflow import App, Client, ConfigurationError, Worker
from shardflow.config import ClusterConfig
from shardflow.faults import WORKER_FAULT_ENV, WORKER_FAULT_POINTS
from tests import apps
from tests.helpers import run, wait_until, worker_command
from tests.invariants import check_invariants

pytestmark = pytest.mark.usefixtures("tx_effects_table")

TX_STEPS = frozenset({"debit", "debit_failing_first", "debit_at_gate"})


def test_transactional_step_effects_commit_once(config: ClusterConfig) -> None:
    async def go() -> None:
        ids = [f"tx-{uuid.uuid4().hex}" for _ in range(40)]
        async with Client(config, app=apps.app) as client, Worker(apps.app, config):
            for wf_id in ids:
                await client.start(apps.transfer, 5, workflow_id=wf_id)
            for wf_id in ids:
                # Each step sees its own write, and the first one's, in the running total.
                assert await client.result(wf_id, timeout=30) == [5, 10]
            report = await check_invariants(
                config, client, ids, steps_per_workflow=2, tx_steps=TX_STEPS
            )
        report.assert_ok()
        assert report.tx_effects == 2 * len(ids)

    run(go())


def test_failed_attempt_rolls_its_writes_back(config: ClusterConfig) -> None:
    async def go() -> None:
        wf_id = f"tx-retry-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as client, Worker(apps.app, config):
            await client.start(apps.transfer_with_retry, 7, workflow_id=wf_id)
            # Only the second attempt's row is in the total: the first one rolled back.
            assert await client.result(wf_id, timeout=30) == 7
            [step] = await client.steps(wf_id)
            assert step.attempts == 2
            report = await check_invariants(config, client, [wf_id], tx_steps=TX_STEPS)
        report.assert_ok()
        assert report.tx_effects == 1

    run(go())


def test_lease_lost_inside_the_transaction_rolls_the_effect_back(
    config: ClusterConfig, tmp_path: Path
) -> None:
    paths = {"marker": str(tmp_path / "written"), "gate": str(tmp_path / "gate")}

    async def go() -> None:
        wf_id = f"tx-cancel-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as client, Worker(apps.app, config) as worker:
            await client.start(apps.transfer_at_gate, paths, workflow_id=wf_id)
            await wait_until(lambda: Path(paths["marker"]).exists(), what="the effect write")
            # The workflow is cancelled while its step's transaction is open.
            assert await client.cancel(wf_id)
            Path(paths["gate"]).touch()
            await wait_until(lambda: worker.outcomes["lost"] >= 1, what="the run to end")
            assert (await client.get(wf_id)).status == "cancelled"
            assert await client.steps(wf_id) == []
            report = await check_invariants(config, client, [wf_id], tx_steps=TX_STEPS)
        assert report.tx_effects == 0, "the effect of a run that lost its lease committed"

    run(go())


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fault", WORKER_FAULT_POINTS)
def test_worker_killed_at_a_commit_point(
    config: ClusterConfig, config_file: Path, fault: str
) -> None:
    async def go() -> None:
        wf_id = f"tx-kill-{fault}-{uuid.uuid4().hex}"
        argv, options = worker_command(config_file)
        options["env"] = {**options["env"], WORKER_FAULT_ENV: fault}
        async with Client(config, app=apps.app) as client:
            victim = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, **options
            )
            try:
                await client.start(apps.transfer, 3, workflow_id=wf_id)
                assert await asyncio.wait_for(victim.wait(), 30) == -signal.SIGKILL
            finally:
                if victim.returncode is None:
                    victim.kill()
            committed = await client.steps(wf_id)
            # Killed before the commit: neither the effect nor the checkpoint exists.
            # Killed after it: both do, and the step must not run again.
            assert len(committed) == (1 if fault == "tx_after_commit" else 0)
            before = await check_invariants(
                config, client, [wf_id], tx_steps=TX_STEPS, deadline=0.1
            )
            assert before.tx_effects == len(committed)
            async with Worker(apps.app, config):
                assert await client.result(wf_id, timeout=30) == [3, 6]
            report = await check_invariants(
                config, client, [wf_id], steps_per_workflow=2, tx_steps=TX_STEPS
            )
        report.assert_ok()
        assert report.tx_effects == 2

    run(go(), timeout=80)


def test_transactional_step_must_be_async_and_take_a_connection() -> None:
    app = App("tx-bad")
    with pytest.raises(ConfigurationError, match="async def"):
        app.transaction(lambda conn: None)

    async def no_params() -> None: ...

    with pytest.raises(ConfigurationError, match="connection as its first"):
        app.transaction(no_params)

    with pytest.raises(ConfigurationError, match="retries"):
        app.transaction(retries=-1)


def test_transactional_step_outside_a_workflow_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="inside a workflow"):
        run(apps.debit(1))
