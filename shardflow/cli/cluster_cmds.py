"""``shardflow cluster ...``: create, inspect, grow, rebalance, drain and stop clusters."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from shardflow.cli.base import CliState, cli, pass_state, run_async
from shardflow.cluster.admin import ClusterStatus, cluster_status, init_cluster
from shardflow.cluster.citus import CitusAdmin, shard_count
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.rebalance import MoveResult, Rebalancer
from shardflow.cluster.verify import CheckReport, check_cluster
from shardflow.config import ClusterConfig, NodeConfig
from shardflow.errors import ConfigurationError, ShardflowError
from shardflow.routing import Placement, partition_for
from shardflow.storage.citus_store import RebalanceProgress, citus_node_name

# -- cluster -------------------------------------------------------------------------------


@cli.group()
def cluster() -> None:
    """Create, inspect and stop clusters."""


@cluster.command("up")
@click.option("--nodes", default=3, show_default=True, help="Number of local nodes.")
@click.option(
    "--dir",
    "directory",
    default="/tmp/shardflow-cluster",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where node data and the config live.",
)
@click.option("--partitions", default=256, show_default=True, help="Fixed partition count.")
@click.option("--schema", default="shardflow", show_default=True)
@click.option(
    "--citus",
    is_flag=True,
    help="A Citus cluster instead: a coordinator and --workers workers (needs the extension).",
)
@click.option("--workers", default=2, show_default=True, help="Citus workers (with --citus).")
def cluster_up(
    nodes: int, directory: str, partitions: int, schema: str, citus: bool, workers: int
) -> None:
    """Start a local cluster of N PostgreSQL nodes, or a local Citus cluster (reused if it
    exists)."""
    local = LocalCluster(directory)
    wanted = "citus" if citus else "plain"
    size = workers + 1 if citus else nodes
    try:
        if local.exists():
            config = local.load_config()
            found = len(local.nodes())
            if config.backend != wanted or found != size:
                raise ConfigurationError(
                    f"{directory} holds a {found}-node {config.backend} cluster; use it as "
                    f"is, or `shardflow cluster down --destroy --dir {directory}` first"
                )
            local.start_all()
            action = "reused"
        else:
            config = local.create(
                nodes=nodes,
                partition_count=partitions,
                schema=schema,
                citus_workers=workers if citus else None,
            )
            action = "created"
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    placement = run_async(init_cluster(config))
    if citus:
        click.echo(
            f"{action} Citus cluster: a coordinator and {workers} workers, "
            f"{placement.partition_count} partitions on {shard_count(placement.partition_count)} "
            f"shards, placement v{placement.version}"
        )
    else:
        click.echo(
            f"{action} {len(config.nodes)}-node cluster, {placement.partition_count} "
            f"partitions, placement v{placement.version}"
        )
    click.echo(f"config: {local.config_path}")


@cluster.command("down")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Local cluster directory (default: the config's local_dir).",
)
@click.option("--destroy", is_flag=True, help="Also delete the nodes' data.")
@pass_state
def cluster_down(state: CliState, directory: str | None, destroy: bool) -> None:
    """Stop a local cluster's nodes."""
    directory = directory or state.config().local_dir
    if not directory:
        raise click.ClickException("this cluster is not local; pass --dir for a local one")
    local = LocalCluster(directory)
    if destroy:
        local.destroy()
        click.echo(f"destroyed {directory}")
    elif local.exists():
        local.stop_all()
        click.echo(f"stopped nodes in {directory}")


