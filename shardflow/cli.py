"""The ``shardflow`` command line: cluster management, workers, workflows, demo."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import shutil
import signal
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO, TypeVar

import click

from shardflow import cli_logging
from shardflow.client import Client
from shardflow.cluster.admin import cluster_status, init_cluster, migrate_all
from shardflow.cluster.local import LocalCluster
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.rebalance import MoveResult, Rebalancer
from shardflow.cluster.verify import CheckReport, check_cluster
from shardflow.config import ClusterConfig, NodeConfig, load_config
from shardflow.engine.app import App
from shardflow.errors import ConfigurationError, ShardflowError, WorkflowFailed
from shardflow.storage.records import STATUSES
from shardflow.worker import Worker

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ShardflowError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


class _State:
    def __init__(self, config_path: str | None):
        self.config_path = config_path

    def config(self) -> ClusterConfig:
        try:
            config = load_config(self.config_path)
            config.require_nodes()
            return config
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None


pass_state = click.make_pass_decorator(_State)


@click.group()
@click.option(
    "--config",
    "config_path",
    envvar="SHARDFLOW_CONFIG",
    type=click.Path(),
    help="Cluster config file (default: $SHARDFLOW_CONFIG).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """shardflow: durable Python workflows on a cluster of PostgreSQL nodes."""
    cli_logging.configure(verbose)
    ctx.obj = _State(config_path)


def main() -> None:
    cli(prog_name="shardflow")


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
def cluster_up(nodes: int, directory: str, partitions: int, schema: str) -> None:
    """Start a local cluster of N PostgreSQL nodes (reused if it exists)."""
    local = LocalCluster(directory)
    try:
        if local.exists():
            config = local.load_config()
            if len(config.nodes) != nodes:
                raise ConfigurationError(
                    f"{directory} holds a {len(config.nodes)}-node cluster; use it as is, or "
                    f"`shardflow cluster down --destroy --dir {directory}` first"
                )
            local.start_all()
            action = "reused"
        else:
            config = local.create(nodes=nodes, partition_count=partitions, schema=schema)
            action = "created"
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    placement = _run(init_cluster(config))
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
def cluster_down(state: _State, directory: str | None, destroy: bool) -> None:
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
    required=True,
    help="DSN of an existing node (no password in it); repeat per node.",
)
@click.option("--name", "names", multiple=True, help="Node names, in --node order.")
@click.option("--partitions", default=256, show_default=True)
@click.option("--schema", default="shardflow", show_default=True)
@click.option(
    "--write-config", type=click.Path(dir_okay=False), help="Write the cluster config file here."
)
def cluster_init(
    dsns: tuple[str, ...],
    names: tuple[str, ...],
    partitions: int,
    schema: str,
    write_config: str | None,
) -> None:
    """Install the schema and placement on existing PostgreSQL servers.

    Passwords come from PGPASSWORD, a password file (PGPASSFILE or passfile=) or a libpq
    service file, never from the command line.
    """
    if names and len(names) != len(dsns):
        raise click.ClickException("give one --name per --node, or none")
    try:
        config = ClusterConfig(
            schema=schema,
            partition_count=partitions,
            nodes=tuple(
                NodeConfig(name=names[i] if names else f"node{i + 1}", dsn=dsn)
                for i, dsn in enumerate(dsns)
            ),
        )
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    placement = _run(init_cluster(config))
    click.echo(f"initialised {len(dsns)} nodes, placement v{placement.version}")
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
def cluster_status_cmd(state: _State, as_json: bool, stalled_after: float | None) -> None:
    """Per node: reachable, weight, partitions, workflows by status, live workers; then the
    watchdog: stalled runs and pending work that no live worker runs."""
    status = _run(cluster_status(state.config(), stalled_after=stalled_after))
    if as_json:
        click.echo(json.dumps(status.to_json(), indent=2))
        return
    click.echo(
        f"{'node':<10} {'address':<26} {'up':<4} {'weight':>6} {'parts':>5} "
        f"{'moving':>6}  workflows"
    )
    for s in status.nodes:
        counts = " ".join(f"{k}={v}" for k, v in s.workflows.items()) or "-"
        parts = str(s.partitions_owned)
        if not s.reachable:
            counts = s.error.split(";")[0]
            # Its partitions are unavailable while it is down: show what the placement gives it.
            parts = f"{s.partitions_placed}?"
        weight = "-" if s.weight is None else str(s.weight)
        click.echo(
            f"{s.name:<10} {s.address:<26} {'yes' if s.reachable else 'NO':<4} "
            f"{weight:>6} {parts:>5} {s.partitions_moving:>6}  {counts}"
        )
    click.echo(
        f"placement v{status.placement_version}; "
        + (
            "REBALANCE IN PROGRESS (interrupted? run `shardflow cluster rebalance`)"
            if status.rebalance_in_progress
            else "no move in progress"
        )
        + f"; {status.partitions_to_move} partitions to move for balance"
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


@cluster.command("check")
@pass_state
def cluster_check(state: _State) -> None:
    """Verify ownership, placement and data placement on every node; exit 1 on a problem."""

    async def go() -> CheckReport:
        async with ClusterAdmin(state.config()) as admin:
            return await check_cluster(admin)

    report = _run(go())
    for problem in report.problems:
        click.echo(f"PROBLEM: {problem}")
    click.echo(
        f"placement v{report.placement_version}, {report.workflows} workflows: "
        + ("ok" if report.ok else f"{len(report.problems)} problems")
    )
    if not report.ok:
        sys.exit(1)


def _save_config(state: _State, config: ClusterConfig) -> None:
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
    state: _State, dsn: str | None, local: bool, name: str | None, weight: int
) -> None:
    """Join an empty PostgreSQL database to the cluster, then run `cluster rebalance`."""
    config = state.config()
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

    version = _run(go())
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
def cluster_rebalance(state: _State, dry_run: bool, limit: int | None, force: bool) -> None:
    """Move partitions until every node holds its share; resumes interrupted moves."""
    config = state.config()

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

    _run(go())


@cluster.command("drain")
@click.argument("node")
@pass_state
def cluster_drain(state: _State, node: str) -> None:
    """Move every partition off NODE (weight 0), ready for `cluster remove-node`."""
    config = state.config()

    async def go() -> None:
        async with ClusterAdmin(config) as admin:
            await admin.set_weight(node, 0)
            report = await Rebalancer(admin).run()
            click.echo(
                f"drained {node}: moved {len(report.moves)} partitions, "
                f"{report.rows} rows in {report.seconds:.2f}s"
            )

    _run(go())


@cluster.command("remove-node")
@click.argument("node")
@pass_state
def cluster_remove_node(state: _State, node: str) -> None:
    """Remove a drained NODE; refused while it owns a partition or holds any row."""
    config = state.config()

    async def go() -> int:
        async with ClusterAdmin(config) as admin:
            return (await admin.remove_node(node)).version

    version = _run(go())
    remaining = tuple(n for n in config.nodes if n.name != node)
    if config.local_dir:
        LocalCluster(config.local_dir).forget_node(node)
    else:
        _save_config(state, config.replace(nodes=remaining))
    click.echo(f"removed {node} (placement v{version})")


@cli.group()
def roles() -> None:
    """Least-privilege database roles."""


@roles.command("create")
@click.option(
    "--prefix",
    default="shardflow",
    show_default=True,
    help="Roles are PREFIX_admin, PREFIX_worker and PREFIX_client.",
)
@pass_state
def roles_create(state: _State, prefix: str) -> None:
    """Create the admin, worker and client roles on every node and grant them the schema.

    Run as the schema owner (needs CREATEROLE). Then GRANT a role to each login user and
    run workers and clients as those users.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", prefix):
        raise click.ClickException("--prefix must be lower-case letters, digits and '_'")

    async def go() -> None:
        async with ClusterAdmin(state.config()) as admin:
            placement = await admin.latest_placement()
            for node in placement.nodes:
                made = await admin.admin(node.name).create_roles(prefix=prefix)
                click.echo(f"{node.name}: {', '.join(made.values())}")
            await admin.audit("roles-create", "cluster", prefix=prefix)

    _run(go())


