"""``shardflow roles``, ``migrate``, ``config``, ``audit`` and ``gc``."""

from __future__ import annotations

import json
import re

import click

from shardflow.cli.base import CliState, cli, pass_state, run_async
from shardflow.cluster.admin import migrate_all
from shardflow.cluster.membership import ClusterAdmin
from shardflow.cluster.retention import collect_garbage


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
def roles_create(state: CliState, prefix: str) -> None:
    """Create the admin, worker and client roles on every node and grant them the schema.

    Run as the schema owner (needs CREATEROLE). Then GRANT a role to each login user and
    run workers and clients as those users.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", prefix):
        raise click.ClickException("--prefix must be lower-case letters, digits and '_'")

    async def go() -> None:
        async with ClusterAdmin(state.config()) as admin:
            placement = await admin.latest_placement()
            # On Citus, DDL and roles go through the coordinator, which propagates them.
            names = (
                [admin.config.nodes[0].name]
                if admin.config.backend == "citus"
                else [n.name for n in placement.nodes]
            )
            for name in names:
                made = await admin.admin(name).create_roles(prefix=prefix)
                click.echo(f"{name}: {', '.join(made.values())}")
            await admin.audit("roles-create", "cluster", prefix=prefix)

    run_async(go())


@cli.command()
@pass_state
def migrate(state: CliState) -> None:
    """Apply missing schema migrations on every node."""
    for node, versions in run_async(migrate_all(state.config())).items():
        click.echo(f"{node}: applied {versions or 'nothing (up to date)'}")


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@pass_state
def config_show(state: CliState) -> None:
    """Print the effective configuration, secrets redacted."""
    click.echo(json.dumps(state.config().redacted(), indent=2))


@cli.command()
@click.option("--limit", default=50, show_default=True)
@pass_state
def audit(state: CliState, limit: int) -> None:
    """Show the newest administrative actions recorded on every node."""

    async def go() -> None:
        async with ClusterAdmin(state.config()) as admin:
            for row in await admin.audit_log(limit=limit):
                click.echo(
                    f"{row['at']:%Y-%m-%d %H:%M:%S}  {row['node']:<8} {row['actor']:<24} "
                    f"{row['action']:<12} {row['target']:<20} "
                    f"{json.dumps(row['arguments'])}"
                )

    run_async(go())


@cli.command()
@click.option("--dry-run", is_flag=True, help="Count what is due; remove nothing.")
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    help="Workflows per delete (default: worker.gc_batch).",
)
@pass_state
def gc(state: CliState, dry_run: bool, batch: int | None) -> None:
    """Remove finished workflows past their retention, on every node, now.

    Workers do this every worker.gc_seconds (one per node); retention is the config's
    `retention` ("7d" by default) or the workflow's @app.workflow(retention=...).
    Dead-lettered, pending and running workflows are never removed.
    """
    results = run_async(collect_garbage(state.config(), dry_run=dry_run, batch=batch))
    failed = False
    for r in results:
        if r.error:
            failed = True
            click.echo(f"{r.node}: not collected: {r.error}", err=True)
        elif dry_run:
            click.echo(f"{r.node}: {r.due} finished workflows due for removal")
        else:
            rate = f", {r.removed / r.seconds:,.0f}/s" if r.removed and r.seconds > 0 else ""
            click.echo(f"{r.node}: removed {r.removed} in {r.seconds:.2f}s{rate}")
    if failed:
        raise click.ClickException(
            "some nodes were not collected (their errors are above): run it again once they "
            "answer; 'permission denied' means this user needs the worker or admin role"
        )
