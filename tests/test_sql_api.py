"""The SQL API (issue 13): shardflow.start/signal/status/result on the node that owns the
workflow, from psql and from a trigger; refused, naming the owner, on another node (plain);
the SQL key -> partition is the Python one. Both backends.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardflow import Client, Worker
from shardflow.cli import cli
from shardflow.cluster.local import find_pg_bin
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.connectors import dsn_for
from shardflow.routing import partition_for
from tests import apps
from tests.helpers import run, wait_until

# The SQL text a psql user or a trigger writes (the application's SQL, not shardflow's).
START = "SELECT shardflow.start(%s, %s::json, %s)"
RESULT = "SELECT shardflow.result(%s)"
STATUS = "SELECT shardflow.status(%s)"
SIGNAL = "SELECT shardflow.signal(%s, %s, %s::json, %s)"
PARTITIONS = "SELECT k, shardflow.partition_for(k, %s) FROM unnest(%s::text[]) AS k"
ORDERS_TABLE = """
CREATE TABLE IF NOT EXISTS public.sql_api_orders (id text PRIMARY KEY, n integer NOT NULL);
CREATE OR REPLACE FUNCTION public.sql_api_order_started() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM shardflow.start('three_steps', to_json(NEW.n), NEW.id);
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS sql_api_order_started ON public.sql_api_orders;
CREATE TRIGGER sql_api_order_started AFTER INSERT ON public.sql_api_orders
    FOR EACH ROW EXECUTE FUNCTION public.sql_api_order_started();
