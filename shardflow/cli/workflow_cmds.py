"""``shardflow worker``, the workflow commands (start, get, result, list, signal, events,
cancel, requeue, resume, retry, fork) and ``shardflow demo``."""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import click

from shardflow.cli.base import CliState, cli, pass_state, run_async
from shardflow.cli.step_view import about
from shardflow.client import Client
from shardflow.engine.app import App
from shardflow.engine.context import CHILD_SIGNAL
from shardflow.errors import WorkflowFailed
from shardflow.storage.records import STATUSES
from shardflow.timebounds import check_time_range, parse_time_bound
from shardflow.worker import Worker

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
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on this port at /metrics (0: any free port, logged).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint binds to (0.0.0.0 for a scraper on another host).",
)
@pass_state
def worker(
    state: CliState,
    app_spec: str,
    concurrency: int | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run workflows from every node until SIGTERM or SIGINT (graceful stop)."""
    app = load_app(app_spec)
    config = state.config()

    async def serve() -> None:
        w = Worker(
            app,
            config,
            concurrency=concurrency,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.request_stop)
        await w.start()
        click.echo(
            f"worker {w.owner} serving app {app.name!r} on the {config.backend} cluster", err=True
        )
        if w.metrics_port is not None:
            click.echo(f"metrics at http://{metrics_host}:{w.metrics_port}/metrics", err=True)
        await w.stopped.wait()

    run_async(serve())


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
@click.option(
    "--priority",
    type=int,
    default=0,
    show_default=True,
    help="A queued workflow's place among the waiting ones: smaller is admitted first.",
)
@click.option(
    "--concurrency-key",
    help="Counts against its queue's per-key limit (and routes it, without --routing-key).",
)
@click.option("--wait", type=float, help="Wait up to this many seconds for the result.")
@pass_state
def start(
    state: CliState,
    name: str,
    app_spec: str,
    input_json: str | None,
    input_file: TextIO | None,
    workflow_id: str | None,
    routing_key: str | None,
    priority: int,
    concurrency_key: str | None,
    wait: float | None,
) -> None:
    """Start workflow NAME (idempotent for a given --id)."""
    payload = _json_option("--input", input_json, "--input-file", input_file)
    app = load_app(app_spec)

    async def go() -> None:
        async with Client(state.config(), app=app) as client:
            handle = await client.start(
                name,
                payload,
                workflow_id=workflow_id,
                routing_key=routing_key,
                priority=priority,
                concurrency_key=concurrency_key,
            )
            started: dict[str, Any] = {"workflow_id": handle.workflow_id, "created": handle.created}
            if handle.routing_key is not None:
                started["routing_key"] = handle.routing_key  # what looks it up again
            click.echo(json.dumps(started))
            if wait is not None:
                click.echo(json.dumps(await handle.result(timeout=wait)))

    run_async(go())


def _json_option(text_flag: str, text: str | None, file_flag: str, file: TextIO | None) -> Any:
    """A JSON value given inline (``text_flag``) or in a file (``file_flag``), or None."""
    if text is not None and file is not None:
        raise click.ClickException(f"give the input once: {text_flag} JSON or {file_flag} PATH")
    source = text_flag
    if file is not None:
        source, text = file_flag, file.read()
    try:
        return None if text is None else json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{source} is not valid JSON: {exc}") from None


def _record_json(record: Any) -> str:
    data = dict(record.__dict__)
    return json.dumps(data, default=str, indent=2)


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@click.option(
    "--steps",
    is_flag=True,
    help="Also show the recorded steps (waits, signals, children and compensations explained).",
)
@pass_state
def get(state: CliState, workflow_id: str, routing_key: str | None, steps: bool) -> None:
    """Show one workflow."""

    async def go() -> None:
        async with Client(state.config()) as client:
            click.echo(_record_json(await client.get(workflow_id, routing_key=routing_key)))
            if steps:
                for step in await client.steps(workflow_id, routing_key=routing_key):
                    shown = dict(step.__dict__)
                    said = about(step)
                    if said is not None:
                        shown["about"] = said  # waits, signals, children, compensations
                    click.echo(json.dumps(shown, default=str, indent=2))

    run_async(go())


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@pass_state
def result(state: CliState, workflow_id: str, routing_key: str | None, timeout: float) -> None:
    """Wait for a workflow and print its output as JSON."""

    async def go() -> None:
        async with Client(state.config()) as client:
            try:
                output = await client.result(workflow_id, routing_key=routing_key, timeout=timeout)
            except WorkflowFailed as exc:
                raise click.ClickException(f"workflow failed: {json.dumps(exc.error)}") from None
            click.echo(json.dumps(output))

    run_async(go())


@cli.command("list")
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    help="Only this status. A sleeping or retrying workflow is pending (until its run_at).",
)
@click.option("--name", help="Only workflows of this name.")
@click.option(
    "--since",
    help="Only workflows started at or after this: 15m, 2h, 7d (ago) or an ISO 8601 time (UTC "
    "unless it has an offset).",
)
@click.option("--until", help="Only workflows started before this (same forms as --since).")
@click.option(
    "--version",
    "app_version",
    help="Only workflows started by this App(version=...): what still runs under old code.",
)
@click.option("--limit", default=20, show_default=True)
@click.option("--cursor", help="Continue after the page that printed it.")
@pass_state
def list_cmd(
    state: CliState,
    status: str | None,
    name: str | None,
    since: str | None,
    until: str | None,
    app_version: str | None,
    limit: int,
    cursor: str | None,
) -> None:
    """List workflows across all nodes, newest first: id, name, app, status, started (and
    the app version that started it, when it had one)."""

    async def go() -> None:
        created_since = parse_time_bound(since, what="--since") if since else None
        created_until = parse_time_bound(until, what="--until") if until else None
        check_time_range(created_since, created_until, labels=("--since", "--until"))
        async with Client(state.config()) as client:
            page = await client.list(
                status=status,
                name=name,
                limit=limit,
                cursor=cursor,
                created_since=created_since,
                created_until=created_until,
                version=app_version,
            )
            for r in page.items:
                line = f"{r.workflow_id}\t{r.name}\t{r.app}\t{r.status}\t{r.created_at}"
                if r.app_version is not None:
                    line += f"\tversion {r.app_version}"
                if r.waiting_for == CHILD_SIGNAL:
                    line += "\twaiting for a child workflow"
                elif r.waiting_for:
                    line += f"\twaiting for signal {r.waiting_for!r}"
                elif r.status == "pending" and r.run_at and r.run_at > datetime.now(UTC):
                    line += f"\tsleeping until {r.run_at}"  # a durable sleep or a retry backoff
                click.echo(line)
            if page.unavailable_nodes:
                click.echo(f"(nodes not reachable: {', '.join(page.unavailable_nodes)})", err=True)
            if page.next_cursor:
                # "15m" ago moves with the clock: the next page keeps this page's instants.
                bounds = "".join(
                    f" {flag} {value.isoformat()}"
                    for flag, value in (("--since", created_since), ("--until", created_until))
                    if value is not None
                )
                click.echo(f"next: --cursor {page.next_cursor}{bounds}", err=True)

    run_async(go())


@cli.command("signal")
@click.argument("workflow_id")
@click.argument("name")
@click.option("--payload", "payload_json", help="The signal's payload as JSON text.")
@click.option(
    "--payload-file",
    type=click.File("r", encoding="utf-8"),
    help="Read the JSON payload from this file ('-' for stdin).",
)
@click.option("--signal-id", help="Makes a resend with the same id a no-op.")
@click.option("--routing-key")
@pass_state
def signal_cmd(
    state: CliState,
    workflow_id: str,
    name: str,
    payload_json: str | None,
    payload_file: TextIO | None,
    signal_id: str | None,
    routing_key: str | None,
) -> None:
    """Send signal NAME to a pending or running workflow (it is kept until a wait takes it).
    Written to the audit log under your actor (SHARDFLOW_ACTOR or user@host)."""
    payload = _json_option("--payload", payload_json, "--payload-file", payload_file)

    async def go() -> None:
        async with Client(state.config()) as client:
            stored = await client.signal(
                workflow_id,
                name,
                payload,
                signal_id=signal_id,
                routing_key=routing_key,
                audited=True,
            )
            click.echo("sent" if stored else "already sent (same --signal-id): nothing changed")

    run_async(go())


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@click.option("--key", help="Only this event's value, waiting up to --timeout for it.")
@click.option("--timeout", type=float, default=0.0, show_default=True)
@pass_state
def events(
    state: CliState, workflow_id: str, routing_key: str | None, key: str | None, timeout: float
) -> None:
    """Print the events a workflow published (ctx.set_event) as JSON, by key."""

    async def go() -> None:
        async with Client(state.config()) as client:
            if key is not None:
                value = await client.get_event(
                    workflow_id, key, timeout=timeout, routing_key=routing_key
                )
                click.echo(json.dumps(value))
            else:
                found = await client.events(workflow_id, routing_key=routing_key)
                click.echo(json.dumps(found, indent=2))

    run_async(go())


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@pass_state
def cancel(state: CliState, workflow_id: str, routing_key: str | None) -> None:
    """Cancel a pending or running workflow."""

    async def go() -> None:
        async with Client(state.config()) as client:
            done = await client.cancel(workflow_id, routing_key=routing_key)
            click.echo("cancelled" if done else "already finished")

    run_async(go())


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@pass_state
def requeue(state: CliState, workflow_id: str, routing_key: str | None) -> None:
    """Re-queue a dead-lettered workflow (after fixing what killed its workers)."""

    async def go() -> None:
        async with Client(state.config()) as client:
            done = await client.requeue(workflow_id, routing_key=routing_key)
            click.echo("requeued" if done else "not dead-lettered: nothing to do")

    run_async(go())


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@pass_state
def resume(state: CliState, workflow_id: str, routing_key: str | None) -> None:
    """Run a stuck workflow again (parked after a NonDeterminismError), once code that matches
    its history is deployed; audited."""

    async def go() -> None:
        async with Client(state.config()) as client:
            done = await client.resume(workflow_id, routing_key=routing_key)
            click.echo("resumed" if done else "not stuck: nothing to do")

    run_async(go())


@cli.command()
@click.argument("workflow_id")
@click.option("--routing-key")
@pass_state
def retry(state: CliState, workflow_id: str, routing_key: str | None) -> None:
    """Run a failed workflow again from its failed step (audited): the checkpoints from its
    last failed one on are dropped, the rest replay."""

    async def go() -> None:
        async with Client(state.config()) as client:
            point = await client.retry(workflow_id, routing_key=routing_key)
            click.echo(f"retrying from step {point.step_seq} ({point.dropped} checkpoints dropped)")

    run_async(go())


@cli.command()
@click.argument("workflow_id")
@click.option(
    "--from-step",
    type=click.IntRange(min=0),
    required=True,
    help="Replay this many of its checkpoints (0: run it again from the start).",
)
@click.option("--id", "new_workflow_id", help="The fork's id (default: ID-fork-XXXXXXXX).")
@click.option("--routing-key", help="The source's routing key, if it has one.")
@pass_state
def fork(
    state: CliState,
    workflow_id: str,
    from_step: int,
    new_workflow_id: str | None,
    routing_key: str | None,
) -> None:
    """Start a new workflow that replays the first checkpoints of WORKFLOW_ID and runs on from
    there (audited); the source is not touched. Prints the fork's id."""

    async def go() -> None:
        async with Client(state.config()) as client:
            handle = await client.fork(
                workflow_id,
                from_step=from_step,
                routing_key=routing_key,
                new_workflow_id=new_workflow_id,
            )
            click.echo(handle.workflow_id)

    run_async(go())


@cli.command()
@click.option("--count", default=300, show_default=True, help="Workflows to run.")
@click.option("--workers", default=2, show_default=True, help="Worker processes to start.")
@click.option("--concurrency", default=64, show_default=True, help="Slots per worker.")
@pass_state
def demo(state: CliState, count: int, workers: int, concurrency: int) -> None:
    """Run the demo order workflow COUNT times across the cluster and print a summary."""
    from shardflow.demo_runner import run_demo

    click.echo(
        run_async(
            run_demo(
                state.config(),
                state.config_path,
                count=count,
                workers=workers,
                concurrency=concurrency,
            )
        )
    )
