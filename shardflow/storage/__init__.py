"""The storage seam: the only package that talks SQL and imports psycopg.

Everything above it sees typed records and shardflow's own errors.
"""

from __future__ import annotations

from shardflow.storage.admin_store import AdminStore
from shardflow.storage.client_store import ClientStore
from shardflow.storage.connector import NodeConnector
from shardflow.storage.worker_store import WorkerStore

__all__ = ["AdminStore", "ClientStore", "NodeConnector", "WorkerStore"]