@cluster.command("init")
@click.option(
    "--node",
    "dsns",
    multiple=True,
    help="DSN of an existing node (no password in it); repeat per node.",
)
@click.option(
    "--citus",
    "coordinator",
    metavar="COORDINATOR_DSN",
    help="Install on a Citus cluster through its coordinator instead of plain nodes.",
)
@click.option("--name", "names", multiple=True, help="Node names, in --node order.")
@click.option("--partitions", default=256, show_default=True)
@click.option("--schema", default="shardflow", show_default=True)
@click.option(
    "--write-config", type=click.Path(dir_okay=False), help="Write the cluster config file here."
)
def cluster_init(
    dsns: tuple[str, ...],
    coordinator: str | None,
    names: tuple[str, ...],
    partitions: int,
    schema: str,
    write_config: str | None,
) -> None:
    """Install the schema and placement on existing PostgreSQL servers (--node, repeated),
    or on a Citus cluster (--citus COORDINATOR_DSN: tables distributed by partition).

    Passwords come from PGPASSWORD, a password file (PGPASSFILE or passfile=) or a libpq
    service file, never from the command line.
    """
    if bool(dsns) == bool(coordinator):
        raise click.ClickException("give the nodes (--node DSN, repeated) or --citus DSN")
    if names and len(names) != len(dsns):
        raise click.ClickException("give one --name per --node, or none")
    try:
        nodes: tuple[NodeConfig, ...]
        if coordinator:
            nodes = (NodeConfig(name="coordinator", dsn=coordinator),)
        else:
            nodes = tuple(
                NodeConfig(name=names[i] if names else f"node{i + 1}", dsn=dsn)
                for i, dsn in enumerate(dsns)
            )
        config = ClusterConfig(
            schema=schema,
            partition_count=partitions,
            nodes=nodes,
            backend="citus" if coordinator else "plain",
        )
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    placement = run_async(init_cluster(config))
    what = "the Citus cluster" if coordinator else f"{len(dsns)} nodes"
    click.echo(f"initialised {what}, placement v{placement.version}")
    if write_config:
        Path(write_config).write_text(config.to_toml())
        click.echo(f"config: {write_config}")


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--stalled-after",
    type=click.FloatRange(min=0, min_open=True),
    help="Report running workflows that recorded nothing for this many seconds while their "
    "lease was renewed (default: the config's stall_seconds, 300).",
)
@pass_state
def cluster_status_cmd(state: CliState, as_json: bool, stalled_after: float | None) -> None:
    """Per node: reachable, weight, partitions, workflows by status, live workers; then the
    watchdog: stalled runs and pending work that no live worker runs."""
    status = run_async(cluster_status(state.config(), stalled_after=stalled_after))
    if as_json:
        click.echo(json.dumps(status.to_json(), indent=2))
        return
    width = max([10, *(len(s.name) for s in status.nodes)])
    click.echo(
        f"{'node':<{width}} {'address':<26} {'up':<4} {'weight':>6} {'parts':>5} "
        f"{'moving':>6} {'conns':>9}  workflows"
    )
    for s in status.nodes:
        counts = " ".join(f"{k}={v}" for k, v in s.workflows.items()) or "-"
        parts = str(s.partitions_owned)
        if not s.reachable:
            counts = s.error.split(";")[0]
            # Its partitions are unavailable while it is down: show what the placement gives it.
            parts = f"{s.partitions_placed}?"
        weight = "-" if s.weight is None else str(s.weight)
        # The server's client connections open / allowed: near the limit, starts fail.
        conns = f"{s.connections.in_use}/{s.connections.allowed}" if s.connections else "-"
        click.echo(
            f"{s.name:<{width}} {s.address:<26} {'yes' if s.reachable else 'NO':<4} "
            f"{weight:>6} {parts:>5} {s.partitions_moving:>6} {conns:>9}  {counts}"
        )
    click.echo(
        f"placement v{status.placement_version}; "
        + (
            f"REBALANCE IN PROGRESS{_progress(status)} "
            "(interrupted? run `shardflow cluster rebalance`)"
            if status.rebalance_in_progress
            else "no move in progress"
        )
        + (
            f"; {status.partitions_to_move} shard moves due for balance"
            if status.backend == "citus"
            else f"; {status.partitions_to_move} partitions to move for balance"
        )
    )
    workers: dict[str, int] = {}
    for s in status.nodes:
        for app_name, n in s.workers.items():
            workers[app_name] = max(workers.get(app_name, 0), n)
    click.echo(
        "live workers: "
        + (", ".join(f"{n} of app {a!r}" for a, n in sorted(workers.items())) or "none")
    )
    if status.stalled_total:
        click.echo(
            f"STALLED: {status.stalled_total} running workflows recorded nothing for more than "
            f"{status.stalled_after_seconds:g}s while their lease was renewed:"
        )
        for w in status.stalled:
            click.echo(
                f"  {w.workflow_id} ({w.name}, app {w.app!r}) on {w.node}, held by "
                f"{w.lease_owner}, quiet for {w.quiet_seconds:.0f}s"
            )
    if status.unserved:
        click.echo("WAITING FOR A WORKER: pending workflows that no live worker runs:")
        for u in status.unserved:
            click.echo(
                f"  {u.workflows} x {u.name} (app {u.app!r}) on {u.node}, oldest started "
                f"{u.oldest:%Y-%m-%d %H:%M:%S}: start a worker whose app defines it"
            )


