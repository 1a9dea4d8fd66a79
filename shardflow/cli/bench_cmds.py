"""``shardflow bench ...``: the benchmarks, each on a fresh local cluster."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from shardflow.cli.base import CliState, cli, pass_state, run_async


@cli.group()
def bench() -> None:
    """Benchmarks on a fresh local cluster of their own."""


@bench.command("rebalance")
@click.option("--nodes", default=3, show_default=True, help="Nodes before one is added.")
@click.option("--partitions", default=64, show_default=True)
@click.option(
    "--per-partition",
    default=2000,
    show_default=True,
    help="Finished workflows (3 checkpoints each) loaded per partition.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Where the benchmark cluster lives (default: a new /tmp directory).",
)
@click.option("--keep", is_flag=True, help="Leave the benchmark cluster running.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Also write the result as JSON here.",
)
def bench_rebalance(
    nodes: int,
    partitions: int,
    per_partition: int,
    directory: str | None,
    keep: bool,
    json_path: str | None,
) -> None:
    """Add a node to a loaded cluster under load; report copy speed, freezes, errors."""
    from shardflow.bench.common import bench_directory
    from shardflow.bench.rebalance import run_rebalance_bench

    root = bench_directory(directory)
    result = run_async(
        run_rebalance_bench(
            nodes=nodes, partitions=partitions, per_partition=per_partition, root=root, keep=keep
        )
    )
    if not keep and directory is None:
        shutil.rmtree(root, ignore_errors=True)
    data = result.as_dict()
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key:<{width}}  {value}")
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=2) + "\n")


@bench.command("gc")
@click.option("--nodes", default=3, show_default=True)
@click.option("--partitions", default=64, show_default=True)
@click.option(
    "--per-partition",
    default=2000,
    show_default=True,
    help="Finished workflows past their retention (3 checkpoints each) loaded per partition.",
)
@click.option("--batch", default=500, show_default=True, help="Workflows per delete.")
@click.option("--repeat", default=3, show_default=True, help="Runs; the median is printed.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Append every run's result to this JSON file (a list).",
)
def bench_gc(
    nodes: int,
    partitions: int,
    per_partition: int,
    batch: int,
    repeat: int,
    json_path: str | None,
) -> None:
    """Load finished workflows past their retention, then time one collector pass on every
    node (what `shardflow gc` does): workflows and rows removed per second."""
    from shardflow.bench.common import bench_directory
    from shardflow.bench.report import append_results
    from shardflow.bench.retention import run_gc_bench

    results = []
    for _ in range(repeat):
        root = bench_directory(None)
        try:
            result = run_async(
                run_gc_bench(
                    nodes=nodes,
                    partitions=partitions,
                    per_partition=per_partition,
                    batch=batch,
                    root=root,
                )
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        results.append(result.as_dict())
        click.echo(json.dumps(results[-1]))
    rates = sorted(r["workflows_per_second"] for r in results)
    rows = sorted(r["rows_per_second"] for r in results)
    click.echo(
        f"gc: median {rates[len(rates) // 2]:,.0f} workflows/s ({rows[len(rows) // 2]:,.0f} "
        f"rows/s) over {repeat} runs; runs {', '.join(f'{r:,.0f}' for r in rates)}"
    )
    if json_path:
        append_results(Path(json_path), results)


@bench.command("run")
@click.argument("workload", type=click.Choice(["w", "fanout", "sleepy", "wq"]), default="w")
@click.option("--nodes", default=1, show_default=True, help="Database nodes in the cluster.")
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
@click.option("--concurrency", default=64, show_default=True, help="Slots per worker.")
@click.option("--partitions", default=256, show_default=True)
@click.option("--count", type=int, help="Closed loop: start this many as fast as possible.")
@click.option("--rate", type=float, help="Open loop: start this many workflows per second...")
@click.option("--duration", default=10.0, show_default=True, help="...for this many seconds.")
@click.option(
    "--backend",
    type=click.Choice(["plain", "citus"]),
    default="plain",
    show_default=True,
    help="plain: --nodes PostgreSQL nodes; citus: a coordinator and --nodes workers.",
)
@click.option(
    "--routing",
    "citus_routing",
    type=click.Choice(["direct", "coordinator"]),
    default="direct",
    show_default=True,
    help="Citus: calls straight to the worker holding each shard, or through the coordinator.",
)
@click.option(
    "--drain-timeout",
    default=600.0,
    show_default=True,
    help="After the last start, report workflows still running after this long as unfinished.",
)
@click.option(
    "--node-cpu",
    type=float,
    help="Cap each node at this many CPUs (cgroup v1, root only): the scaling benchmark.",
)
@click.option(
    "--retention",
    help="Keep finished workflows this long (at least 60s, e.g. 120s): the tables stay small "
    "as in production; the run reads each workflow's timings before it is removed.",
)
@click.option("--repeat", default=1, show_default=True, help="Runs; the median is printed.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Append every run's result to this JSON file (a list).",
)
def bench_run(
    workload: str,
    nodes: int,
    workers: int,
    concurrency: int,
    partitions: int,
    count: int | None,
    rate: float | None,
    duration: float,
    backend: str,
    citus_routing: str,
    drain_timeout: float,
    node_cpu: float | None,
    retention: str | None,
    repeat: int,
    json_path: str | None,
) -> None:
    """Run WORKLOAD (w, fanout, sleepy, wq) on a fresh local cluster and report throughput,
    latency from the database clock, CPU split, commits per workflow and worker memory."""
    from shardflow.bench.common import bench_directory
    from shardflow.bench.report import append_results, print_summary
    from shardflow.bench.throughput import BenchSettings, run_throughput_bench

    settings = BenchSettings(
        workload=workload,
        nodes=nodes,
        workers=workers,
        concurrency=concurrency,
        partitions=partitions,
        count=count if count is not None or rate is not None else 5000,
        rate=rate,
        duration=duration,
        node_cpu=node_cpu,
        drain_timeout=drain_timeout,
        backend=backend,
        citus_routing=citus_routing,
        retention=retention,
    )
    settings.check()
    results = []
    for _ in range(repeat):
        root = bench_directory(None)
        try:
            results.append(run_async(run_throughput_bench(settings, root)).as_dict())
        finally:
            shutil.rmtree(root, ignore_errors=True)
        click.echo(json.dumps(results[-1]))
    print_summary(results, echo=click.echo)
    if json_path:
        append_results(Path(json_path), results)


@bench.command("drain")
@click.argument("prefix")
@click.option("--wait", default=60.0, show_default=True, help="Seconds to wait for the backlog.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def bench_drain(state: CliState, prefix: str, wait: float, as_json: bool) -> None:
    """After a load run: wait for the workflows whose id starts with PREFIX to end, then say
    how many completed and what backlog is left (exit 1 if any is left)."""
    from shardflow.bench.drain import drain_report

    report = run_async(drain_report(state.config(), prefix, wait=wait))
    click.echo(json.dumps(report.as_dict()) if as_json else report.summary())
    if report.backlog:
        sys.exit(1)


@bench.command("start-many")
@click.option("--nodes", default=3, show_default=True)
@click.option("--count", default=100_000, show_default=True, help="Workflows to start.")
@click.option("--chunk", default=10_000, show_default=True, help="Workflows per start_many call.")
@click.option("--partitions", default=256, show_default=True)
def bench_start_many(nodes: int, count: int, chunk: int, partitions: int) -> None:
    """Bulk-start workflows with Client.start_many (no workers): durable starts per second."""
    from shardflow.bench.common import bench_directory
    from shardflow.bench.throughput import run_start_many_bench

    root = bench_directory(None)
    try:
        result = run_async(
            run_start_many_bench(
                nodes=nodes, count=count, chunk=chunk, partitions=partitions, root=root
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    click.echo(json.dumps(result.as_dict()))


@bench.command("plot")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
def bench_plot(results: tuple[str, ...], out: str) -> None:
    """Draw throughput vs nodes and latency vs offered load from `bench run --json` files."""
    from shardflow.bench.report import plot_results

    runs = [run for path in results for run in json.loads(Path(path).read_text())]
    plot_results(runs, Path(out))
    click.echo(f"wrote {out}")
