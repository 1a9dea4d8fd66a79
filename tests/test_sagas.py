"""Sagas (issue 11): registered compensations run newest first, each once, as durable steps,
also when the worker is killed in the middle of them."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from shardflow import Client, Worker, WorkflowCancelled, WorkflowFailed
from shardflow.config import ClusterConfig
from tests import apps
from tests.helpers import run, spawn_worker, wait_until

UNDO_ORDER = ["unreserve-hotel", "unreserve-flight"]
SAGA_STEPS = [
    "reserve",
    "shardflow.compensate:unreserve",
    "reserve",
    "shardflow.compensate:unreserve",
    "charge_declined",
    "unreserve",
    "unreserve",
]


def _undo_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().split() if line.startswith("unreserve")]


def test_a_failed_saga_runs_its_compensations_newest_first_once(
    config: ClusterConfig, tmp_path: Path
) -> None:
    paths = {"log": str(tmp_path / "effects.log")}

    async def go() -> None:
        wf_id = f"saga-{uuid.uuid4().hex}"
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            await client.start(apps.trip, paths, workflow_id=wf_id)
            with pytest.raises(WorkflowFailed) as failed:
                await client.result(wf_id, timeout=30)
            steps = await client.steps(wf_id)
        error = failed.value.error
        assert error["type"] == "StepFailedError" and "card declined" in error["message"]
        assert error["compensations"] == ["unreserve", "unreserve"]
        assert "compensation_failures" not in error
        assert [s.step_name for s in steps] == SAGA_STEPS
        assert [s.output for s in steps[-2:]] == ["released hotel", "released flight"]
        assert _undo_lines(Path(paths["log"])) == UNDO_ORDER

    run(go())


def test_compensations_resume_after_the_worker_is_killed_among_them(
    config: ClusterConfig, config_file: Path, tmp_path: Path
) -> None:
    """The first compensation (hotel) blocks at a gate; its worker is killed there. Another
    worker replays the failure and the registrations from the checkpoints and runs both
    compensations: each effect once, newest first."""
    paths = {
        "log": str(tmp_path / "effects.log"),
        "gate_at": "hotel",
        "marker": str(tmp_path / "undo-running"),
        "gate": str(tmp_path / "gate-open"),
    }

    async def go() -> None:
        wf_id = f"saga-kill-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as client:
            victim = await spawn_worker(config_file)
            try:
                await client.start(apps.trip, paths, workflow_id=wf_id)
                await wait_until(
                    lambda: Path(paths["marker"]).exists(),
                    timeout=30,
                    what="the first compensation to start in the worker process",
                )
                victim.send_signal(signal.SIGKILL)
                assert await victim.wait() == -signal.SIGKILL
            finally:
                if victim.returncode is None:
                    victim.kill()
            assert _undo_lines(Path(paths["log"])) == []
            Path(paths["gate"]).touch()
            async with Worker(apps.app, config):
                with pytest.raises(WorkflowFailed) as failed:
                    await client.result(wf_id, timeout=30)
                steps = await client.steps(wf_id)
        assert failed.value.error["compensations"] == ["unreserve", "unreserve"]
        assert [s.step_name for s in steps] == SAGA_STEPS
        assert _undo_lines(Path(paths["log"])) == UNDO_ORDER
        reserves = [x for x in Path(paths["log"]).read_text().split() if x.startswith("reserve")]
        assert reserves == ["reserve-flight", "reserve-hotel"], "no forward step ran again"

    run(go(), timeout=90)


@pytest.mark.parametrize(
    ("kind", "error_type", "says"),
    [
        ("not a step", "InvalidInput", "registered with @app.step"),
        ("not JSON", "PayloadNotSerializable", "which is not JSON"),
    ],
)
def test_a_bad_compensation_fails_the_workflow_and_records_nothing(
    config: ClusterConfig, kind: str, error_type: str, says: str
) -> None:
    async def go() -> None:
        wf_id = f"saga-bad-{uuid.uuid4().hex}"
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            await client.start(apps.bad_compensation, kind, workflow_id=wf_id)
            with pytest.raises(WorkflowFailed) as failed:
                await client.result(wf_id, timeout=30)
            assert await client.steps(wf_id) == []
        assert failed.value.error["type"] == error_type
        assert says in failed.value.error["message"]

    run(go())


def test_cancelling_a_saga_runs_its_compensations_then_ends_cancelled(
    config: ClusterConfig, tmp_path: Path
) -> None:
    paths = {"log": str(tmp_path / "effects.log")}

    async def go() -> None:
        wf_id = f"saga-cancel-{uuid.uuid4().hex}"
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            await client.start(apps.trip_waiting_for_payment, paths, workflow_id=wf_id)

            async def waiting() -> bool:
                return (await client.get(wf_id)).waiting_for == "paid"

            await wait_until(waiting, what="the saga to wait for its payment")
            assert await client.cancel(wf_id)
            assert not await client.cancel(wf_id), "a second cancel changes nothing"
            with pytest.raises(WorkflowCancelled):
                await client.result(wf_id, timeout=30)
            record = await client.get(wf_id)
            steps = await client.steps(wf_id)
        assert record.status == "cancelled"
        assert record.error is not None
        assert record.error["compensations"] == ["unreserve", "unreserve"]
        assert [s.step_name for s in steps][-3:] == [
            "shardflow.cancelled",
            "unreserve",
            "unreserve",
        ]
        assert _undo_lines(Path(paths["log"])) == UNDO_ORDER

    run(go())
