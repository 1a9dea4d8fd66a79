"""Starting a workflow inside the application's own transaction (``client.start(...,
connection=conn)``), and the node an application keeps its own rows on (``client.node_for``).

The start is one more statement in the caller's open transaction on the node that owns the
workflow's partition: a rollback discards it with the caller's rows, a commit makes both
visible at once (the outbox pattern without the outbox). On plain nodes the wake-up NOTIFY is
part of the same transaction (PostgreSQL delivers it at the commit and drops it at a
rollback); on Citus the workers' poll (``worker.poll_seconds``) picks it up.

The ownership fence takes the partition's ownership row FOR SHARE until the caller's commit,
so a move of that partition waits for the caller's transaction: keep such transactions short.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

from shardflow.errors import InvalidInput, WrongNode
from shardflow.storage import ClientStore, NodeConnector
from shardflow.storage.client_store import InsertOutcome

if TYPE_CHECKING:
    from shardflow.client import Client
    from shardflow.engine.app import WorkflowDef


@dataclass(frozen=True)
class OwningNode:
    """The node that owns a routing key's partition now, and connections to it.

    Rows an application writes on this node commit atomically with the workflows it starts
    there (``client.start(..., connection=conn)``). The partition can move to another node
    (``shardflow cluster rebalance``): a start on a connection to the old owner then raises
    WrongNode, and the application retries its transaction with a fresh ``node_for()``.
    """

    name: str
    partition: int
    _connector: NodeConnector

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection to the node (autocommit: open a transaction with
        ``async with conn.transaction():``). Bounded by ``operation_timeout``, like every
        call the client makes: a node that stops answering fails the block."""
        async with self._connector.connection() as conn:
            yield conn


def check_open_transaction(conn: object) -> psycopg.AsyncConnection[Any]:
    """The caller's connection must be async, and in (or about to open) a transaction."""
    if not isinstance(conn, psycopg.AsyncConnection):
        raise InvalidInput(
            f"connection must be a psycopg.AsyncConnection, got {type(conn).__name__}: get one "
            "with `async with client.node_for(key).connection() as conn`"
        )
    status = conn.info.transaction_status
    if status == TransactionStatus.INERROR:
        raise InvalidInput(
            "the connection's transaction has already failed: roll it back, then start the "
            "workflow in a new transaction"
        )
    if status == TransactionStatus.IDLE and conn.autocommit:
        raise InvalidInput(
            "connection is in autocommit mode with no transaction open, so the workflow would "
            "not start atomically with anything: use `async with conn.transaction():` (or "
            "start without connection=)"
        )
    if status not in (TransactionStatus.IDLE, TransactionStatus.INTRANS):
        raise InvalidInput(
            f"connection is busy ({status.name}): start the workflow when no other query runs on it"
        )
    return conn


async def insert_in_transaction(
    store: ClientStore,
    conn: psycopg.AsyncConnection[Any],
    params: dict[str, Any],
    *,
    owner: str,
    citus: bool,
) -> InsertOutcome:
    """Insert the start in the caller's transaction; WrongNode when ``conn`` is to a node
    that does not own the partition (``owner`` is the placement's answer)."""
    outcome = await store.insert_workflow_in(conn, params, notify=not citus)
    if outcome is not None:
        return outcome
    partition = params["partition"]
    raise WrongNode(
        f"the connection given to start() is not to the node that owns partition {partition} "
        f"of {params['routing_key'] or params['workflow_id']!r} (the placement says {owner}); "
        "nothing was written: roll back, and retry the transaction on "
        "`client.node_for(key).connection()` (the partition may have just moved)",
        partition=partition,
        node=owner,
        placement_version=0,
    )


async def start_in_transaction(
    client: Client,
    conn: psycopg.AsyncConnection[Any],
    definition: WorkflowDef,
    wf_id: str,
    routing_key: str | None,
    text: str | None,
    timeout: timedelta | None,
    flow: dict[str, Any],
) -> InsertOutcome:
    """``client.start(..., connection=conn)``: the insert, routed by the client's placement
    (refreshed on WrongNode, so the next ``node_for()`` names the new owner)."""
    partition, node = client.route(routing_key or wf_id)
    params = {
        **client.start_row(definition, partition, wf_id, routing_key, text, timeout, flow),
        "parent_id": None,
        "parent_key": None,
    }
    store = ClientStore(client.topology.connector(node))
    try:
        return await insert_in_transaction(
            store, conn, params, owner=node, citus=client.config.backend == "citus"
        )
    except WrongNode:
        await client.refresh_placement()
        raise
