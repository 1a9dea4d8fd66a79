"""Preparing the servers of a local Citus cluster (``shardflow cluster up --citus``).

Synchronous on purpose: ``LocalCluster`` creates nodes from synchronous and asynchronous
callers alike. Every statement is a named query from ``sql/queries/citus``.
"""

from __future__ import annotations

import psycopg

from shardflow.errors import ConfigurationError
from shardflow.storage.queries import QueryBook

_QUERIES = QueryBook("shardflow", "citus")


def install_citus(dsn: str) -> None:
    """CREATE EXTENSION citus in the node's database (idempotent; needs a superuser)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_QUERIES["citus_create_extension"])
    except psycopg.errors.UndefinedFile as exc:  # citus.control is not installed
        raise ConfigurationError(
            "the Citus extension is not installed for this PostgreSQL: install a Citus "
            "package for it, or build it from source with `make citus CITUS_SRC=path/to/"
            "citus.tar.gz`"
        ) from exc
    except psycopg.Error as exc:
        raise ConfigurationError(f"could not create the citus extension: {exc}") from exc


def join_workers(coordinator_dsn: str, coordinator_port: int, workers: list[int]) -> None:
    """Register the coordinator and add each worker (by port, on 127.0.0.1). Idempotent."""
    with psycopg.connect(coordinator_dsn, autocommit=True) as conn:
        conn.execute(
            _QUERIES["citus_set_coordinator"], {"host": "127.0.0.1", "port": coordinator_port}
        )
        for port in workers:
            conn.execute(_QUERIES["citus_add_node"], {"host": "127.0.0.1", "port": port})