"""


def _owner_dsn(client: Client, config: ClusterConfig, key: str) -> str:
    """The DSN of the node that owns ``key`` (on Citus: the worker holding its shard)."""
    node = next(n for n in client.placement.nodes if n.name == client.route(key)[1])
    return dsn_for(config, node)


def _other_dsn(client: Client, config: ClusterConfig, key: str) -> tuple[str, str]:
    owner = client.route(key)[1]
    node = next(n for n in client.placement.nodes if n.name != owner)
    return node.name, dsn_for(config, node)


def _one_now(dsn: str, query: str, params: tuple[Any, ...]) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]


async def _one(dsn: str, query: str, params: tuple[Any, ...]) -> Any:
    """One SQL call on a thread: the in-process worker's event loop keeps running (it may hold
    the row the call waits for)."""
    return await asyncio.to_thread(_one_now, dsn, query, params)


async def _catalogued(config: ClusterConfig) -> None:
    """Wait until the running worker registered its workflows on every node."""

    def registered() -> bool:
        for node in config.nodes:
            with psycopg.connect(node.dsn) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM shardflow.workflow_catalog WHERE app = 'tests' "
                    "AND name = 'three_steps'"
                ).fetchone()
                if not row or not row[0]:
                    return False
        return True

    await wait_until(registered, what="the worker's catalog on every node")


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(
        st.text(
            st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=300
        ),
        min_size=1,
        max_size=20,
    ),
    count=st.integers(min_value=1, max_value=4096),
)
def test_sql_partition_is_the_python_partition(
    data_nodes: list[NodeConfig], keys: list[str], count: int
) -> None:
    # Block edges of BLAKE2b (128 bytes) and multi-byte characters, every time.
    keys = [*keys, "", "a", "x" * 127, "x" * 128, "x" * 129, "x" * 256, "é" * 100, "🙂" * 40]
    with psycopg.connect(data_nodes[0].dsn) as conn:
        rows = conn.execute(PARTITIONS, (count, keys)).fetchall()
    assert {k: p for k, p in rows} == {k: partition_for(k, count) for k in keys}


def test_start_from_psql_and_read_the_result(config: ClusterConfig) -> None:
    wf_id = f"sqlapi-psql-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        async with Client(config, app=apps.app) as client, Worker(apps.app, config):
            await _catalogued(config)
            dsn = _owner_dsn(client, config, wf_id)
            # As a psql user would: the DSN names the node; no password on the command line.
            psql = find_pg_bin() / "psql"
            done = await asyncio.to_thread(
                subprocess.run,
                [str(psql), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c",
                 f"SELECT shardflow.start('three_steps', '1', '{wf_id}')"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == wf_id
            assert await client.result(wf_id, timeout=30) == 4
            assert await _one(dsn, STATUS, (wf_id,)) == "succeeded"
            assert await _one(dsn, RESULT, (wf_id,)) == 4
            # Idempotent by id: the same start returns the same workflow.
            assert await _one(dsn, START, ("three_steps", "1", wf_id)) == wf_id

    run(go())


def _insert_order(dsn: str, wf_id: str, *, commit: bool) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(ORDERS_TABLE)
        conn.commit()
        conn.execute("INSERT INTO public.sql_api_orders VALUES (%s, %s)", (wf_id, 5))
        conn.commit() if commit else conn.rollback()


def test_start_from_a_trigger_commits_with_the_row(config: ClusterConfig) -> None:
    committed, rolled_back = (f"sqlapi-trg-{uuid.uuid4().hex[:8]}" for _ in range(2))

    async def go() -> None:
        async with Client(config, app=apps.app) as client, Worker(apps.app, config):
            await _catalogued(config)
            for wf_id, keep in ((committed, True), (rolled_back, False)):
                # Plain: the table lives on the node that owns the workflow. Citus: DDL runs
                # on the coordinator, and the coordinator reaches every shard.
                dsn = config.nodes[0].dsn if config.backend == "citus" else None
                dsn = dsn or _owner_dsn(client, config, wf_id)
                await asyncio.to_thread(_insert_order, dsn, wf_id, commit=keep)
            assert await client.result(committed, timeout=30) == 8
            assert await client.status(committed) == "succeeded"
            dsn = _owner_dsn(client, config, rolled_back)
            assert await _one(dsn, STATUS, (rolled_back,)) is None

    run(go())


def test_signal_from_sql(config: ClusterConfig) -> None:
    wf_id = f"sqlapi-signal-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        async with Client(config, app=apps.app) as client, Worker(apps.app, config):
            await client.start(apps.approval, 600, workflow_id=wf_id)
            await client.get_event(wf_id, "stage", timeout=30)
            dsn = _owner_dsn(client, config, wf_id)
            payload = json.dumps({"by": "sql"})
            assert await _one(dsn, SIGNAL, (wf_id, "approve", payload, "once")) is True
            assert await _one(dsn, SIGNAL, (wf_id, "approve", payload, "once")) is False  # a resend
            assert await client.result(wf_id, timeout=30) == {"approved": True, "by": "sql"}
            with pytest.raises(psycopg.Error, match="has ended") as ended:
                await _one(dsn, SIGNAL, (wf_id, "approve", payload, "twice"))
            assert ended.value.sqlstate == "SF005"

    run(go())


def test_refusals_name_the_fix_and_write_nothing(config: ClusterConfig) -> None:
    wf_id = f"sqlapi-bad-{uuid.uuid4().hex[:8]}"

    async def refused(dsn: str, query: str, params: tuple[Any, ...], code: str, text: str) -> None:
        with pytest.raises(psycopg.Error, match=text) as caught:
            await _one(dsn, query, params)
        assert caught.value.sqlstate == code

    async def go() -> None:
        async with Client(config, app=apps.app) as client, Worker(apps.app, config):
            await _catalogued(config)
            dsn = _owner_dsn(client, config, wf_id)
            await refused(
                dsn, START, ("no_such_flow", "1", wf_id), "SF002", "no worker has registered"
            )
            await refused(dsn, START, ("three_steps", None, wf_id), "SF004", "needs an input")
            await refused(dsn, START, ("no_input", "1", wf_id), "SF004", "takes no input")
            await refused(dsn, START, ("three_steps", "1", " "), "SF004", "workflow_id is empty")
            await refused(dsn, START, ("three_steps", "1", "x" * 201), "SF004", "above the limit")
            await refused(dsn, RESULT, (wf_id,), "SF005", "no workflow")
            await refused(dsn, SIGNAL, (wf_id, "shardflow.x", None, None), "SF004", "reserved")
            if config.backend == "plain":
                owner = client.route(wf_id)[1]
                other, other_dsn = _other_dsn(client, config, wf_id)
                await refused(
                    other_dsn, START, ("three_steps", "1", wf_id), "SF001", f"owned by node {owner}"
                )
                await refused(
                    other_dsn, STATUS, (wf_id,), "SF001", f"not by this node \\({other}\\)"
                )
            assert await _one(dsn, STATUS, (wf_id,)) is None  # nothing was written
            await client.start(apps.echo, 1, workflow_id=wf_id)
            await refused(
                dsn, START, ("three_steps", "1", wf_id), "SF003", "already exists as workflow"
            )

    run(go())


def test_cluster_owner_names_the_node_and_its_dsn(config: ClusterConfig, config_file: Path) -> None:
    key = f"sqlapi-owner-{uuid.uuid4().hex[:8]}"

    async def expected() -> tuple[str, int, str]:
        async with Client(config, app=apps.app) as client:
            partition, node = client.route(key)
            return node, partition, _owner_dsn(client, config, key)

    node, partition, dsn = run(expected())
    base = ["--config", str(config_file), "cluster", "owner", key]
    shown = CliRunner().invoke(cli, base)
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip() == f"{node} partition {partition}"
    only_dsn = CliRunner().invoke(cli, [*base, "--dsn"])
    assert only_dsn.output.strip() == dsn and "password" not in dsn
    blank = CliRunner().invoke(cli, [*base[:-1], " "])
    assert blank.exit_code != 0 and "KEY is empty" in blank.output
