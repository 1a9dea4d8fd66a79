"""OpenTelemetry tracing (issue 12), both backends: a start's trace is continued by the worker
that runs the workflow (through the trace context stored with it), steps, checkpoints and the
completion are children of the run, children continue their parent's trace, a claim links to
the workflows it took; with no SDK configured nothing is traced and nothing stored."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from shardflow import Client, Worker, tracing
from shardflow.config import ClusterConfig
from tests import apps
from tests.helpers import REPO, run


@pytest.mark.timeout(150)
def test_a_workflow_trace_crosses_from_the_client_to_the_worker(
    config_file: Path, tmp_path: Path
) -> None:
    run_id = f"trace-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "spans.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.trace_probe", str(config_file), str(out), run_id],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    spans: list[dict[str, Any]] = json.loads(out.read_text())
    by_id = {s["span_id"]: s for s in spans}

    def named(name: str, wf_id: str) -> list[dict[str, Any]]:
        return [
            s
            for s in spans
            if s["name"] == name and s["attributes"].get("shardflow.workflow_id") == wf_id
        ]

    (request,) = [s for s in spans if s["name"] == "request"]
    (start,) = named("shardflow.start three_steps", f"{run_id}-steps")
    assert start["parent_id"] == request["span_id"] and start["kind"] == "PRODUCER"
    (run_span,) = named("shardflow.run three_steps", f"{run_id}-steps")
    # Continued in the worker, through the trace context stored with the workflow.
    assert run_span["trace_id"] == request["trace_id"]
    assert run_span["parent_id"] == start["span_id"] and run_span["kind"] == "CONSUMER"
    steps = named("shardflow.step add_one", f"{run_id}-steps")
    assert [s["attributes"]["shardflow.step_seq"] for s in steps] == [0, 1, 2]
    assert all(s["parent_id"] == run_span["span_id"] for s in steps)
    (complete,) = named("shardflow.complete", f"{run_id}-steps")
    assert complete["parent_id"] == run_span["span_id"]
    assert complete["attributes"]["shardflow.status"] == "succeeded"

    # A failed attempt is an error span with the exception; the retry runs in a later run.
    attempts = named("shardflow.step flaky", f"{run_id}-retry")
    assert [a["attributes"]["shardflow.attempt"] for a in attempts] == [1, 2]
    assert attempts[0]["status"] == "ERROR" and "exception" in attempts[0]["events"]
    assert attempts[1]["status"] != "ERROR"
    runs = named("shardflow.run retrying", f"{run_id}-retry")
    assert len(runs) == 2 and {r["trace_id"] for r in runs} == {request["trace_id"]}

    # Children (started through the outbox on other nodes) continue the parent's run.
    # (The first run starts both children, then lets go until they end.)
    parent_run = named("shardflow.run fan_out", f"{run_id}-parent")[0]
    leaves = [s for s in spans if s["name"] == "shardflow.run leaf"]
    mine = [s for s in leaves if s["attributes"]["shardflow.workflow_id"].startswith(run_id)]
    assert len(mine) == 2
    for leaf in mine:
        assert leaf["trace_id"] == request["trace_id"]
        assert leaf["parent_id"] == parent_run["span_id"]
        assert by_id[leaf["parent_id"]]["name"] == "shardflow.run fan_out"

    # Claims are roots of their own, linked to the traces of what they took.
    claims = [s for s in spans if s["name"] == "shardflow.claim"]
    assert all(c["parent_id"] is None for c in claims)
    assert any(start["span_id"] in c["links"] for c in claims)


def test_without_an_sdk_nothing_is_traced_or_stored(config: ClusterConfig) -> None:
    async def go() -> None:
        assert tracing.current_context() is None  # the API alone records nothing
        async with Worker(apps.app, config), Client(config, app=apps.app) as client:
            handle = await client.start(apps.three_steps, 1)
            assert await handle.result(timeout=30) == 4

    run(go())
