"""Bad input is refused with a typed error before anything is written."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shardflow import (
    Client,
    InvalidInput,
    InvalidWorkflowId,
    PayloadNotSerializable,
    PayloadTooLarge,
    UnknownWorkflow,
    WorkflowNotFound,
)
from shardflow.cli import cli
from shardflow.config import ClusterConfig
from tests import apps
from tests.helpers import run


async def assert_not_written(client: Client, workflow_id: str) -> None:
    with pytest.raises(WorkflowNotFound):
        await client.get(workflow_id)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"when": object()}, PayloadNotSerializable),
        ({1: "int key"}, PayloadNotSerializable),
        ("NUL \x00 inside", PayloadNotSerializable),
        (float("nan"), PayloadNotSerializable),
        ("x" * (1024 * 1024 + 1), PayloadTooLarge),
    ],
)
def test_bad_payloads_write_nothing(
    config: ClusterConfig, payload: Any, error: type[Exception]
) -> None:
    async def go() -> None:
        wf_id = f"bad-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as client:
            with pytest.raises(error) as info:
                await client.start(apps.echo, payload, workflow_id=wf_id)
            assert isinstance(info.value, InvalidInput)
            await assert_not_written(client, wf_id)

    run(go())


@pytest.mark.parametrize("workflow_id", ["", "   ", "x" * 201, "nul\x00id", "\udcff"])
def test_bad_ids_write_nothing(config: ClusterConfig, workflow_id: str) -> None:
    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            with pytest.raises(InvalidWorkflowId):
                await client.start(apps.echo, 1, workflow_id=workflow_id)
            with pytest.raises(InvalidWorkflowId):
                await client.start(apps.echo, 1, routing_key=workflow_id)
            # Lookups apply the same checks (a NUL once reached the database as a DataError).
            with pytest.raises(InvalidWorkflowId):
                await client.get(workflow_id)
            with pytest.raises(InvalidWorkflowId):
                await client.cancel(workflow_id)
            page = await client.list(name="echo", limit=1000)
            assert workflow_id not in {r.workflow_id for r in page.items}

    run(go())


def test_unknown_workflow_name(config: ClusterConfig) -> None:
    async def go() -> None:
        wf_id = f"unknown-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as client:
            with pytest.raises(UnknownWorkflow, match="known: "):
                await client.start("no_such_workflow", 1, workflow_id=wf_id)
            await assert_not_written(client, wf_id)
        async with Client(config) as client:  # no app: names cannot be checked
            with pytest.raises(UnknownWorkflow, match="app="):
                await client.start("echo", 1, workflow_id=wf_id)
            await assert_not_written(client, wf_id)

    run(go())


def test_list_arguments_checked(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Client(config) as client:
            with pytest.raises(InvalidInput, match="status must be"):
                await client.list(status="finished")
            with pytest.raises(InvalidInput, match="limit"):
                await client.list(limit=0)
            with pytest.raises(InvalidInput, match="cursor"):
                await client.list(cursor="not-a-cursor")
            with pytest.raises(InvalidInput, match="timezone-aware"):
                await client.list(created_since=datetime(2026, 1, 1))
            with pytest.raises(InvalidInput, match="must be before"):
                now = datetime.now(UTC)
                await client.list(created_since=now, created_until=now - timedelta(hours=1))

    run(go())


hostile_text = st.text(max_size=300) | st.sampled_from(
    ["'; DROP TABLE shardflow.workflows; --", "%(partition)s", "{schema}", "\\x00", "\u202e"]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workflow_id=hostile_text,
    payload=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(hostile_text, c, max_size=4),
        max_leaves=12,
    ),
)
@example(workflow_id="\x00", payload=None)
def test_fuzzed_starts_round_trip_or_are_refused(
    config: ClusterConfig, workflow_id: str, payload: Any
) -> None:
    async def go() -> None:
        wf_id = f"fuzz-{uuid.uuid4().hex[:8]}-{workflow_id}"
        async with Client(config, app=apps.app) as client:
            try:
                handle = await client.start(apps.echo, payload, workflow_id=wf_id)
            except InvalidInput:
                # An invalid id cannot even be looked up; a valid one must not exist.
                with contextlib.suppress(InvalidInput):
                    await assert_not_written(client, wf_id)
                return
            record = await client.get(handle.workflow_id)
            assert record.workflow_id == wf_id
            assert record.input == payload
            await client.cancel(wf_id)

    run(go())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["echo", "no_input"]) | hostile_text,
    input_text=st.builds(
        json.dumps,
        st.recursive(
            st.none() | st.integers() | hostile_text,
            lambda c: st.lists(c, max_size=3) | st.dictionaries(hostile_text, c, max_size=3),
            max_leaves=6,
        ),
    )
    | hostile_text,
    workflow_id=hostile_text,
)
def test_fuzzed_cli_start_never_crashes(
    config_file: Path, name: str, input_text: str, workflow_id: str
) -> None:
    """Hostile CLI arguments end in a result or a one-line error, never a traceback."""
    args = [
        "--config",
        str(config_file),
        "start",
        name,
        "--app",
        "tests.apps:app",
        "--input",
        input_text,
        "--id",
        workflow_id,
    ]
    result = CliRunner().invoke(cli, args)
    if result.exit_code == 0:
        created = json.loads(result.output.splitlines()[0])
        assert created["workflow_id"] == workflow_id
        return
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception,
        result.output,
    )
    assert "Traceback" not in result.output
    assert result.output.startswith(("Error:", "Usage:"))
