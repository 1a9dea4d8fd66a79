"""The dashboard's /metrics: the cluster as its nodes hold it, read at scrape time.

Workers export what they do (worker/metrics.py); this is what the database says: workflows by
status, the runnable queue and its oldest wait, partitions, whether each node answers. One
``cluster status`` read per scrape, into a registry of its own (nothing kept in between).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shardflow.cluster.admin import cluster_status
from shardflow.config import ClusterConfig
from shardflow.storage.records import STATUSES


async def exposition(config: ClusterConfig) -> tuple[bytes, str]:
    status = await cluster_status(config)
    registry = CollectorRegistry()
    up = Gauge(
        "shardflow_node_up", "1 when the node answered this scrape.", ["node"], registry=registry
    )
    workflows = Gauge(
        "shardflow_cluster_workflows",
        "Workflows a node holds, by status (dead: dead-lettered).",
        ["node", "status"],
        registry=registry,
    )
    depth = Gauge(
        "shardflow_cluster_queue_depth",
        "Workflows runnable now on a node, not yet claimed.",
        ["node"],
        registry=registry,
    )
    oldest = Gauge(
        "shardflow_cluster_queue_oldest_age_seconds",
        "How long a node's oldest runnable workflow has waited for a worker.",
        ["node"],
        registry=registry,
    )
    partitions = Gauge(
        "shardflow_cluster_partitions", "Partitions a node owns.", ["node"], registry=registry
    )
    moves = Gauge(
        "shardflow_cluster_partitions_to_move",
        "Partitions (on Citus: shard moves) a rebalance would move now.",
        registry=registry,
    )
    moves.set(status.partitions_to_move)
    # A counter the journal keeps (not this process): a family of its own, no _created.
    moved = CounterMetricFamily(
        "shardflow_rebalance_partitions_moved",
        "Partition moves finished, by the node that gave the partition up (plain nodes; "
        "Citus moves shards itself).",
        labels=["node"],
    )
    connections = Gauge(
        "shardflow_cluster_connections",
        "Client connections open on a node's server (state=in_use) and allowed (state=allowed).",
        ["node", "state"],
        registry=registry,
    )
    for node in status.nodes:
        up.labels(node.name).set(1 if node.reachable else 0)
        if not node.reachable:
            continue
        partitions.labels(node.name).set(node.partitions_owned)
        for state in STATUSES:
            workflows.labels(node.name, state).set(node.workflows.get(state, 0))
        if node.queue is not None:
            depth.labels(node.name).set(node.queue.runnable)
            oldest.labels(node.name).set(node.queue.oldest_seconds)
        if node.connections is not None:
            connections.labels(node.name, "in_use").set(node.connections.in_use)
            connections.labels(node.name, "allowed").set(node.connections.allowed)
        if status.backend != "citus":
            moved.add_metric([node.name], node.moves_done)
    registry.register(_Families([moved]))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Families(Collector):
    """Metric families built for one scrape."""

    def __init__(self, families: list[CounterMetricFamily]):
        self.families = families

    def collect(self) -> Iterable[CounterMetricFamily]:
        return self.families