@cluster.command("owner")
@click.argument("key")
@click.option("--dsn", "show_dsn", is_flag=True, help="Print only the node's connection string.")
@pass_state
def cluster_owner(state: CliState, key: str, show_dsn: bool) -> None:
    """Which node owns KEY (a workflow id or routing key) now, and its partition: where to call
    the SQL API (`psql "$(shardflow cluster owner KEY --dsn)"`). The connection string never
    holds a password (libpq takes it from PGPASSWORD or a password file)."""
    from shardflow.connectors import dsn_for
    from shardflow.engine.codec import check_identifier

    config = state.config()
    try:
        check_identifier(key, what="KEY", max_length=config.limits.max_id_length)
    except ShardflowError as exc:
        raise click.BadParameter(str(exc)) from None

    async def go() -> tuple[str, int, str]:
        async with ClusterAdmin(config) as admin:
            placement = await admin.latest_placement()
        partition = partition_for(key, placement.partition_count)
        node = placement.node(placement.owner(partition))
        return node.name, partition, dsn_for(config, node)

    name, partition, dsn = run_async(go())
    click.echo(dsn if show_dsn else f"{name} partition {partition}")


@cluster.command("check")
@pass_state
def cluster_check(state: CliState) -> None:
    """Verify ownership, placement and data placement on every node; exit 1 on a problem."""

    async def go() -> CheckReport:
        async with ClusterAdmin(state.config()) as admin:
            return await check_cluster(admin)

    report = run_async(go())
    for problem in report.problems:
        click.echo(f"PROBLEM: {problem}")
    click.echo(
        f"placement v{report.placement_version}, {report.workflows} workflows: "
        + ("ok" if report.ok else f"{len(report.problems)} problems")
    )
    if not report.ok:
        sys.exit(1)


def _save_config(state: CliState, config: ClusterConfig) -> None:
    """Write membership changes back to the config file the command was given."""
    if state.config_path:
        Path(state.config_path).write_text(config.to_toml())
        click.echo(f"updated {state.config_path}")
    else:
        click.echo("note: no --config file to update; add the node to SHARDFLOW_NODES", err=True)


@cluster.command("add-node")
@click.argument("dsn", required=False)
@click.option("--local", is_flag=True, help="Start one more node in the local cluster.")
@click.option("--name", help="Name of the new node (default nodeN).")
@click.option("--weight", default=1, show_default=True, help="Share of partitions to hold.")
@pass_state
def cluster_add_node(
    state: CliState, dsn: str | None, local: bool, name: str | None, weight: int
) -> None:
    """Join an empty PostgreSQL database to the cluster, then run `cluster rebalance`.

    On Citus: a server with the citus extension in the same database joins as a worker.
    """
    config = state.config()
    if config.backend == "citus":
        _citus_add_node(config, dsn, local)
        return
    try:
        if local:
            if not config.local_dir:
                raise ConfigurationError("--local needs a cluster made by `shardflow cluster up`")
            node = LocalCluster(config.local_dir).add_node()
            node = NodeConfig(name=node.name, dsn=node.dsn, weight=weight)
        elif dsn:
            node = NodeConfig(name=name or f"node{len(config.nodes) + 1}", dsn=dsn, weight=weight)
        else:
            raise ConfigurationError("give the new node's DSN, or --local")
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None

    async def go() -> int:
        async with ClusterAdmin(config) as admin:
            return (await admin.add_node(node)).version

    version = run_async(go())
    if not local:
        _save_config(state, config.replace(nodes=(*config.nodes, node)))
    click.echo(
        f"added {node.name} (placement v{version}); move partitions onto it with "
        "`shardflow cluster rebalance`"
    )


