"""Lease renewal on a thread of its own, with its own event loop and connections.

A step that blocks the worker's event loop (CPU-bound async code, a blocking call) cannot
starve it: the heartbeat keeps renewing this worker incarnation's leases on every node. Each
beat also registers the worker (its app and workflow names) on every node, which is how
``cluster status`` knows which pending workflows no live worker can run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from shardflow.config import ClusterConfig
from shardflow.connectors import node_connector
from shardflow.errors import ShardflowError
from shardflow.stalls import watch_running_loop
from shardflow.storage import NodeConnector, WorkerStore

log = logging.getLogger("shardflow.worker")


class HeartbeatThread:
    """Renews ``owner``'s leases on every node each ``heartbeat_seconds``."""

    def __init__(
        self,
        *,
        config: ClusterConfig,
        owner: str,
        held: Callable[[], dict[str, list[tuple[int, str]]]],
        app_name: str = "",
        workflow_names: Sequence[str] = (),
        claimed: Callable[[], dict[str, int]] | None = None,
        catalog: Sequence[dict[str, Any]] = (),
    ):
        self.config = config
        self.owner = owner
        self.app_name = app_name
        self.workflow_names = list(workflow_names)
        # What the app can run, written once per node connector (the SQL API's catalog).
        self.catalog = list(catalog)
        self._cataloged: weakref.WeakSet[NodeConnector] = weakref.WeakSet()
        # node -> (partition, lease token) of the work this worker runs now (read each beat).
        self._held = held
        # node -> workflows claimed there since the worker started (read each beat).
        self._claimed = claimed or dict
        self.started = threading.Event()
        self.renewals = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._wanted = {node.name: node.dsn for node in config.nodes}
        self._thread = threading.Thread(target=self._main, name="shardflow-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.started.wait(timeout=10)

    def set_nodes(self, nodes: dict[str, str]) -> None:
        """Renew on these nodes (name -> DSN) from the next beat on (membership changed)."""
        with self._lock:
            self._wanted = dict(nodes)

    def stop(self) -> None:
        """Idempotent; returns once the thread has closed its connections."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def _main(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        settings = self.config.worker
        lease = timedelta(seconds=settings.lease_seconds)
        connectors: dict[str, NodeConnector] = {}
        watch_running_loop()
        self.started.set()
        try:
            while not self._stop.is_set():
                with self._lock:
                    wanted = dict(self._wanted)
                for name in set(connectors) - set(wanted):
                    await connectors.pop(name).close()
                for name, dsn in wanted.items():
                    if name not in connectors:
                        connectors[name] = node_connector(
                            self.config,
                            name,
                            dsn,
                            role="heartbeat",
                            pool_max_size=1,
                            connect_timeout=min(
                                self.config.connect_timeout, settings.heartbeat_seconds
                            ),
                            operation_timeout=settings.heartbeat_seconds,
                        )
                held = self._held()
                register = set(connectors)
                if self.config.backend == "citus" and connectors:
                    # Every node is the same database: register once, and renew the leases
                    # of runs claimed on a node that has left (drained) through another one,
                    # or they would expire under a run that is still going.
                    first = sorted(connectors)[0]
                    register = {first}
                    for name in set(held) - set(connectors):
                        held.setdefault(first, []).extend(held.pop(name))
                await asyncio.gather(
                    *(
                        self._beat(
                            WorkerStore(c),
                            held.get(name, []),
                            lease,
                            register=name in register,
                            catalog=c not in self._cataloged,
                        )
                        for name, c in connectors.items()
                    )
                )
                await asyncio.to_thread(self._stop.wait, settings.heartbeat_seconds)
        finally:
            await asyncio.gather(
                *(WorkerStore(c).unregister_worker(owner=self.owner) for c in connectors.values()),
                return_exceptions=True,
            )
            await asyncio.gather(*(c.close() for c in connectors.values()), return_exceptions=True)

    async def _beat(
        self,
        store: WorkerStore,
        held: list[tuple[int, str]],
        lease: timedelta,
        *,
        register: bool,
        catalog: bool,
    ) -> None:
        try:
            if held:
                self.renewals += await store.renew_leases(owner=self.owner, held=held, lease=lease)
            if self.app_name and register:
                await store.register_worker(
                    owner=self.owner,
                    app_name=self.app_name,
                    workflow_names=self.workflow_names,
                    claims=self._claimed(),
                    # Live for three beats: one missed beat does not make it look gone.
                    ttl=timedelta(seconds=3 * self.config.worker.heartbeat_seconds),
                )
                if catalog and self.catalog:
                    await store.register_catalog(self.catalog)
                    self._cataloged.add(store.db)
        except ShardflowError as exc:
            log.warning(
                "heartbeat failed: %s",
                exc,
                extra={"action": "heartbeat_failed", "node": store.node},
            )
