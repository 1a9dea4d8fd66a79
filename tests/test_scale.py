"""1,000 workflows across 3 nodes: all complete, one checkpoint per step, every node used."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from shardflow import Client, Worker
from shardflow.cluster.admin import cluster_status
from shardflow.config import ClusterConfig
from tests import apps
from tests.helpers import run


@pytest.mark.timeout(180)
def test_thousand_workflows_across_three_nodes(config: ClusterConfig) -> None:
    count = 1000

    async def go() -> None:
        batch = uuid.uuid4().hex[:8]
        ids = [f"scale-{batch}-{i}" for i in range(count)]
        async with Client(config, app=apps.app) as client:
            async with Worker(apps.app, config, concurrency=64):
                for start in range(0, count, 100):
                    await asyncio.gather(
                        *(
                            client.start(apps.three_steps, i, workflow_id=wf_id)
                            for i, wf_id in enumerate(ids[start : start + 100], start=start)
                        )
                    )
                results = await asyncio.gather(*(client.result(i, timeout=150) for i in ids))
            assert results == [i + 3 for i in range(count)]

            histories = await asyncio.gather(*(client.steps(i) for i in ids))
            for history in histories:
                assert [(s.step_seq, s.status) for s in history] == [
                    (0, "succeeded"),
                    (1, "succeeded"),
                    (2, "succeeded"),
                ]
            assert sum(apps.executions[(i, "add_one")] for i in ids) == 3 * count

            per_node = Counter(client.route(i)[1] for i in ids)
            nodes = client.placement.nodes
            assert set(per_node) == {n.name for n in nodes}
            # Plain placement is balanced to one partition; Citus balances shards by size.
            assert min(per_node.values()) > count / len(nodes) * 0.4

        statuses = (await cluster_status(config)).nodes
        assert all(s.reachable for s in statuses)
        assert all(s.workflows.get("succeeded", 0) > 0 for s in statuses)

    run(go(), timeout=170)
