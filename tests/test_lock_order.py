"""Batched writes lock rows in one global order, so concurrent batches never deadlock.

Issue 9: at 526 workflows/s PostgreSQL logged `deadlock detected` between concurrent batched
progress writes (each locked its workflows' rows in whatever order its plan produced, then
upgraded the locks of the workflows it finished) and the heartbeat's lease renewal; the
workflows of the losing batch were abandoned until their leases expired. Here many batches
over the same workflows, in different orders, run at once with lease renewals, and the node's
log must not mention a deadlock.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta

from shardflow import App, Client, WorkflowContext
from shardflow.cluster.local import LocalCluster
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.connectors import node_connector
from shardflow.storage import WorkerStore
from shardflow.storage.records import ClaimedWorkflow
from tests.helpers import local_node, run

WORKFLOWS = 40
STORES = 8
ROUNDS = 6


def test_overlapping_batches_and_renewals_do_not_deadlock(
    config: ClusterConfig, local_cluster: LocalCluster, data_nodes: list[NodeConfig]
) -> None:
    # An app of its own: nothing else claims these workflows, and they claim nothing else.
    app = App(f"lock-order-{uuid.uuid4().hex[:8]}")

    @app.workflow
    async def idle(ctx: WorkflowContext) -> None:
        return None

    node = data_nodes[0]
    log_file = local_node(local_cluster, node).log_file
    log_offset = log_file.stat().st_size
    rng = random.Random(9)

    async def go() -> None:
        async with Client(config, app=app) as client:
            ids: list[str] = []
            while len(ids) < WORKFLOWS:
                wf_id = f"lock-{uuid.uuid4().hex}"
                if client.route(wf_id)[1] == node.name:
                    ids.append(wf_id)
            await client.start_many(idle, [None] * WORKFLOWS, workflow_ids=ids)
            partitions = client.placement.partitions_of(node.name)
        connector = node_connector(config, node.name, node.dsn, role="test", pool_max_size=16)
        try:
            claimer = WorkerStore(connector, app_name=app.name, workflow_names=[idle.name])
            claimer.partitions = partitions  # Citus: claims look at this node's partitions
            held: list[ClaimedWorkflow] = []
            while len(held) < WORKFLOWS:
                held += await claimer.claim_ready(
                    limit=WORKFLOWS, owner="lock-test", lease=timedelta(seconds=60)
                )
            leases = [(w.partition, w.lease_token) for w in held]
            for round_no in range(ROUNDS):
                # Each store group-commits one batch of every workflow, in its own order; the
                # last round also ends a different subset of workflows in each batch.
                stores = [WorkerStore(connector) for _ in range(STORES)]
                writes = []
                for i, store in enumerate(stores):
                    order = rng.sample(held, len(held))
                    for work in order:
                        finish = None
                        if round_no == ROUNDS - 1 and rng.random() < 0.3:
                            finish = {"status": "succeeded", "output": None, "error": None}
                        checkpoint = {
                            "step_seq": round_no * STORES + i,
                            "step_name": "s",
                            "status": "succeeded",
                            "output": "null",
                            "error": None,
                            "attempts": 1,
                        }
                        writes.append(store.write_progress(work, [checkpoint], finish))
                renewals = [
                    claimer.renew_leases(owner="lock-test", held=leases, lease=timedelta(60))
                    for _ in range(4)
                ]
                await asyncio.gather(*writes, *renewals)
        finally:
            await connector.close()

    run(go(), timeout=120)
    with log_file.open("rb") as log:
        log.seek(log_offset)
        text = log.read().decode(errors="replace")
    assert "deadlock detected" not in text
