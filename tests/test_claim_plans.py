"""The claim statements keep their cheap plans on a fresh table (no statistics yet).

A benchmark after migration 0005 ran at a tenth of its throughput: with `app` leading both
pending indexes, a fresh table's missing statistics made the node-wide index look as cheap as
the per-partition one, and the backlog claim walked it, filtering out every other partition
(120 ms per claim instead of 1 ms). The plans are checked here, generic and custom, before
any ANALYZE, with a backlog of two apps.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from shardflow.config import ClusterConfig
from shardflow.routing import Placement, PlacementNode
from shardflow.storage import AdminStore, ClientStore, NodeConnector
from shardflow.storage.queries import QueryBook
from shardflow.storage.records import NodeIdentity
from tests.helpers import run

pytestmark = pytest.mark.plain_only("plans of the plain multi-partition claim statements")

SCHEMA = "sf_claim_plans"
PARTITIONS = 64
BACKLOG = 6000


def _indexes_on_workflows(plan: dict[str, Any]) -> set[str]:
    found = set()
    if plan.get("Relation Name") == "workflows" and "Index Name" in plan:
        found.add(plan["Index Name"])
    for child in plan.get("Plans", []):
        found |= _indexes_on_workflows(child)
    return found


@pytest.fixture(scope="module")
def backlog_dsn(config: ClusterConfig) -> Any:
    node = config.nodes[0]

    def connector() -> NodeConnector:
        return NodeConnector(name=node.name, dsn=node.dsn, schema=SCHEMA)

    async def create() -> None:
        async with connector() as db:
            await fill(db)

    async def fill(db: NodeConnector) -> None:
        admin = AdminStore(db)
        await admin.drop_schema()
        await admin.migrate()
        placement = Placement(
            version=1,
            nodes=(PlacementNode(name=node.name, conninfo={}, weight=1),),
            owners=tuple([node.name] * PARTITIONS),
        )
        await admin.initialize(
            identity=NodeIdentity(cluster_id="plans", node_name=node.name, partition_count=64),
            placement=placement,
            owned=list(range(PARTITIONS)),
        )
        rows = [
            {
                "partition": i % PARTITIONS,
                "workflow_id": f"plan-{i}",
                "name": "w",
                "app": "busy" if i % 2 else "other",
                "routing_key": None,
                "input": "1",
                "timeout": None,
            }
            for i in range(BACKLOG)
        ]
        await ClientStore(db).insert_many(rows)

    async def drop() -> None:
        async with connector() as db:
            await AdminStore(db).drop_schema()

    run(create())
    yield node.dsn
    run(drop())


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("claim_ready", {"workflows_runnable_idx", "workflows_pkey"}),
        ("claim", {"workflows_runnable_idx", "workflows_pkey"}),
    ],
)
def test_backlog_claims_walk_the_per_partition_index(
    backlog_dsn: str, query: str, expected: set[str], mode: str
) -> None:
    params = {
        "app": "busy",
        "names": ["w"],
        "limit": 32,
        "owner": "plans",
        "lease": "30 seconds",
        "lease_token": str(uuid.uuid4()),
        "start": 7,
        "partition": 5,
        "suspect": False,
    }

    async def plan() -> set[str]:
        async with await psycopg.AsyncConnection.connect(backlog_dsn) as conn:
            await conn.execute(f"SET plan_cache_mode = {mode}")
            async with conn.transaction(force_rollback=True):
                statement = b"EXPLAIN (FORMAT JSON) " + QueryBook(SCHEMA)[query]
                cur = await conn.execute(statement, params, prepare=True)
                row = await cur.fetchone()
                assert row is not None
                document = row[0] if isinstance(row[0], list) else json.loads(row[0])
                return _indexes_on_workflows(document[0]["Plan"])

    assert run(plan()) <= expected
