"""``shardflow bench run``: a workload on a fresh local cluster, workers in their own processes.

Two modes:
- closed (``--count``): start COUNT workflows as fast as the client can (``start_many``), while
  the workers run them; throughput = COUNT / (last completion - first start);
- open (``--rate`` with ``--duration``): start workflows one by one at a fixed arrival rate;
  report latency start -> durable completion at that load.

Times come from the database clock (``created_at``, ``claimed_at``, ``completed_at``), so the
latency is what the database recorded, not what a polling client noticed. Also reported: CPU
seconds of the workers and of the database processes, worker RSS, and commits per workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shardflow.bench import maintenance, tail, workloads
from shardflow.bench.common import percentile
from shardflow.bench.harvest import RunHarvest
from shardflow.bench.system import CpuCaps, CpuMeter, postmaster_pid, rss_mb
from shardflow.client import Client
from shardflow.cluster.admin import init_cluster
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.config import ClusterConfig
from shardflow.errors import ConfigurationError, ShardflowError
from shardflow.storage.bench_store import BenchStore, RunTiming
from shardflow.timebounds import retention_seconds

WORKER_APP = "shardflow.bench.workloads:app"
START_CHUNK = 500
# With --retention: the run reads ended workflows every LOOK_SECONDS; each stays at least
# MIN_RETENTION_SECONDS (several looks, with harvest.OVERLAP_SECONDS of overlap each).
LOOK_SECONDS = 5.0
MIN_RETENTION_SECONDS = 60.0


@dataclass
class BenchSettings:
    workload: str = "w"
    nodes: int = 1
    workers: int = 2
    concurrency: int = 64
    partitions: int = 256
    count: int | None = 5000
    rate: float | None = None
    duration: float = 10.0
    node_cpu: float | None = None
    # After the last start, how long the run waits for every workflow to end before it
    # reports the rest as unfinished (the soak's pass/fail line).
    drain_timeout: float = 600.0
    # "plain" nodes, or "citus": a coordinator and ``nodes`` workers.
    backend: str = "plain"
    # Citus only: "direct" to the worker holding each shard, or "coordinator".
    citus_routing: str = "direct"
    # Keep finished workflows this long ("120s"; None: the default 7d): a soak's tables then
    # stay as small as a production cluster's, and the run reads its timings as it goes.
    retention: str | None = None

    def check(self) -> None:
        if self.workload not in workloads.WORKLOADS:
            raise ConfigurationError(
                f"unknown workload {self.workload!r}; choose one of {sorted(workloads.WORKLOADS)}"
            )
        if self.nodes < 1 or self.workers < 1 or self.concurrency < 1:
            raise ConfigurationError("--nodes, --workers and --concurrency must be at least 1")
        if self.rate is not None and (self.rate <= 0 or self.duration <= 0):
            raise ConfigurationError("--rate and --duration must be positive")
        if self.rate is None and (self.count is None or self.count < 1):
            raise ConfigurationError("give --count (closed loop) or --rate (open loop)")
        if self.backend not in ("plain", "citus"):
            raise ConfigurationError("--backend must be plain or citus")
        if self.backend == "citus" and self.node_cpu:
            raise ConfigurationError("--node-cpu is for the plain backend")
        if self.retention is not None:
            seconds = retention_seconds(
                self.retention, what="--retention", error=ConfigurationError
            )
            if seconds is None or seconds < MIN_RETENTION_SECONDS:
                raise ConfigurationError(
                    f"--retention must be at least {MIN_RETENTION_SECONDS:.0f}s: the run reads "
                    "each workflow's timings before the collector removes it"
                )


@dataclass
class BenchResult:
    settings: dict[str, Any]
    workflows: int
    failed: int
    seconds: float
    workflows_per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    pickup_p50_ms: float
    pickup_p99_ms: float
    # Where the slowest 1% of pick-ups were (partitions, 10-s windows): see bench/tail.py.
    pickup_tail: dict[str, Any]
    worker_cpu_seconds: float
    database_cpu_seconds: float
    cpu_ms_per_workflow: float
    commits_per_workflow: float
    worker_rss_mb_max: float
    worker_rss_mb_start: float
    worker_rss_mb_end: float
    per_node: dict[str, int] = field(default_factory=dict)
    # Checkpoints, WAL and autovacuums over the run, and when each checkpoint started
    # (seconds after the first start): see bench/maintenance.py.
    maintenance: dict[str, Any] = field(default_factory=dict)
    checkpoint_starts: list[list[Any]] = field(default_factory=list)
    # Open loop: starts that raised, workflows not finished within drain_timeout of the last
    # start, and how long after the last start the last workflow ended.
    start_errors: int = 0
    unfinished: int = 0
    drain_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Workers:
    """Worker processes running the benchmark app, with their RSS sampled."""

    def __init__(self, config_path: Path, settings: BenchSettings, log_dir: Path):
        self.config_path = config_path
        self.settings = settings
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.rss: list[float] = []
        self.rss_first = 0.0

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "shardflow",
            "--config",
            str(self.config_path),
            "worker",
            "--app",
            workloads.WORKER_APPS.get(self.settings.workload, WORKER_APP),
            "--concurrency",
            str(self.settings.concurrency),
        ]
        for i in range(self.settings.workers):
            log = (self.log_dir / f"worker{i}.log").open("wb")
            self.processes.append(
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def sample_rss(self) -> None:
        self.rss.append(max(rss_mb(pid) for pid in self.pids))

    async def sample_every(self, seconds: float) -> None:
        """Sample RSS for the whole run (open-loop runs spend it submitting)."""
        while True:
            self.sample_rss()
            await asyncio.sleep(seconds)

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


async def _progress(nodes: list[BenchStore], prefix: str) -> tuple[int, int]:
    counts = [await node.progress(prefix) for node in nodes]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


async def _commits(nodes: list[BenchStore]) -> int:
    return sum([await node.write_transactions() for node in nodes])


async def _wait_done(
    nodes: list[BenchStore],
    prefix: str,
    expected: int,
    workers: _Workers,
    timeout: float,
    harvest: RunHarvest | None,
) -> tuple[int, int]:
    """Poll until every workflow of the run finished, or ``timeout`` passed: (failed,
    unfinished). With a harvest (short retention) what ended is what the harvest has seen:
    the first ones are gone from the tables by now."""
    deadline = time.monotonic() + timeout
    while True:
        workers.sample_rss()
        if harvest:
            await harvest.look()
            done, failed = harvest.ended, harvest.failed
        else:
            done, failed = await _progress(nodes, prefix)
        if done >= expected or time.monotonic() > deadline:
            return failed, max(0, expected - done)
        for p in workers.processes:
            if p.poll() is not None:
                raise RuntimeError(f"a worker exited with {p.returncode}; see its log")
        await asyncio.sleep(1.0 if harvest else 0.1)


async def _look_every(harvest: RunHarvest | None, seconds: float) -> None:
    assert harvest is not None
    while True:
        try:
            await harvest.look()
        except ShardflowError as exc:  # a slow look: the next one reads the rows again
            print(f"bench: a harvest look failed ({exc}); looking again", file=sys.stderr)
        await asyncio.sleep(seconds)


def _with_retention(config: ClusterConfig, retention: str) -> ClusterConfig:
    """Keep finished workflows ``retention``; the collector runs every quarter of it."""
    seconds = retention_seconds(retention, what="--retention", error=ConfigurationError)
    assert seconds is not None
    gc_seconds = min(config.worker.gc_seconds, seconds / 4)
    return config.replace(
        retention=retention, worker=dataclasses.replace(config.worker, gc_seconds=gc_seconds)
    )


async def _submit_closed(client: Client, prefix: str, count: int, workload: str) -> None:
    wf = workloads.WORKLOADS[workload]
    chunks = [
        [f"{prefix}{i}" for i in range(start, min(count, start + START_CHUNK))]
        for start in range(0, count, START_CHUNK)
    ]
    in_flight = 4  # chunks at once: enough to keep every node busy, bounded memory

    async def one(ids: list[str]) -> None:
        await client.start_many(wf, list(range(len(ids))), workflow_ids=ids)

    for i in range(0, len(chunks), in_flight):
        await asyncio.gather(*(one(c) for c in chunks[i : i + in_flight]))


async def _submit_open(
    client: Client, prefix: str, rate: float, duration: float, wl: str
) -> tuple[int, int]:
    """Start one workflow every 1/rate seconds regardless of how the others are doing:
    (started, starts that raised). Only starts in flight are kept (hours-long soaks)."""
    wf = workloads.WORKLOADS[wl]
    total = int(rate * duration)
    began = time.monotonic()
    in_flight: set[asyncio.Future[Any]] = set()
    errors = 0

    def finished(task: asyncio.Future[Any]) -> None:
        nonlocal errors
        in_flight.discard(task)
        if task.cancelled() or task.exception() is not None:
            errors += 1

    for i in range(total):
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(client.start(wf, i, workflow_id=f"{prefix}{i}"))
        in_flight.add(task)
        task.add_done_callback(finished)
    await asyncio.gather(*in_flight, return_exceptions=True)
    return total, errors


async def _timings(nodes: list[BenchStore], prefix: str) -> tuple[list[RunTiming], dict[str, int]]:
    rows: list[RunTiming] = []
    per_node: dict[str, int] = {}
    for node in nodes:
        found = await node.timings(prefix)
        per_node[node.db.name] = len(found)
        rows += found
    return rows, per_node


async def _warm_up(client: Client, prefix: str, workload: str) -> None:
    """Run a few workflows end to end: every worker is up and every pool is open."""
    ids = [f"{prefix}warm-{i}" for i in range(20)]
    # W, or the workload's own workflow where its workers run another app (wq).
    wf = workloads.WORKLOADS[workload] if workload in workloads.WORKER_APPS else workloads.w
    await client.start_many(wf, list(range(len(ids))), workflow_ids=ids)
    for wf_id in ids:
        await client.result(wf_id, timeout=60)


async def run_throughput_bench(settings: BenchSettings, root: Path) -> BenchResult:
    settings.check()
    caps = CpuCaps(settings.node_cpu) if settings.node_cpu else None
    local = LocalCluster(root / "cluster")
    workers: _Workers | None = None
    try:
        config = local.create(
            nodes=settings.nodes,
            partition_count=settings.partitions,
            schema="shardflow",
            citus_workers=settings.nodes if settings.backend == "citus" else None,
        ).replace(citus_routing=settings.citus_routing)
        if settings.retention is not None:
            config = _with_retention(config, settings.retention)
        local.config_path.write_text(config.to_toml())  # the workers read the routing too
        await init_cluster(config)
        postmasters = [postmaster_pid(node.data_dir) for node in local.nodes()]
        if caps:
            for node, pid in zip(local.nodes(), postmasters, strict=True):
                caps.cap(node.name, pid)
        workers = _Workers(local.config_path, settings, root)
        workers.start()
        run_id = uuid.uuid4().hex[:8]
        prefix = f"b{run_id}-"
        async with Client(config, app=workloads.app) as client, ClusterAdmin(config) as admin:
            await _warm_up(client, f"warm{run_id}-", settings.workload)
            workers.rss_first = max(rss_mb(pid) for pid in workers.pids)
            meter = CpuMeter(workers=workers.pids, postmasters=postmasters)
            # Progress: every plain node; on Citus one node sees the whole database.
            nodes = [admin.bench(node.name) for node in config.nodes]
            # Commits: every server (on Citus the workers commit too, not the coordinator).
            await admin.latest_placement()
            servers = [admin.bench(name) for name in admin.node_names]
            commits_before = await _commits(servers)
            maintenance_before = await maintenance.counters(servers)
            meter.start()
            sampler = asyncio.create_task(workers.sample_every(1.0))
            start_errors = 0
            planned = int(settings.rate * settings.duration) if settings.rate else settings.count
            assert planned is not None  # check(): --count or --rate
            harvest = RunHarvest(nodes, prefix, planned) if settings.retention else None
            looking = asyncio.create_task(_look_every(harvest, LOOK_SECONDS)) if harvest else None
            if settings.rate is not None:
                expected, start_errors = await _submit_open(
                    client, prefix, settings.rate, settings.duration, settings.workload
                )
            else:
                assert settings.count is not None
                expected = settings.count
                await _submit_closed(client, prefix, expected, settings.workload)
            last_start = await _last_start(nodes, prefix)
            if looking:
                looking.cancel()
            failed, unfinished = await _wait_done(
                nodes, prefix, expected - start_errors, workers, settings.drain_timeout, harvest
            )
            meter.stop()
            sampler.cancel()
            commits = await _commits(servers) - commits_before
            server_work = maintenance.difference(
                await maintenance.counters(servers), maintenance_before
            )
            if harvest:
                rows, per_node = harvest.succeeded(), harvest.per_node
            else:
                rows, per_node = await _timings(nodes, prefix)
            checkpoints = maintenance.checkpoint_starts(
                [node.log_file for node in local.nodes()],
                min((r.created for r in rows), default=0.0),
            )
    finally:
        if workers is not None:
            workers.stop()
        with contextlib.suppress(Exception):
            local.destroy()
        if caps:
            caps.release()
    first = min(r.created for r in rows)
    last = max(r.completed for r in rows)
    seconds = max(last - first, 1e-6)
    latencies = [(r.completed - r.created) * 1000 for r in rows]
    pickups = [(r.claimed - r.created) * 1000 for r in rows]
    cpu = meter.worker_seconds + meter.database_seconds
    return BenchResult(
        settings=asdict(settings),
        workflows=len(rows),
        failed=failed,
        seconds=round(seconds, 3),
        workflows_per_second=round(len(rows) / seconds, 1),
        latency_p50_ms=round(statistics.median(latencies), 2),
        latency_p99_ms=round(percentile(latencies, 0.99), 2),
        latency_max_ms=round(max(latencies), 2),
        pickup_p50_ms=round(statistics.median(pickups), 2),
        pickup_p99_ms=round(percentile(pickups, 0.99), 2),
        pickup_tail=tail.pickup_tail(rows),
        worker_cpu_seconds=round(meter.worker_seconds, 2),
        database_cpu_seconds=round(meter.database_seconds, 2),
        cpu_ms_per_workflow=round(cpu * 1000 / max(1, len(rows)), 3),
        commits_per_workflow=round(commits / max(1, len(rows)), 2),
        worker_rss_mb_max=round(max(workers.rss, default=0.0), 1) if workers else 0.0,
        worker_rss_mb_start=round(workers.rss_first, 1) if workers else 0.0,
        worker_rss_mb_end=round(workers.rss[-1], 1) if workers and workers.rss else 0.0,
        per_node=per_node,
        maintenance=server_work,
        checkpoint_starts=checkpoints,
        start_errors=start_errors,
        unfinished=unfinished,
        drain_seconds=round(max(0.0, last - last_start), 3),
    )


async def _last_start(nodes: list[BenchStore], prefix: str) -> float:
    """When the run's last workflow was started (epoch seconds, database clock)."""
    return max([await node.last_start(prefix) for node in nodes])


