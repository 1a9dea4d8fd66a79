"""A worker process's services for every node it serves, with one start/stop lifecycle.

Per node: a claim loop, a LISTEN listener and a reaper. For the process: shared execution
slots, the executor (one task per claimed workflow), the heartbeat thread and, when asked for,
the Prometheus metrics endpoint (see worker/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from types import TracebackType

from shardflow import tracing
from shardflow.client import Client
from shardflow.config import ClusterConfig
from shardflow.engine.app import App
from shardflow.engine.runner import Outcome, WorkflowRunner
from shardflow.errors import ClusterNotInitialized, ShardflowError, WriteStalled
from shardflow.queues.limits import check_rate_windows_kept
from shardflow.routing import Placement
from shardflow.stalls import watch_running_loop
from shardflow.storage import WorkerStore
from shardflow.storage.queue_store import QueueStore
from shardflow.storage.records import ClaimedWorkflow
from shardflow.storage.relay_store import RelayStore
from shardflow.storage.retention_store import RetentionStore
from shardflow.storage.schedule_store import ScheduleStore
from shardflow.topology import Topology
from shardflow.worker.admissions import Admissions
from shardflow.worker.collector import Collector
from shardflow.worker.heartbeat import HeartbeatThread
from shardflow.worker.listener import Listener
from shardflow.worker.membership import MembershipWatcher
from shardflow.worker.metrics import (
    MetricsServer,
    NodeCounters,
    QueueSampler,
    StateCollector,
    WorkerMetrics,
)
from shardflow.worker.ports import NodeStore
from shardflow.worker.producer import ClaimLoop
from shardflow.worker.reaper import Reaper
from shardflow.worker.relay import Relay
from shardflow.worker.scheduler import Scheduler
from shardflow.worker.service import Service
from shardflow.worker.slots import Slots

log = logging.getLogger("shardflow.worker")


# How often the metrics read each node's queue depth (a count over pending rows only).
METRICS_SAMPLE_SECONDS = 5.0

# Outcomes that end a workflow (a child's end is then told to its parent).
_ENDED = (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.CANCELLED)


class Worker:
    """Runs an App's workflows from every node of the cluster.

    Use ``async with Worker(app, config):`` or ``start()`` / ``stop()``. ``stopped`` is set
    when the worker stops, on request or because a service failed.
    """

    def __init__(
        self,
        app: App,
        config: ClusterConfig,
        *,
        concurrency: int | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ):
        config.require_nodes()
        if concurrency is not None:
            config = config.replace(worker=replace(config.worker, concurrency=concurrency))
        self.app = app
        self.config = config
        self.settings = config.worker
        # One owner id per incarnation: a restarted process never inherits old leases.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.outcomes: Counter[str] = Counter()
        # Always counted (cheap); served over HTTP only with a metrics port (0: any free one).
        self.metrics = WorkerMetrics()
        self.metrics.registry.register(StateCollector(self, self.metrics))
        self._metrics_server = (
            MetricsServer(self.metrics.registry, host=metrics_host, port=metrics_port)
            if metrics_port is not None
            else None
        )
        self.stopped = asyncio.Event()
        check_rate_windows_kept(app, config.retention_seconds)
        self.topology = Topology(config, role="worker")
        self._runner = WorkflowRunner(
            app,
            max_payload_bytes=config.limits.max_payload_bytes,
            write_timeout=self.settings.write_timeout_seconds,
            route=self._partition_of,
            max_id_length=config.limits.max_id_length,
            on_step=self.metrics.step_finished,
            default_retention=config.retention_seconds,
        )
        # The relays deliver through a client of this process (opened on first use).
        self._relays: dict[str, Relay] = {}
        self._relay_client: Client | None = None
        self._relay_client_lock = asyncio.Lock()
        self._declare_lock = asyncio.Lock()
        self._schedules_declared = False
        self._declares_schedules = any(wf.schedule for wf in app.workflows.values())
        self._stores: dict[str, WorkerStore] = {}
        self._node_services: dict[str, list[Service]] = {}
        self._loops: dict[str, ClaimLoop] = {}
        self._membership: MembershipWatcher | None = None
        self._tasks: dict[asyncio.Task[None], tuple[NodeStore, ClaimedWorkflow]] = {}
        self._slots = Slots(self.settings.concurrency)
        self._heartbeat = HeartbeatThread(
            config=config,
            owner=self.owner,
            held=self._held_leases,
            app_name=app.name,
            workflow_names=list(app.workflows),
            claimed=self._claimed_per_node,
            catalog=app.catalog(config.retention_seconds),
        )
        self._started = False
        self._stop_requested = False
        self._stop_task: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def running(self) -> frozenset[str]:
        """Ids of the workflows executing in this worker now (each holds a slot)."""
        return frozenset(work.workflow_id for _, work in self._tasks.values())

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    @property
    def metrics_port(self) -> int | None:
        """Where /metrics is served (None: not served)."""
        return self._metrics_server.port if self._metrics_server is not None else None

    def node_counters(self) -> dict[str, NodeCounters]:
        """Per served node, the counters a scrape reads (called from the HTTP thread:
        ``list()`` copies each dict in one step under the GIL)."""
        counters = {}
        for name, loop in list(self._loops.items()):
            reapers = [s for s in self._node_services.get(name, []) if isinstance(s, Reaper)]
            store = self._stores.get(name)
            counters[name] = NodeCounters(
                claimed=loop.claimed_total,
                requeued=sum(r.requeued_total for r in reapers),
                dead=sum(r.dead_total for r in reapers),
                pool=store.db.pool_stats() if store is not None else {},
            )
        return counters

    @property
    def slots_in_use(self) -> int:
        """Execution slots held now (a workflow waiting for a signal or sleeping holds none)."""
        return self._slots.in_use

    @property
    def nodes(self) -> list[str]:
        """The nodes this worker claims from now."""
        return sorted(self._loops)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        # A worker resumed after SIGSTOP sees every timeout fire at once: know it was paused.
        watch_running_loop()
        if self._metrics_server is not None:
            self._metrics_server.start()  # first: a port in use fails the start at once
        self._heartbeat.start()
        if self.topology.backend == "plain":
            # Serve the configured nodes at once, even if one is down; the membership
            # watcher then follows the placement. On Citus the configured node is the
            # coordinator, which holds no shards: the placement says whom to serve.
            for node in self.config.nodes:
                self._serve_node(node.name)
        self._membership = MembershipWatcher(
            topology=self.topology,
            apply=self._follow_placement,
            interval=self.settings.membership_seconds,
            on_failure=self._service_failed,
        )
        if self.topology.backend == "citus":
            # The placement names the nodes to serve: read it once before start() returns,
            # so a started worker already claims (if the read fails, the watcher retries).
            await self._membership.follow_once()
        self._membership.start()
        log.info("worker started", extra={"action": "worker_started", "owner": self.owner})

    def _admissions_for(self, name: str, store: WorkerStore) -> Admissions | None:
        """The node's admissions of the app's queues (None: the app declares none)."""
        queues = list(self.app.queues.values())
        if not queues:
            return None
        queue_store = QueueStore(
            self.topology.connector(name),
            lambda: store.partitions,
            app_name=self.app.name,
            workflow_names=list(self.app.workflows),
        )
        return Admissions(
            queue_store, queues, owner=self.owner, poll_seconds=self.settings.poll_seconds
        )

    def _serve_node(self, name: str, *, partitions: list[int] | None = None) -> None:
        """Start this node's claim loop, listener and reaper (on Citus, for ``partitions``)."""
        store = WorkerStore(
            self.topology.connector(name),
            app_name=self.app.name,
            workflow_names=list(self.app.workflows),
            on_group_commit=self.metrics.group_commit(name),
        )
        store.partitions = partitions or []
        self._stores[name] = store
        loop = ClaimLoop(
            store=store,
            owner=self.owner,
            slots=self._slots,
            settings=self.settings,
            execute=self._execute,
            on_claim=lambda seconds, size: self.metrics.claimed(name, seconds, size),
            admissions=self._admissions_for(name, store),
            on_failure=self._service_failed,
        )
        self._loops[name] = loop
        self._slots.nodes = len(self._loops)
        self._node_services[name] = [
            loop,
            Listener(
                store=store,
                wake=loop.notified,
                poll_seconds=self.settings.poll_seconds,
                on_failure=self._service_failed,
            ),
            Reaper(
                store=store,
                holder=self.owner,
                interval=self.settings.reaper_seconds,
                wake=loop.wake_for_suspects,
                max_expiries=self.settings.max_lease_expiries,
                on_failure=self._service_failed,
            ),
            self._relay_for(name, store),
            self._collector_for(name, store),
            Scheduler(
                store=ScheduleStore(
                    self.topology.connector(name),
                    lambda: store.partitions,
                    citus=self.config.backend == "citus",
                ),
                acquire_lease=self._lease_taker(store),
                # Only an app with @app.workflow(schedule=...) has schedules to declare.
                declare=self._declare_schedules if self._declares_schedules else None,
                on_failure=self._service_failed,
            ),
        ]
        if self._metrics_server is not None:
            self._node_services[name].append(
                QueueSampler(
                    store=store,
                    metrics=self.metrics,
                    interval=METRICS_SAMPLE_SECONDS,
                    on_failure=self._service_failed,
                )
            )
        for service in self._node_services[name]:
            service.start()

    async def _follow_placement(self, placement: Placement) -> None:
        """Serve every node of ``placement``; stop serving nodes it no longer has."""
        if self._stop_requested:
            return
        wanted = {node.name for node in placement.nodes}
        for name in sorted(wanted - set(self._stores)):
            log.info("serving new node %s", name, extra={"action": "node_added", "node": name})
            self._serve_node(name, partitions=placement.partitions_of(name))
        for name in set(self._stores) - wanted:
            log.info(
                "node %s left the cluster", name, extra={"action": "node_removed", "node": name}
            )
            await asyncio.gather(*(s.stop(timeout=5) for s in self._node_services.pop(name)))
            self._loops.pop(name)
            self._stores.pop(name)
            self._relays.pop(name, None)
            self._slots.nodes = len(self._loops)
            self._slots.isolating.discard(name)
        for name, store in self._stores.items():
            # On Citus a node claims only the partitions whose shards it holds now.
            store.partitions = placement.partitions_of(name)
        self._heartbeat.set_nodes(self.topology.dsns())

    async def _partition_of(self, key: str) -> int:
        """Where a child with routing key ``key`` lives (the placement is read if a run
        needs it before the membership watcher's first read)."""
        try:
            return self.topology.route(key)[0]
        except ClusterNotInitialized:
            await self.topology.refresh()
            return self.topology.route(key)[0]

    def _lease_taker(self, store: WorkerStore) -> Callable[[str, timedelta], Awaitable[bool]]:
        """Takes or keeps a node-wide singleton service's lease (relay, collector) for us."""

        async def acquire(service: str, ttl: timedelta) -> bool:
            return await store.acquire_service_lease(service=service, holder=self.owner, ttl=ttl)

        return acquire

    def _relay_for(self, name: str, store: WorkerStore) -> Relay:
        relay = Relay(
            store=RelayStore(self.topology.connector(name), lambda: store.partitions),
            acquire_lease=self._lease_taker(store),
            client=self._delivery_client,
            holder=self.owner,
            interval=self.settings.poll_seconds,
            on_failure=self._service_failed,
        )
        store.on_outbox = relay.wake
        self._relays[name] = relay
        return relay

    def _collector_for(self, name: str, store: WorkerStore) -> Collector:
        return Collector(
            store=RetentionStore(
                self.topology.connector(name),
                lambda: store.partitions,
                citus=self.config.backend == "citus",
            ),
            acquire_lease=self._lease_taker(store),
            interval=self.settings.gc_seconds,
            batch=self.settings.gc_batch,
            on_failure=self._service_failed,
        )

    async def _declare_schedules(self) -> None:
        """Keep a schedule of every @app.workflow(schedule=...) (once per worker; each node's
        scheduler asks at its start). A deploy that changed one replaces its definition."""
        async with self._declare_lock:
            if self._schedules_declared:
                return
            client = await self._delivery_client()
            for spec in self.app.schedule_specs(
                self.config.retention_seconds, self.config.limits.max_payload_bytes
            ):
                _, changed = await client.schedules.put(spec, replace=True)
                if changed:
                    log.info(
                        "schedule %s: %s %s (%s)",
                        spec.name,
                        spec.workflow_name,
                        spec.cron,
                        spec.timezone,
                        extra={"action": "schedule_declared", "schedule": spec.name},
                    )
            self._schedules_declared = True

    async def _delivery_client(self) -> Client:
        # One client for every node's relay: they ask for it at once when the worker starts,
        # and a second one made meanwhile was never closed (its pool workers then hung the
        # event loop's shutdown while connecting).
        async with self._relay_client_lock:
            if self._relay_client is None:
                client = Client(self.config, app=self.app, actor=f"relay:{self.owner}")
                try:
                    await client.connect()
                except BaseException:
                    await client.close()
                    raise
                self._relay_client = client
        return self._relay_client

    def request_stop(self) -> None:
        """Begin a graceful stop from a signal handler or a callback."""
        if not self._stop_requested:
            self._stop_requested = True
            self._stop_task = asyncio.ensure_future(self.stop())

    async def stop(self) -> None:
        """Stop claiming, let in-flight work finish (up to the grace period), release the rest.

        Idempotent.
        """
        if self.stopped.is_set() or not self._started:
            self.stopped.set()
            return
        self._stop_requested = True
        # Stop claiming first: nothing new starts while the rest winds down.
        for loop in self._loops.values():
            loop.stopping.set()
        if self._membership is not None:
            await self._membership.stop(timeout=5)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.shutdown_grace_seconds)
        leftover = dict(self._tasks)
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        # Unfinished work goes back now instead of waiting for its lease to expire.
        for store, work in leftover.values():
            try:
                await store.release(work, delay=timedelta(0))
            except ShardflowError as exc:
                log.warning("could not release %s: %s", work.workflow_id, exc)
        services = [s for group in self._node_services.values() for s in group]
        await asyncio.gather(*(s.stop(timeout=5) for s in services))
        if self._relay_client is not None:
            await self._relay_client.close()
        self._heartbeat.stop()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        await self.topology.close()
        self.stopped.set()
        log.info("worker stopped", extra={"action": "worker_stopped", "owner": self.owner})

    def _claimed_per_node(self) -> dict[str, int]:
        """node -> workflows claimed there since the start (heartbeat thread: see above)."""
        return {name: loop.claimed_total for name, loop in list(self._loops.items())}

    def _held_leases(self) -> dict[str, list[tuple[int, str]]]:
        """node -> (partition, lease token) of running work. Called from the heartbeat thread:
        ``list(dict.values())`` copies the dict in one step under the GIL."""
        held: dict[str, list[tuple[int, str]]] = {}
        for store, work in list(self._tasks.values()):
            held.setdefault(store.node, []).append((work.partition, work.lease_token))
        return held

    def _execute(self, store: NodeStore, work: ClaimedWorkflow, slots: int) -> None:
        """Run ``work`` in its own task; it gives back ``slots`` execution slots when done."""
        task = asyncio.create_task(self._run_one(store, work, slots), name=f"wf:{work.workflow_id}")
        self._tasks[task] = (store, work)

    async def _run_one(self, store: NodeStore, work: ClaimedWorkflow, slots: int) -> None:
        try:
            with tracing.span(
                f"shardflow.run {work.name}",
                parent=work.trace_context,
                kind="consumer",
                attributes={
                    tracing.WORKFLOW_ID: work.workflow_id,
                    tracing.WORKFLOW: work.name,
                    tracing.NODE: store.node,
                    "shardflow.partition": work.partition,
                    "shardflow.claim_count": work.claim_count,
                },
            ):
                result = await self._runner.run(store, work)
            outcome = result.outcome
            self.outcomes[outcome] += 1
            self.metrics.run_ended(store.node, work.name, outcome)
            if result.due_in is not None:
                self._remember_timer(work.partition, store.node, result.due_in.total_seconds())
            if work.parent_id is not None and outcome in _ENDED:
                relay = self._relays.get(store.node)
                if relay is not None:
                    relay.wake()  # tell the parent now, not at the next poll
            if outcome is Outcome.LOST:
                log.info(
                    "lost the lease of %s",
                    work.workflow_id,
                    extra={
                        "action": "lease_lost",
                        "node": store.node,
                        "partition": work.partition,
                        "workflow_id": work.workflow_id,
                    },
                )
        except Exception as exc:
            if not isinstance(exc, ShardflowError):
                log.exception("bug: run of %s crashed", work.workflow_id)
            # Node trouble mid-run: the lease expires and the reaper makes it runnable again.
            self.outcomes["error"] += 1
            self.metrics.run_ended(store.node, work.name, "error")
            log.log(
                # A write that never came back is a loud event: it used to leave a workflow
                # `running` forever with no trace.
                logging.ERROR if isinstance(exc, WriteStalled) else logging.WARNING,
                "run of %s abandoned: %s",
                work.workflow_id,
                exc,
                extra={
                    "action": "run_abandoned",
                    "node": store.node,
                    "partition": work.partition,
                    "workflow_id": work.workflow_id,
                },
            )
        finally:
            current = asyncio.current_task()
            if current is not None:
                self._tasks.pop(current, None)
            await self._slots.give_back(slots, node=store.node)
            # Wake every loop: one may be waiting for the worker to drain (a suspect).
            for loop in self._loops.values():
                loop.wake()

    def _remember_timer(self, partition: int, claimed_on: str, seconds: float) -> None:
        """Wake the claim loop of the node that owns the partition now (on Citus, a shard
        may have moved since the claim) when the released workflow falls due."""
        node = claimed_on
        with contextlib.suppress(ShardflowError):
            node = self.topology.placement.owner(partition)
        loop = self._loops.get(node) or self._loops.get(claimed_on)
        if loop is not None:
            loop.timers.add(seconds, partition)

    def _service_failed(self, service: Service, exc: BaseException) -> None:
        log.critical("stopping worker: %s failed", service.name)
        self.request_stop()
