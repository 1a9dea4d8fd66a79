"""Connections to the nodes of a cluster, built the same way by every component."""

from __future__ import annotations

from shardflow.config import ClusterConfig
from shardflow.routing import PlacementNode
from shardflow.storage import NodeConnector
from shardflow.storage.conninfo import make_conninfo

_UNSET = object()


def node_connector(
    config: ClusterConfig,
    name: str,
    dsn: str,
    *,
    role: str,
    pool_max_size: int | None = None,
    connect_timeout: float | None = None,
    operation_timeout: float | object | None = _UNSET,
) -> NodeConnector:
    """A connector to node ``name`` with the cluster's timeouts; ``role`` names the
    application in pg_stat_activity (shardflow-client, shardflow-worker, ...)."""
    return NodeConnector(
        name=name,
        dsn=dsn,
        schema=config.schema,
        connect_timeout=connect_timeout or config.connect_timeout,
        operation_timeout=(
            config.operation_timeout if operation_timeout is _UNSET else operation_timeout  # type: ignore[arg-type]
        ),
        pool_max_size=pool_max_size or config.pool_max_size,
        application_name=f"shardflow-{role}",
        dialect=config.backend,
    )


def dsn_for(config: ClusterConfig, node: PlacementNode) -> str:
    """The DSN of a placement node: the configured one, else the published (password-free)
    connection info; the password then comes from the environment or a password file."""
    for configured in config.nodes:
        if configured.name == node.name:
            return configured.dsn
    return make_conninfo(dict(node.conninfo))