@cli.command()
@pass_state
def migrate(state: _State) -> None:
    """Apply missing schema migrations on every node."""
    for node, versions in _run(migrate_all(state.config())).items():
        click.echo(f"{node}: applied {versions or 'nothing (up to date)'}")


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@pass_state
def config_show(state: _State) -> None:
    """Print the effective configuration, secrets redacted."""
    click.echo(json.dumps(state.config().redacted(), indent=2))


# -- worker and workflows ------------------------------------------------------------------


def load_app(spec: str) -> App:
    """Import the App named by ``module:attribute`` or ``path/to/file.py:attribute``.

    A module is looked up from the current directory too; a file path works from anywhere
    (its directory goes on the import path, so its own imports resolve).
    """
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise click.ClickException(
            f"--app must look like module:attribute or path/to/file.py:attribute, got {spec!r}"
        )
    try:
        if target.endswith(".py"):
            module = _import_file(Path(target))
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(target)
        app = getattr(module, attr)
    except (ImportError, AttributeError, FileNotFoundError) as exc:
        raise click.ClickException(
            f"cannot load app {spec!r}: {exc} (run from the directory that holds the module, "
            "or give the file's path: --app path/to/file.py:app)"
        ) from None
    if not isinstance(app, App):
        raise click.ClickException(f"{spec} is a {type(app).__name__}, not a shardflow App")
    return app


