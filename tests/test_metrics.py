"""Prometheus metrics of a worker (issue 12), scraped over HTTP during real runs, both backends.

The exposition is parsed with the official client library's parser; the counters are checked
against what the nodes hold, and every label is bounded (no workflow ids).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import uuid
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shardflow import App, Client, Worker, WorkflowContext, WorkflowFailed
from shardflow.config import ClusterConfig
from shardflow.errors import ConfigurationError
from tests import apps
from tests.helpers import REPO, run, wait_until

# Workflows no worker of the tests runs: they wait in the queue for the depth gauges.
parked_app = App("metrics-parked")


@parked_app.workflow
async def parked(ctx: WorkflowContext) -> None:
    return None


async def scrape(port: int) -> dict[str, list[Sample]]:
    """name -> samples of the worker's /metrics, parsed by prometheus_client's own parser."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            body: bytes = answer.read()
            return body.decode()

    families: dict[str, list[Sample]] = defaultdict(list)
    for family in text_string_to_metric_families(await asyncio.to_thread(get)):
        for sample in family.samples:
            families[sample.name].append(sample)
    return families


def total(samples: list[Sample], **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.timeout(120)
def test_a_scraped_worker_counts_what_the_nodes_hold(config: ClusterConfig) -> None:
    ok, failing = 24, 3

    async def go() -> None:
        async with (
            Worker(apps.app, config, metrics_port=0) as worker,
            Client(config, app=apps.app) as client,
        ):
            assert worker.metrics_port
            run_id = uuid.uuid4().hex[:8]
            ids = {f"m{run_id}-ok-{i}": False for i in range(ok)}
            ids |= {f"m{run_id}-bad-{i}": True for i in range(failing)}
            for wf_id, fail in ids.items():
                await client.start(apps.metered, fail, workflow_id=wf_id)
            for wf_id, fail in ids.items():
                if fail:
                    with pytest.raises(WorkflowFailed):
                        await client.result(wf_id, timeout=60)
                else:
                    assert await client.result(wf_id, timeout=60) == "ok"
            metrics = await scrape(worker.metrics_port)

            # Runs per node and outcome: exactly what each node recorded for this workflow.
            expected: dict[tuple[str, str], int] = defaultdict(int)
            for wf_id in ids:
                record = await client.get(wf_id)
                expected[(client.route(wf_id)[1], record.status)] += 1
            runs = metrics["shardflow_workflow_runs_total"]
            for (node, status), count in expected.items():
                assert total(runs, node=node, workflow="metered", outcome=status) == count
            assert total(runs, workflow="metered") == ok + failing

            steps = metrics["shardflow_step_duration_seconds_count"]
            assert total(steps, step="metered_step", outcome="succeeded") == ok
            assert total(steps, step="metered_step", outcome="failed") == failing
            buckets = metrics["shardflow_step_duration_seconds_bucket"]
            assert total(buckets, step="metered_step", outcome="succeeded", le="+Inf") == ok

            # Every run was claimed and its checkpoints group-committed on its node.
            assert total(metrics["shardflow_workflows_claimed_total"]) >= ok + failing
            assert total(metrics["shardflow_claim_batch_size_sum"]) >= ok + failing
            assert total(metrics["shardflow_claim_duration_seconds_count"]) > 0
            assert total(metrics["shardflow_checkpoint_batch_size_sum"]) >= ok + failing
            served = set(worker.nodes)
            pools = metrics["shardflow_pool_connections"]
            assert {s.labels["node"] for s in pools} == served
            assert {s.labels["state"] for s in pools} == {"busy", "idle"}
            waiting = metrics["shardflow_pool_requests_waiting"]
            assert {s.labels["node"] for s in waiting} == served
            assert total(metrics["shardflow_worker_slots"]) == worker.concurrency

            # The sample Grafana dashboard asks only for metrics that exist.
            dashboard = json.loads((REPO / "deploy/grafana/shardflow.json").read_text())
            asked = {
                name
                for panel in dashboard["panels"]
                for target in panel["targets"]
                for name in re.findall(r"shardflow_[a-z_]+", target["expr"])
            }
            assert asked and asked <= set(metrics), asked - set(metrics)

            # Bounded labels: no workflow id anywhere in the exposition.
            for samples in metrics.values():
                for sample in samples:
                    assert not any(run_id in v for v in sample.labels.values())

    run(go(), timeout=110)


@pytest.mark.timeout(120)
def test_queue_gauges_show_pending_work_per_node(config: ClusterConfig) -> None:
    count = 12

    async def go() -> None:
        async with (
            Client(config, app=parked_app) as client,
            Worker(apps.app, config, metrics_port=0) as worker,
        ):
            assert worker.metrics_port
            ids = [f"parked-{uuid.uuid4().hex[:10]}" for _ in range(count)]
            try:
                for wf_id in ids:
                    await client.start(parked, workflow_id=wf_id)
                per_node: dict[str, int] = defaultdict(int)
                for wf_id in ids:
                    per_node[client.route(wf_id)[1]] += 1

                async def gauges_show_them() -> bool:
                    metrics = await scrape(worker.metrics_port or 0)
                    depth = metrics["shardflow_queue_depth"]
                    oldest = metrics["shardflow_queue_oldest_age_seconds"]
                    return all(
                        total(depth, node=node) >= n and total(oldest, node=node) > 0
                        for node, n in per_node.items()
                    )

                await wait_until(gauges_show_them, timeout=30, what="the queue gauges")
                metrics = await scrape(worker.metrics_port)
                waiting = {s.labels["node"] for s in metrics["shardflow_workflows_waiting"]}
                assert waiting == set(worker.nodes)
            finally:
                for wf_id in ids:
                    await client.cancel(wf_id)

    run(go(), timeout=110)


def test_metrics_are_off_unless_a_port_is_given(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config) as worker:
            assert worker.metrics_port is None
            # Counted all the same: a test or an embedding program can read the registry.
            free = worker.metrics.registry.get_sample_value(
                "shardflow_worker_slots", {"state": "free"}
            )
            assert free == worker.concurrency

    run(go())


def test_a_metrics_port_in_use_is_a_clear_error(config: ClusterConfig) -> None:
    async def go() -> None:
        async with Worker(apps.app, config, metrics_port=0) as first:
            second = Worker(apps.app, config, metrics_port=first.metrics_port)
            with pytest.raises(ConfigurationError, match="pick another --metrics-port"):
                await second.start()

    run(go())
