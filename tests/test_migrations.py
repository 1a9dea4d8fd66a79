"""Migrations: idempotent, safe to run concurrently, and equal to sql/schema.sql."""

from __future__ import annotations

import asyncio

import pytest

from shardflow.config import ClusterConfig
from shardflow.storage import AdminStore, NodeConnector
from shardflow.storage.queries import migrations
from tests.helpers import run

pytestmark = pytest.mark.plain_only(
    "the migration files are the same for both backends; Citus runs them on its coordinator"
)


def _store(config: ClusterConfig, schema: str) -> AdminStore:
    node = config.nodes[0]
    return AdminStore(NodeConnector(name=node.name, dsn=node.dsn, schema=schema))


def test_fresh_schema_equals_migrated_schema(config: ClusterConfig) -> None:
    async def go() -> None:
        canonical, migrated = _store(config, "sf_canonical"), _store(config, "sf_migrated")
        try:
            await canonical.drop_schema()
            await migrated.drop_schema()
            await canonical.apply_canonical_schema()
            assert await migrated.migrate() == [m.version for m in migrations()]
            assert await canonical.schema_catalog() == await migrated.schema_catalog()
            assert len(await migrated.schema_catalog()) > 40
        finally:
            await canonical.drop_schema()
            await migrated.drop_schema()
            await canonical.db.close()
            await migrated.db.close()

    run(go())


def test_migrate_is_idempotent_and_concurrency_safe(config: ClusterConfig) -> None:
    async def go() -> None:
        stores = [_store(config, "sf_concurrent") for _ in range(4)]
        try:
            await stores[0].drop_schema()
            results = await asyncio.gather(*(s.migrate() for s in stores))
            applied = [v for r in results for v in r]
            assert sorted(applied) == [m.version for m in migrations()], "each applied once"
            assert await stores[0].migrate() == []
        finally:
            await stores[0].drop_schema()
            await asyncio.gather(*(s.db.close() for s in stores))

    run(go())


def test_workflow_tables_lead_with_partition(config: ClusterConfig) -> None:
    async def go() -> None:
        store = _store(config, config.schema)
        try:
            catalog = await store.schema_catalog()
        finally:
            await store.db.close()
        pkeys = {obj: d for kind, obj, d in catalog if kind == "constraint" and "PRIMARY" in d}
        for table in ("workflows", "steps"):
            (definition,) = [d for obj, d in pkeys.items() if obj.startswith(table + ".")]
            assert definition.startswith("PRIMARY KEY (partition,"), definition

    run(go())


def test_partition_moves_copy_every_column(config: ClusterConfig) -> None:
    """The COPY column lists of a move name every column of every moved table."""
    import re

    from shardflow.storage.queries import raw_queries
    from shardflow.storage.rebalance_store import MOVED_TABLES

    async def go() -> dict[str, set[str]]:
        store = _store(config, config.schema)
        try:
            catalog = await store.schema_catalog()
        finally:
            await store.db.close()
        columns: dict[str, set[str]] = {}
        for kind, obj, _ in catalog:
            if kind == "column":
                table, column = obj.split(".")
                columns.setdefault(table, set()).add(column)
        return columns

    columns = run(go())
    for table in MOVED_TABLES:
        for query in (table.copy_out, table.copy_in):
            text = raw_queries()[query]
            pattern = r"SELECT(.*?)FROM" if query == table.copy_out else r"\((.*?)\)"
            match = re.search(pattern, text, re.S)
            assert match is not None, query
            listed = {c.strip().split()[-1] for c in match.group(1).split(",")}
            assert columns[table.name] <= listed, (query, columns[table.name] - listed)