def _import_file(path: Path) -> ModuleType:
    path = path.resolve(strict=True)
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    # Imported under its own name, as `python file.py` would see its siblings: a worker and
    # the module's other importers then share one module object (and one App).
    if path.stem in sys.modules:
        return sys.modules[path.stem]
    return importlib.import_module(path.stem)


@cli.command()
@click.option("--app", "app_spec", required=True, help="The App to run, as module:attribute.")
@click.option("--concurrency", type=int, help="Workflows run at once (default from config).")
@pass_state
def worker(state: _State, app_spec: str, concurrency: int | None) -> None:
    """Run workflows from every node until SIGTERM or SIGINT (graceful stop)."""
    app = load_app(app_spec)
    config = state.config()

    async def serve() -> None:
        w = Worker(app, config, concurrency=concurrency)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.request_stop)
        await w.start()
        click.echo(f"worker {w.owner} serving {len(config.nodes)} nodes", err=True)
        await w.stopped.wait()

    _run(serve())


@cli.command()
@click.argument("name")
@click.option("--app", "app_spec", required=True, help="The App that defines NAME.")
@click.option("--input", "input_json", help="Workflow input as JSON text.")
@click.option(
    "--input-file",
    type=click.File("r", encoding="utf-8"),
    help="Read the JSON input from this file ('-' for stdin): no command-line size limit.",
)
@click.option("--id", "workflow_id", help="Workflow id (default: a new UUID).")
@click.option("--routing-key", help="Co-locate with other workflows of this key.")
@click.option("--wait", type=float, help="Wait up to this many seconds for the result.")
@pass_state
def start(
    state: _State,
    name: str,
    app_spec: str,
    input_json: str | None,
    input_file: TextIO | None,
    workflow_id: str | None,
    routing_key: str | None,
    wait: float | None,
) -> None:
    """Start workflow NAME (idempotent for a given --id)."""
    if input_json is not None and input_file is not None:
        raise click.ClickException("give the input once: --input JSON or --input-file PATH")
    source, text = "--input", input_json
    if input_file is not None:
        source, text = "--input-file", input_file.read()
    try:
        payload = None if text is None else json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{source} is not valid JSON: {exc}") from None
    app = load_app(app_spec)

    async def go() -> None:
        async with Client(state.config(), app=app) as client:
            handle = await client.start(
                name, payload, workflow_id=workflow_id, routing_key=routing_key
            )
            click.echo(json.dumps({"workflow_id": handle.workflow_id, "created": handle.created}))
            if wait is not None:
                click.echo(json.dumps(await handle.result(timeout=wait)))

    _run(go())


def _record_json(record: Any) -> str:
    data = dict(record.__dict__)
    return json.dumps(data, default=str, indent=2)


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@click.option("--steps", is_flag=True, help="Also show the recorded steps.")
@pass_state
def get(state: _State, workflow_id: str, routing_key: str | None, steps: bool) -> None:
    """Show one workflow."""

    async def go() -> None:
        async with Client(state.config()) as client:
            click.echo(_record_json(await client.get(workflow_id, routing_key=routing_key)))
            if steps:
                for step in await client.steps(workflow_id, routing_key=routing_key):
                    click.echo(_record_json(step))

    _run(go())


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@pass_state
def result(state: _State, workflow_id: str, routing_key: str | None, timeout: float) -> None:
    """Wait for a workflow and print its output as JSON."""

    async def go() -> None:
        async with Client(state.config()) as client:
            try:
                output = await client.result(workflow_id, routing_key=routing_key, timeout=timeout)
            except WorkflowFailed as exc:
                raise click.ClickException(f"workflow failed: {json.dumps(exc.error)}") from None
            click.echo(json.dumps(output))

    _run(go())


