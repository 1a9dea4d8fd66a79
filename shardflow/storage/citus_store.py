"""Citus metadata and administration on a Citus node (coordinator, or a worker for reads).

Citus owns shard placement: the placement shardflow routes by is read from Citus's metadata
(``pg_dist_*``), and membership changes and shard moves go through Citus's own functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shardflow.errors import ClusterNotInitialized, ConfigurationError, ShardflowError
from shardflow.routing import Placement, PlacementNode
from shardflow.storage.connector import NodeConnector
from shardflow.storage.conninfo import public_conninfo


def citus_node_name(host: str, port: int) -> str:
    """shardflow's name for the Citus node at host:port (stable, valid as a node name)."""
    return f"{re.sub(r'[^A-Za-z0-9.-]', '-', host)}_{port}"


class CitusStore:
    def __init__(self, connector: NodeConnector):
        self.db = connector

    async def placement(
        self, *, base_conninfo: str, partition_count: int, via: str | None = None
    ) -> Placement:
        """The placement in force: the node holding each partition's shard.

        Node connection parameters are ``base_conninfo``'s (user, database, TLS, password
        file) with the node's host and port. ``partition_count`` is used only before the
        cluster records its own (during init). ``via`` (a configured node's name): route
        every partition through that node instead (the coordinator), Citus forwarding each
        statement to the shard.
        """
        try:
            rows = await self.db.run("citus_shard_map", {"partition_count": partition_count})
            nodes = await self.db.run("citus_nodes")
        except ClusterNotInitialized:
            if not await self.db.run("citus_installed"):
                raise ClusterNotInitialized(
                    f"node {self.db.name} has no Citus extension: this configuration says "
                    "backend = 'citus'; point it at a Citus coordinator or use the plain backend"
                ) from None
            raise
        if not rows:
            raise ClusterNotInitialized(
                f"node {self.db.name}: the shardflow tables are not distributed yet; run "
                "`shardflow cluster init --citus COORDINATOR_DSN`"
            )
        base = public_conninfo(base_conninfo)
        if via is not None:
            return Placement(
                version=int(rows[0]["version"]),
                nodes=(PlacementNode(name=via, conninfo=base, weight=1),),
                owners=tuple(via for _ in rows),
            )
        hosts = [(str(n["nodename"]), int(n["nodeport"])) for n in nodes]
        for row in rows:
            address = (str(row["nodename"]), int(row["nodeport"]))
            if address not in hosts:
                hosts.append(address)  # holds shards though it should not get new ones
        return Placement(
            version=int(rows[0]["version"]),
            nodes=tuple(
                PlacementNode(
                    name=citus_node_name(host, port),
                    conninfo={**base, "host": host, "port": str(port)},
                    weight=1,
                )
                for host, port in hosts
            ),
            owners=tuple(citus_node_name(r["nodename"], int(r["nodeport"])) for r in rows),
        )

    async def require_citus(self) -> str:
        """The Citus version on this node, or ConfigurationError saying how to get it."""
        rows = await self.db.run("citus_installed")
        if not rows:
            raise ConfigurationError(
                f"node {self.db.name} has no Citus extension in its database: run "
                "`CREATE EXTENSION citus` there (it must be in shared_preload_libraries), or "
                "use the plain backend"
            )
        return str(rows[0]["extversion"])

    async def distribute(self, *, schema: str, shard_count: int) -> list[str]:
        """Distribute shardflow's tables that are not distributed yet; returns those done."""
        done = {r["table_name"] for r in await self.db.run("citus_distributed_tables")}
        distributed = []
        for table, query in DISTRIBUTION_ORDER:
            if f"{schema}.{table}" not in done:
                await self.db.run(query, {"shard_count": shard_count})
                distributed.append(table)
        return distributed

    async def recover_prepared(self) -> int:
        """Finish the two-phase commits this node started and left prepared; how many."""
        rows = await self.db.run("citus_recover_prepared")
        return int(rows[0]["recovered"])

    async def add_node(self, host: str, port: int) -> None:
        await self.db.run("citus_add_node", {"host": host, "port": port})

    async def remove_node(self, host: str, port: int) -> None:
        await self.db.run("citus_remove_node", {"host": host, "port": port})

    async def drain_node(self, host: str, port: int) -> None:
        await self.db.run("citus_drain_node", {"host": host, "port": port})

    async def node_shards(self, host: str, port: int) -> int:
        rows = await self.db.run("citus_node_shards", {"host": host, "port": port})
        return int(rows[0]["shards"])

    async def rebalance_plan(self) -> list[dict[str, object]]:
        return await self.db.run("citus_rebalance_plan")

    async def rebalance_start(self) -> int | None:
        """Start Citus's background rebalance; None when nothing needs to move."""
        rows = await self.db.run("citus_rebalance_start")
        job = rows[0]["job_id"] if rows else None
        return None if job is None else int(job)

    async def rebalance_progress(self, job_id: int) -> RebalanceProgress:
        rows = await self.db.run("citus_rebalance_progress", {"job_id": job_id})
        if not rows:
            raise ShardflowError(
                f"the Citus rebalance job {job_id} is gone from pg_dist_background_job; run "
                "`shardflow cluster rebalance` again (it plans from the shards as they are)"
            )
        row = rows[0]
        return RebalanceProgress(
            state=str(row["state"]),
            done=int(row["done"]),
            total=int(row["total"]),
            error=row["error"],
        )

    async def rebalance_running(self) -> int | None:
        """The job id of a rebalance still under way, if any."""
        rows = await self.db.run("citus_rebalance_running")
        return int(rows[0]["job_id"]) if rows else None

    async def unhealthy_links(self) -> list[str]:
        """Node pairs that cannot reach each other (empty when healthy)."""
        return [
            f"{r['from_nodename']}:{r['from_nodeport']} -> {r['to_nodename']}:{r['to_nodeport']}"
            for r in await self.db.run("citus_check_health")
        ]


# Reference tables first, then the co-location group in FK order, then the rest.
DISTRIBUTION_ORDER = (
    ("node_identity", "citus_distribute_node_identity"),
    ("placements", "citus_distribute_placements"),
    ("partition_moves", "citus_distribute_partition_moves"),
    ("partition_ownership", "citus_distribute_partition_ownership"),
    ("workflows", "citus_distribute_workflows"),
    ("steps", "citus_distribute_steps"),
    ("signals", "citus_distribute_signals"),
    ("events", "citus_distribute_events"),
    ("outbox", "citus_distribute_outbox"),
    ("schedules", "citus_distribute_schedules"),
    ("service_leases", "citus_distribute_service_leases"),
    ("workers", "citus_distribute_workers"),
    ("audit_log", "citus_distribute_audit_log"),
    ("workflow_catalog", "citus_distribute_workflow_catalog"),
)


@dataclass(frozen=True)
class RebalanceProgress:
    """A Citus rebalance job: ``state`` (scheduled, running, finished, failed, cancelled...)
    and shard moves done of total."""

    state: str
    done: int
    total: int
    error: str | None

    @property
    def finished(self) -> bool:
        return self.state in ("finished", "failed", "cancelled")