@cluster.command("rebalance")
@click.option("--dry-run", is_flag=True, help="Print the plan, move nothing.")
@click.option("--limit", type=int, help="Move at most this many partitions now.")
@click.option(
    "--force", is_flag=True, help="Take the rebalance lease from a holder you know is dead."
)
@pass_state
def cluster_rebalance(state: CliState, dry_run: bool, limit: int | None, force: bool) -> None:
    """Move partitions until every node holds its share; resumes interrupted moves."""
    config = state.config()
    if config.backend == "citus":
        _citus_rebalance(config, dry_run)
        return

    async def go() -> None:
        async with ClusterAdmin(config, force=force) as admin:
            planned = await Rebalancer(admin).plan()
            if dry_run:
                for move in planned:
                    click.echo(f"partition {move.partition:>5}: {move.source} -> {move.target}")
                click.echo(f"{len(planned)} partitions to move")
                return
            total = len(planned) if limit is None else min(limit, len(planned))
            with click.progressbar(length=total, label="moving partitions", show_pos=True) as bar:
                copied = [0]

                def moved(result: MoveResult) -> None:
                    copied[0] += result.rows
                    bar.label = f"moving partitions ({copied[0]} rows copied)"
                    if not result.resumed:
                        bar.update(1)

                report = await Rebalancer(admin, on_move=moved).run(limit=limit)
            freezes = sorted(m.freeze_seconds for m in report.moves)
            p50 = freezes[len(freezes) // 2] if freezes else 0.0
            click.echo(
                f"moved {len(report.moves)} partitions, {report.rows} rows in "
                f"{report.seconds:.2f}s; freeze p50 {p50 * 1000:.0f} ms, max "
                f"{(freezes[-1] if freezes else 0) * 1000:.0f} ms; placement "
                f"v{report.placement_version}"
            )

    run_async(go())


@cluster.command("drain")
@click.argument("node")
@pass_state
def cluster_drain(state: CliState, node: str) -> None:
    """Move every partition off NODE (weight 0), ready for `cluster remove-node`."""
    config = state.config()

    async def go() -> None:
        async with ClusterAdmin(config) as admin:
            if config.backend == "citus":
                await CitusAdmin(admin).drain(node)
                click.echo(f"drained {node}: Citus moved its shards away")
                return
            await admin.set_weight(node, 0)
            report = await Rebalancer(admin).run()
            click.echo(
                f"drained {node}: moved {len(report.moves)} partitions, "
                f"{report.rows} rows in {report.seconds:.2f}s"
            )

    run_async(go())


@cluster.command("remove-node")
@click.argument("node")
@pass_state
def cluster_remove_node(state: CliState, node: str) -> None:
    """Remove a drained NODE; refused while it owns a partition or holds any row."""
    config = state.config()

    async def go() -> int:
        async with ClusterAdmin(config) as admin:
            if config.backend == "citus":
                return (await CitusAdmin(admin).remove(node)).version
            return (await admin.remove_node(node)).version

    version = run_async(go())
    remaining = tuple(n for n in config.nodes if n.name != node)
    if config.backend == "citus":
        if config.local_dir:
            _forget_local_citus_node(config.local_dir, node)
    elif config.local_dir:
        LocalCluster(config.local_dir).forget_node(node)
    else:
        _save_config(state, config.replace(nodes=remaining))
    click.echo(f"removed {node} (placement v{version})")


# -- Citus: the same commands, through Citus's own functions --------------------------------


def _citus_add_node(config: ClusterConfig, dsn: str | None, local: bool) -> None:
    try:
        if local:
            if not config.local_dir:
                raise ConfigurationError("--local needs a cluster made by `shardflow cluster up`")
            dsn = LocalCluster(config.local_dir).add_node().dsn
        elif not dsn:
            raise ConfigurationError("give the new worker's DSN, or --local")
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None

    async def go() -> Placement:
        async with ClusterAdmin(config) as admin:
            return await CitusAdmin(admin).add_node(dsn)

    placement = run_async(go())
    click.echo(
        f"added a Citus worker ({len(placement.nodes)} nodes); move shards onto it with "
        "`shardflow cluster rebalance`"
    )


def _citus_rebalance(config: ClusterConfig, dry_run: bool) -> None:
    async def go() -> None:
        async with ClusterAdmin(config) as admin:
            citus = CitusAdmin(admin)
            planned = await citus.plan()
            if dry_run:
                for line in planned:
                    click.echo(line)
                click.echo(f"{len(planned)} shards to move")
                return
            with click.progressbar(
                length=len(planned), label="moving shards", show_pos=True
            ) as bar:
                shown = [0]

                def progress(state: RebalanceProgress) -> None:
                    if state.total:
                        bar.length = state.total
                    bar.update(state.done - shown[0])
                    shown[0] = state.done

                began = time.monotonic()
                done = await citus.rebalance(progress=progress)
            if done is None:
                click.echo("balanced already: nothing to move")
                return
            placement = await admin.latest_placement()
            click.echo(
                f"Citus moved {done.total} shard groups in {time.monotonic() - began:.1f}s; "
                f"placement v{placement.version}: "
                + ", ".join(f"{n}={c}" for n, c in sorted(placement.counts().items()))
            )

    run_async(go())


def _forget_local_citus_node(directory: str, node: str) -> None:
    """Stop the local server of a Citus worker that left (named host_port in the placement)."""
    local = LocalCluster(directory)
    for candidate in local.nodes():
        if citus_node_name("127.0.0.1", candidate.port) == node:
            local.forget_node(candidate.name)


def _progress(status: ClusterStatus) -> str:
    progress = status.rebalance_progress()
    if progress is None:
        return ""
    what = "shard moves" if status.backend == "citus" else "partition moves (last hour)"
    return f", {progress[0]} of {progress[1]} {what} done"
