"""Least privilege: the runtime works as the worker and client roles, which cannot change the
schema, the placement or the ownership rows."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from shardflow import Client, Worker, WorkflowFailed
from shardflow.cli import cli
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.retention import collect_garbage
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.storage.conninfo import make_conninfo, parse_conninfo
from tests import apps
from tests.helpers import run, wait_until

pytestmark = pytest.mark.plain_only(
    "login roles reach the plain nodes over their Unix sockets; Citus workers are reached at "
    "the TCP addresses in its metadata"
)

LOGINS = {"worker": "sf_test_worker", "client": "sf_test_client"}
SQL_STATUS = "SELECT shardflow.status(%s)"  # the SQL API, as an application calls it


@pytest.fixture(scope="module")
def role_configs(
    config: ClusterConfig, config_file: Path, local_cluster: LocalCluster
) -> Iterator[dict[str, ClusterConfig]]:
    result = CliRunner().invoke(cli, ["--config", str(config_file), "roles", "create"])
    assert result.exit_code == 0, result.output
    for node in config.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            for kind, login in LOGINS.items():
                # Test set-up only: login users that hold nothing but the shardflow role.
                conn.execute(f"DROP ROLE IF EXISTS {login}")
                conn.execute(f"CREATE ROLE {login} LOGIN IN ROLE shardflow_{kind}")
    configs = {}
    for kind, login in LOGINS.items():
        nodes = []
        for node in config.nodes:
            params = parse_conninfo(node.dsn)
            # Over the node's Unix socket, where local logins are trusted (no password).
            socket_dir = str(local_cluster.node(node.name).directory)
            params.update(host=socket_dir, user=login)
            params.pop("passfile", None)
            nodes.append(NodeConfig(name=node.name, dsn=make_conninfo(params)))
        configs[kind] = config.replace(nodes=tuple(nodes))
    yield configs
    for node in config.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            for login in LOGINS.values():
                conn.execute(f"DROP ROLE IF EXISTS {login}")


def test_runtime_runs_with_least_privilege(
    role_configs: dict[str, ClusterConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shardflow")

    async def go() -> None:
        async with (
            Worker(apps.app, role_configs["worker"]) as worker,
            Client(role_configs["client"], app=apps.app) as client,
        ):
            handles = [await client.start(apps.three_steps, i) for i in range(12)]
            assert [await h.result(timeout=30) for h in handles] == [i + 3 for i in range(12)]
            handle = await client.start(apps.sleepy, 30, workflow_id=f"lp-{uuid.uuid4().hex}")
            assert await handle.cancel()  # cancel (and its audit row) as the client role
            # Retry and fork (their deletes, copies and audit rows) as the client role.
            failing = await client.start(apps.retrying, 10)
            with pytest.raises(WorkflowFailed):
                await failing.result(timeout=30)
            assert (await client.retry(failing.workflow_id)).step_seq == 0
            fork = await client.fork(handles[0].workflow_id, from_step=2)
            assert await fork.result(timeout=30) == 3
            # The heartbeat registers the worker (and its claims) as the worker role.
            async with ClusterAdmin(role_configs["worker"]) as admin:
                placement = await admin.latest_placement()
                node = placement.nodes[0].name
                await wait_until(
                    lambda: _registered(admin, node, worker.owner), what="the registration"
                )
        # The collector's pass, as the worker role (a worker runs it every gc_seconds).
        collected = await collect_garbage(role_configs["worker"])
        assert [r.error for r in collected if r.error] == []

    run(go())
    refused = [r.getMessage() for r in caplog.records if "permission denied" in r.getMessage()]
    assert refused == []
    # The SQL API is the client role's only (the worker registered its catalog above).
    key = f"lp-sql-{uuid.uuid4().hex}"
    answered = 0
    for kind in ("client", "worker"):
        for node in role_configs[kind].nodes:
            with psycopg.connect(node.dsn, autocommit=True) as conn:
                if kind == "worker":
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(SQL_STATUS, (key,))
                    continue
                try:
                    assert conn.execute(SQL_STATUS, (key,)).fetchone() == (None,)
                    answered += 1
                except psycopg.Error as exc:
                    assert exc.sqlstate == "SF001"  # another node owns the key
    assert answered == 1  # its owner answered: no such workflow


async def _registered(admin: ClusterAdmin, node: str, owner: str) -> bool:
    return owner in await admin.admin(node).worker_claims(node)


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE shardflow.workflows ADD COLUMN evil int",
        "DROP TABLE shardflow.steps",
        "UPDATE shardflow.partition_ownership SET state = 'moving'",
        "DELETE FROM shardflow.partition_ownership",
        "INSERT INTO shardflow.placements (version, partition_count, nodes, owners) "
        "VALUES (999999, 1, '[]', '{}')",
        "CREATE TABLE shardflow.evil (x int)",
        "DELETE FROM shardflow.audit_log",
    ],
)
@pytest.mark.parametrize("kind", ["worker", "client"])
def test_runtime_roles_cannot_change_schema_placement_or_ownership(
    role_configs: dict[str, ClusterConfig], kind: str, statement: str
) -> None:
    dsn = role_configs[kind].nodes[0].dsn
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


def test_ids_past_two_to_the_31(config: ClusterConfig) -> None:
    """Growing ids are bigint: the audit log keeps working past 2^31."""
    for node in config.nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE shardflow.audit_log ALTER COLUMN audit_id RESTART WITH 2147483700"
            )

    async def go() -> None:
        async with Client(config, app=apps.app) as client:
            handle = await client.start(apps.echo, 1)
            assert await handle.cancel()

        async with ClusterAdmin(config) as admin:
            rows = await admin.audit_log(limit=500)
        row = next(r for r in rows if r["target"] == handle.workflow_id)
        assert row["audit_id"] > 2**31

    run(go())
