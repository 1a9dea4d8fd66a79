"""The backlog claim visits partitions from a random start: no partition starves.

Issue 9's soak showed pick-up p99 of 100 s at half the maximum load: the walk's random offset
was taken modulo 65536 instead of the partition count, so nearly every walk began at
partition 0, and whenever a backlog formed the high partitions waited until it was gone.
Here every partition of one node holds one runnable workflow and one-row backlog claims take
them: the first half of the claims must not all come from the lower half of the partitions
(which is exactly what the old walk did).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from shardflow import App, Client, WorkflowContext
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.connectors import node_connector
from shardflow.storage import WorkerStore
from tests.helpers import run

pytestmark = pytest.mark.plain_only("the plain backlog claim walks the node's partitions")


def test_backlog_claims_start_anywhere(config: ClusterConfig, data_nodes: list[NodeConfig]) -> None:
    app = App(f"fairness-{uuid.uuid4().hex[:8]}")

    @app.workflow
    async def idle(ctx: WorkflowContext) -> None:
        return None

    node = data_nodes[0]

    async def go() -> list[int]:
        async with Client(config, app=app) as client:
            partitions = sorted(client.placement.partitions_of(node.name))
            one_per_partition: dict[int, str] = {}
            while len(one_per_partition) < len(partitions):
                wf_id = f"fair-{uuid.uuid4().hex}"
                partition, owner = client.route(wf_id)
                if owner == node.name:
                    one_per_partition.setdefault(partition, wf_id)
            ids = list(one_per_partition.values())
            await client.start_many(idle, [None] * len(ids), workflow_ids=ids)
        connector = node_connector(config, node.name, node.dsn, role="test")
        try:
            store = WorkerStore(connector, app_name=app.name, workflow_names=[idle.name])
            claimed: list[int] = []
            for _ in range(len(partitions) // 2):
                (work,) = await store.claim_ready(
                    limit=1, owner="fairness-test", lease=timedelta(seconds=60), backlog=True
                )
                claimed.append(work.partition)
            return [partitions.index(p) for p in claimed]
        finally:
            await connector.close()

    ranks = run(go())
    upper_half = sum(1 for r in ranks if r >= len(ranks))
    # A uniform start puts about half of them in the upper half; the old walk put none.
    assert upper_half >= len(ranks) // 4, sorted(ranks)