@dataclass
class StartManyResult:
    nodes: int
    workflows: int
    seconds: float
    workflows_per_second: float
    per_node: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_start_many_bench(
    *, nodes: int, count: int, chunk: int, partitions: int, root: Path
) -> StartManyResult:
    """Bulk-start COUNT workflows (no workers running): how fast starts become durable."""
    if count < 1 or chunk < 1:
        raise ConfigurationError("--count and --chunk must be at least 1")
    local = LocalCluster(root / "cluster")
    try:
        config = local.create(nodes=nodes, partition_count=partitions, schema="shardflow")
        await init_cluster(config)
        prefix = f"m{uuid.uuid4().hex[:8]}-"
        ids = [f"{prefix}{i}" for i in range(count)]
        async with Client(config, app=workloads.app) as client, ClusterAdmin(config) as admin:
            await client.start_many(workloads.w, [0], workflow_ids=[f"{prefix}warm"])
            began = time.monotonic()
            for i in range(0, count, chunk):
                batch = ids[i : i + chunk]
                await client.start_many(workloads.w, list(range(len(batch))), workflow_ids=batch)
            seconds = time.monotonic() - began
            per_node = {}
            for node in config.nodes:
                per_node[node.name] = (await admin.bench(node.name).progress(prefix))[2]
    finally:
        with contextlib.suppress(Exception):
            local.destroy()
    stored = sum(per_node.values())
    return StartManyResult(
        nodes=nodes,
        workflows=stored - 1,
        seconds=round(seconds, 3),
        workflows_per_second=round(count / seconds, 1),
        per_node=per_node,
    )