@cli.command("list")
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    help="Only this status. A sleeping or retrying workflow is pending (until its run_at).",
)
@click.option("--name", help="Only workflows of this name.")
@click.option("--limit", default=20, show_default=True)
@click.option("--cursor", help="Continue after the page that printed it.")
@pass_state
def list_cmd(
    state: _State, status: str | None, name: str | None, limit: int, cursor: str | None
) -> None:
    """List workflows across all nodes, newest first: id, name, app, status, started."""

    async def go() -> None:
        async with Client(state.config()) as client:
            page = await client.list(status=status, name=name, limit=limit, cursor=cursor)
            for r in page.items:
                line = f"{r.workflow_id}\t{r.name}\t{r.app}\t{r.status}\t{r.created_at}"
                if r.status == "pending" and r.run_at and r.run_at > datetime.now(UTC):
                    line += f"\tsleeping until {r.run_at}"  # a durable sleep or a retry backoff
                click.echo(line)
            if page.unavailable_nodes:
                click.echo(f"(nodes not reachable: {', '.join(page.unavailable_nodes)})", err=True)
            if page.next_cursor:
                click.echo(f"next: --cursor {page.next_cursor}", err=True)

    _run(go())


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@pass_state
def cancel(state: _State, workflow_id: str, routing_key: str | None) -> None:
    """Cancel a pending or running workflow."""

    async def go() -> None:
        async with Client(state.config()) as client:
            done = await client.cancel(workflow_id, routing_key=routing_key)
            click.echo("cancelled" if done else "already finished")

    _run(go())


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@pass_state
def requeue(state: _State, workflow_id: str, routing_key: str | None) -> None:
    """Re-queue a dead-lettered workflow (after fixing what killed its workers)."""

    async def go() -> None:
        async with Client(state.config()) as client:
            done = await client.requeue(workflow_id, routing_key=routing_key)
            click.echo("requeued" if done else "not dead-lettered: nothing to do")

    _run(go())


@cli.command()
@click.option("--limit", default=50, show_default=True)
@pass_state
def audit(state: _State, limit: int) -> None:
    """Show the newest administrative actions recorded on every node."""

    async def go() -> None:
        async with ClusterAdmin(state.config()) as admin:
            for row in await admin.audit_log(limit=limit):
                click.echo(
                    f"{row['at']:%Y-%m-%d %H:%M:%S}  {row['node']:<8} {row['actor']:<24} "
                    f"{row['action']:<12} {row['target']:<20} "
                    f"{json.dumps(row['arguments'])}"
                )

    _run(go())


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
    result = _run(
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


@bench.command("run")
@click.argument("workload", type=click.Choice(["w", "fanout", "sleepy"]), default="w")
@click.option("--nodes", default=1, show_default=True, help="Database nodes in the cluster.")
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
@click.option("--concurrency", default=64, show_default=True, help="Slots per worker.")
@click.option("--partitions", default=256, show_default=True)
@click.option("--count", type=int, help="Closed loop: start this many as fast as possible.")
@click.option("--rate", type=float, help="Open loop: start this many workflows per second...")
@click.option("--duration", default=10.0, show_default=True, help="...for this many seconds.")
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
    drain_timeout: float,
    node_cpu: float | None,
    repeat: int,
    json_path: str | None,
) -> None:
    """Run WORKLOAD (w, fanout, sleepy) on a fresh local cluster and report throughput,
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
    )
    settings.check()
    results = []
    for _ in range(repeat):
        root = bench_directory(None)
        try:
            results.append(_run(run_throughput_bench(settings, root)).as_dict())
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
def bench_drain(state: _State, prefix: str, wait: float, as_json: bool) -> None:
    """After a load run: wait for the workflows whose id starts with PREFIX to end, then say
    how many completed and what backlog is left (exit 1 if any is left)."""
    from shardflow.bench.drain import drain_report

    report = _run(drain_report(state.config(), prefix, wait=wait))
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
        result = _run(
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


@cli.command()
@click.option("--count", default=300, show_default=True, help="Workflows to run.")
@click.option("--workers", default=2, show_default=True, help="Worker processes to start.")
@click.option("--concurrency", default=64, show_default=True, help="Slots per worker.")
@pass_state
def demo(state: _State, count: int, workers: int, concurrency: int) -> None:
    """Run the demo order workflow COUNT times across the cluster and print a summary."""
    from shardflow.demo_runner import run_demo

    click.echo(
        _run(
            run_demo(
                state.config(),
                state.config_path,
                count=count,
                workers=workers,
                concurrency=concurrency,
            )
        )
    )
