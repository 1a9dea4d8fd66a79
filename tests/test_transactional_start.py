"""Transactional start (issue 13): `client.start(..., connection=conn)` starts a workflow inside
the application's own transaction on the owning node, so the application's rows and the
workflow commit together or not at all. Both backends.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from shardflow import Client, InvalidInput, Worker, WorkflowConflict, WrongNode
from shardflow.config import ClusterConfig
from tests import apps
from tests.helpers import run, workflow_exists

pytestmark = pytest.mark.usefixtures("tx_effects_table")

# The application's own row, in the same transaction as the start (tests.apps's table).
ORDER_ROW = -1


class _Abandon(Exception):
    """Raised inside the transaction to roll it back."""


def _wf_id(label: str) -> str:
    return f"txstart-{label}-{uuid.uuid4().hex[:8]}"


async def _order_total(client: Client, wf_id: str) -> int:
    async with client.node_for(wf_id).connection() as conn:
        cur = await conn.execute(apps.TX_EFFECT_TOTAL, (wf_id,))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


def test_rollback_leaves_neither_the_workflow_nor_the_rows(config: ClusterConfig) -> None:
    wf_id = _wf_id("rollback")

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            async with client.node_for(wf_id).connection() as conn:
                with pytest.raises(_Abandon):
                    async with conn.transaction():
                        await conn.execute(apps.TX_EFFECT_INSERT, (wf_id, ORDER_ROW, 7))
                        handle = await client.start(
                            apps.three_steps, 1, workflow_id=wf_id, connection=conn
                        )
                        assert handle.created is True
                        raise _Abandon
            assert not await workflow_exists(client, wf_id)
            assert await _order_total(client, wf_id) == 0

    run(go())


def test_commit_makes_both_visible_and_a_worker_runs_it(config: ClusterConfig) -> None:
    wf_id = _wf_id("commit")

    async def go() -> None:
        async with Client(config, app=apps.app) as client, Worker(apps.app, config):
            async with client.node_for(wf_id).connection() as conn, conn.transaction():
                await conn.execute(apps.TX_EFFECT_INSERT, (wf_id, ORDER_ROW, 7))
                handle = await client.start(apps.three_steps, 1, workflow_id=wf_id, connection=conn)
                # Not visible to anyone else before the commit (nor to the workers).
                assert not await workflow_exists(client, wf_id)
            assert await _order_total(client, wf_id) == 7
            # Idle workers: picked up by the wake-up (plain) or the poll (Citus).
            assert await handle.result(timeout=15) == 4

    run(go())


def test_same_id_again_in_a_transaction_returns_the_existing_one(config: ClusterConfig) -> None:
    wf_id = _wf_id("again")

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            await client.start(apps.three_steps, 1, workflow_id=wf_id)
            async with client.node_for(wf_id).connection() as conn, conn.transaction():
                again = await client.start(apps.three_steps, 1, workflow_id=wf_id, connection=conn)
                assert again.created is False
                with pytest.raises(WorkflowConflict, match="choose another id"):
                    await client.start(apps.echo, 1, workflow_id=wf_id, connection=conn)
            await client.cancel(wf_id)

    run(go())


def test_connection_to_another_node(config: ClusterConfig) -> None:
    """Plain nodes: the wrong node refuses and writes nothing; the caller's transaction is
    still usable. Citus routes any statement to the shard, so any node works."""
    wf_id = _wf_id("elsewhere")

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            owner = client.node_for(wf_id).name
            other_key = next(
                k for k in (f"{wf_id}-{i}" for i in range(1000)) if client.route(k)[1] != owner
            )
            elsewhere = client.node_for(other_key)
            async with elsewhere.connection() as conn, conn.transaction():
                if config.backend == "citus":
                    await client.start(apps.three_steps, 1, workflow_id=wf_id, connection=conn)
                else:
                    with pytest.raises(WrongNode, match=f"the placement says {owner}"):
                        await client.start(apps.three_steps, 1, workflow_id=wf_id, connection=conn)
                await conn.execute(apps.TX_EFFECT_INSERT, (wf_id, ORDER_ROW, 3))
            assert await workflow_exists(client, wf_id) is (config.backend == "citus")
            if config.backend == "citus":
                await client.cancel(wf_id)

    run(go())


def test_bad_connections_are_refused_before_anything_is_written(
    config: ClusterConfig, data_nodes: Any
) -> None:
    wf_id = _wf_id("refused")

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            async with client.node_for(wf_id).connection() as conn:
                # Autocommit and no transaction: the start would not be atomic with anything.
                with pytest.raises(InvalidInput, match=r"conn\.transaction"):
                    await client.start(apps.three_steps, 1, workflow_id=wf_id, connection=conn)
                with pytest.raises(_Abandon):
                    async with conn.transaction():
                        with pytest.raises(psycopg.errors.DivisionByZero):
                            await conn.execute("SELECT 1 / 0")
                        with pytest.raises(InvalidInput, match="already failed"):
                            await client.start(
                                apps.three_steps, 1, workflow_id=wf_id, connection=conn
                            )
                        raise _Abandon
            with (
                pytest.raises(InvalidInput, match="AsyncConnection"),
                psycopg.connect(data_nodes[0].dsn) as sync_conn,
            ):
                await client.start(
                    apps.three_steps,
                    1,
                    workflow_id=wf_id,
                    connection=sync_conn,  # type: ignore[arg-type]
                )
            # Bad input is refused before the transaction is touched.
            async with client.node_for(wf_id).connection() as conn, conn.transaction():
                with pytest.raises(InvalidInput):
                    await client.start(apps.three_steps, 1, workflow_id="", connection=conn)
            assert not await workflow_exists(client, wf_id)

    run(go())
