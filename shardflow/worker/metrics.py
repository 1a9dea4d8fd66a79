"""Prometheus metrics of one worker process (`shardflow worker --metrics-port N`).

Built on the official client library, in a registry of the worker's own (several workers in
one process, as in the tests, do not mix their numbers). Two kinds:

- observed where they happen: step durations, claim latency and size, group-commit sizes,
  finished runs (histograms and counters, cheap enough for the hot path);
- read when scraped: the claim loops', reapers' and pools' own counters, and per node the
  queue depth and the age of the oldest runnable workflow, which a sampler reads from the
  node every few seconds (only while the metrics are served).

Labels stay bounded: node names, workflow and step names of the app, outcomes; never a
workflow id. Every worker serving a node reports that node's queue gauges: aggregate them
with ``max by (node)``, and the counters with ``sum``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shardflow.errors import ConfigurationError, ShardflowError
from shardflow.storage.records import QueueDepth
from shardflow.worker.service import Service, jittered

log = logging.getLogger("shardflow.worker")

# Seconds: from a fast step body to one that calls a slow service.
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
SIZE_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)


class WorkerMetrics:
    """The histograms and counters a worker updates as things happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.step_seconds = Histogram(
            "shardflow_step_duration_seconds",
            "Duration of step bodies run by this worker (replays are not counted).",
            ["step", "outcome"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.claim_seconds = Histogram(
            "shardflow_claim_duration_seconds",
            "Duration of one claim statement on a node.",
            ["node"],
            buckets=CLAIM_BUCKETS,
            registry=self.registry,
        )
        self.claim_size = Histogram(
            "shardflow_claim_batch_size",
            "Workflows taken by one claim statement.",
            ["node"],
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.checkpoint_batch = Histogram(
            "shardflow_checkpoint_batch_size",
            "Checkpoint and progress writes committed together in one group commit.",
            ["node"],
            buckets=SIZE_BUCKETS[1:],
            registry=self.registry,
        )
        self.runs = Counter(
            "shardflow_workflow_runs",
            "Workflow runs that ended in this worker, by how (succeeded, failed, cancelled; "
            "suspended: it sleeps, waits or backs off; lost: its lease was taken; error: node "
            "trouble).",
            ["node", "workflow", "outcome"],
            registry=self.registry,
        )
        self.sampled: dict[str, QueueDepth] = {}

    def step_finished(self, step: str, seconds: float, succeeded: bool) -> None:
        self.step_seconds.labels(step, "succeeded" if succeeded else "failed").observe(seconds)

    def claimed(self, node: str, seconds: float, size: int) -> None:
        self.claim_seconds.labels(node).observe(seconds)
        self.claim_size.labels(node).observe(size)

    def group_commit(self, node: str) -> Callable[[int], None]:
        """What a node's write batcher calls with each batch's size."""
        histogram = self.checkpoint_batch.labels(node)
        return histogram.observe

    def run_ended(self, node: str, workflow: str, outcome: str) -> None:
        self.runs.labels(node, workflow, outcome).inc()


@dataclass(frozen=True)
class NodeCounters:
    """One served node's counters, as read at scrape time."""

    claimed: int
    requeued: int
    dead: int
    pool: dict[str, int]


class WorkerState(Protocol):
    """What the scrape reads from the worker (called from the HTTP server's thread)."""

    def node_counters(self) -> dict[str, NodeCounters]: ...

    @property
    def slots_in_use(self) -> int: ...

    @property
    def concurrency(self) -> int: ...


class StateCollector(Collector):
    """Families built at scrape time from the worker's own counters and the sampled gauges."""

    def __init__(self, worker: WorkerState, metrics: WorkerMetrics):
        self._worker = worker
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        nodes = self._worker.node_counters()
        claimed = CounterMetricFamily(
            "shardflow_workflows_claimed", "Workflow runs started (claimed) here.", labels=["node"]
        )
        expiries = CounterMetricFamily(
            "shardflow_lease_expiries",
            "Expired leases this worker's reaper found (requeued or dead-lettered).",
            labels=["node"],
        )
        requeues = CounterMetricFamily(
            "shardflow_reaper_requeues",
            "Workflows this worker's reaper made runnable again after their lease expired.",
            labels=["node"],
        )
        dead = CounterMetricFamily(
            "shardflow_dead_letters",
            "Workflows this worker's reaper dead-lettered (lease expired too many times).",
            labels=["node"],
        )
        pool = GaugeMetricFamily(
            "shardflow_pool_connections",
            "Connections of this process's pool to a node, busy or idle.",
            labels=["node", "state"],
        )
        waiting_requests = GaugeMetricFamily(
            "shardflow_pool_requests_waiting",
            "Calls of this process waiting for a connection to a node (its pool is all busy).",
            labels=["node"],
        )
        for node, counters in sorted(nodes.items()):
            claimed.add_metric([node], counters.claimed)
            expiries.add_metric([node], counters.requeued + counters.dead)
            requeues.add_metric([node], counters.requeued)
            dead.add_metric([node], counters.dead)
            for state in ("busy", "idle"):
                pool.add_metric([node, state], counters.pool.get(state, 0))
            waiting_requests.add_metric([node], counters.pool.get("waiting", 0))
        yield from (claimed, expiries, requeues, dead, pool, waiting_requests)

        depth = GaugeMetricFamily(
            "shardflow_queue_depth",
            "Workflows runnable now on a node, not yet claimed (sampled every few seconds).",
            labels=["node"],
        )
        oldest = GaugeMetricFamily(
            "shardflow_queue_oldest_age_seconds",
            "How long the oldest runnable workflow of a node has been waiting for a worker.",
            labels=["node"],
        )
        waiting = GaugeMetricFamily(
            "shardflow_workflows_waiting",
            "Pending workflows not runnable yet: sleeping, backing off, waiting for a signal.",
            labels=["node"],
        )
        for node, sample in sorted(dict(self._metrics.sampled).items()):
            depth.add_metric([node], sample.runnable)
            oldest.add_metric([node], sample.oldest_seconds)
            waiting.add_metric([node], sample.waiting)
        yield from (depth, oldest, waiting)

        slots = GaugeMetricFamily(
            "shardflow_worker_slots", "Execution slots of this worker.", labels=["state"]
        )
        in_use = self._worker.slots_in_use
        slots.add_metric(["busy"], in_use)
        slots.add_metric(["free"], max(0, self._worker.concurrency - in_use))
        yield slots


class QueueStore(Protocol):
    @property
    def node(self) -> str: ...

    async def queue_depth(self) -> QueueDepth: ...


class QueueSampler(Service):
    """Reads one node's queue depth every ``interval`` seconds for the gauges."""

    def __init__(
        self, *, store: QueueStore, metrics: WorkerMetrics, interval: float, **kwargs: object
    ):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.name = f"queue-sampler:{store.node}"
        self.store = store
        self.metrics = metrics
        self.interval = interval

    async def run(self) -> None:
        while True:
            try:
                self.metrics.sampled[self.store.node] = await self.store.queue_depth()
            except ShardflowError as exc:
                # No number rather than a stale one: the gauge disappears while it is down.
                # (An optional sampler never stops the worker.)
                self.metrics.sampled.pop(self.store.node, None)
                log.debug("queue sample of %s failed: %s", self.store.node, exc)
            if await self.pause(jittered(self.interval)):
                self.metrics.sampled.pop(self.store.node, None)
                return


class MetricsServer:
    """The /metrics endpoint of a registry, on a thread of its own."""

    def __init__(self, registry: CollectorRegistry, *, host: str, port: int):
        self._registry = registry
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one picked for port 0)."""
        return self._server.server_port if self._server is not None else self._port

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(
                self._port, addr=self._host, registry=self._registry
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {self._host}:{self._port}: {exc.strerror or exc}; "
                "pick another --metrics-port (0 picks a free one) or stop what holds it"
            ) from None
        log.info(
            "metrics on http://%s:%d/metrics",
            self._host,
            self.port,
            extra={"action": "metrics_started", "port": self.port},
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
