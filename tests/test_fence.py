"""The write fence: a node rejects every write for a partition it does not own right now."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from shardflow import Client, PartitionMoved
from shardflow.config import ClusterConfig
from shardflow.storage import AdminStore, NodeConnector, WorkerStore
from tests import apps
from tests.helpers import run

pytestmark = pytest.mark.plain_only(
    "the ownership rows are shardflow's fence on plain nodes; Citus places shards itself"
)


def test_fenced_partition_rejects_claims_and_writes(config: ClusterConfig) -> None:
    async def go() -> None:
        key = f"fence-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as client:
            partition, owner = client.route(key)
            node = config.node(owner)
            async with NodeConnector(name=owner, dsn=node.dsn, schema=config.schema) as conn:
                admin = AdminStore(conn)
                worker = WorkerStore(
                    conn, app_name=apps.app.name, workflow_names=list(apps.app.workflows)
                )
                handle = await client.start(apps.echo, 1, workflow_id=key)
                claimed = await worker.claim(
                    partition=partition,
                    limit=100,
                    owner="fence-test",
                    lease=timedelta(seconds=30),
                )
                work = next(w for w in claimed if w.workflow_id == key)
                try:
                    assert await admin.set_partition_state(partition, "moving")

                    # A worker holding a valid lease commits nothing once fenced.
                    assert not await worker.write_progress(
                        work,
                        [
                            {
                                "step_seq": 0,
                                "step_name": "x",
                                "status": "succeeded",
                                "output": "1",
                                "error": None,
                                "attempts": 1,
                            }
                        ],
                        None,
                    )
                    assert not await worker.write_progress(
                        work, [], {"status": "succeeded", "output": "1", "error": None}
                    )
                    assert await worker.release(work, delay=timedelta(0)) is None
                    assert (
                        await worker.claim(
                            partition=partition,
                            limit=10,
                            owner="fence-test",
                            lease=timedelta(seconds=30),
                        )
                        == []
                    )
                    assert await client.steps(key) == []

                    # Clients get a typed "moved" error once the placement does not settle.
                    with pytest.raises(PartitionMoved) as info:
                        await client.start(apps.echo, 2, workflow_id=f"{key}-2", routing_key=key)
                    assert info.value.partition == partition
                    assert info.value.node == owner
                    with pytest.raises(PartitionMoved):
                        await client.cancel(key)
                finally:
                    assert await admin.set_partition_state(partition, "owned")

                # Unfenced, the same lease works again.
                assert await worker.write_progress(
                    work, [], {"status": "succeeded", "output": "1", "error": None}
                )
                assert await handle.result(timeout=5) == 1
                for other in claimed:
                    if other.workflow_id != key:
                        await worker.release(other, delay=timedelta(0))

    run(go())


def test_other_nodes_partitions_are_not_owned_here(config: ClusterConfig) -> None:
    async def go() -> None:
        key = f"elsewhere-{uuid.uuid4().hex}"
        async with Client(config, app=apps.app) as client:
            partition, owner = client.route(key)
            other = next(n for n in config.nodes if n.name != owner)
            async with NodeConnector(name=other.name, dsn=other.dsn, schema=config.schema) as conn:
                owned = {o.partition for o in await AdminStore(conn).ownership()}
                assert partition not in owned
                # A client with a wrong idea of the owner is refused by the node itself.
                from shardflow.storage import ClientStore

                with pytest.raises(PartitionMoved):
                    await ClientStore(conn).insert_workflow(
                        partition=partition,
                        workflow_id=key,
                        name="echo",
                        app=apps.app.name,
                        routing_key=None,
                        input="1",
                        timeout=None,
                    )
            with pytest.raises(Exception, match="no workflow"):
                await client.get(key)

    run(go())


def test_every_partition_owned_by_exactly_one_node(config: ClusterConfig) -> None:
    async def go() -> None:
        owners: dict[int, list[str]] = {}
        for node in config.nodes:
            async with NodeConnector(name=node.name, dsn=node.dsn, schema=config.schema) as conn:
                for o in await AdminStore(conn).ownership():
                    owners.setdefault(o.partition, []).append(node.name)
        assert sorted(owners) == list(range(config.partition_count))
        assert all(len(v) == 1 for v in owners.values())

    run(go())
