"""``shardflow dashboard``: the web dashboard (shardflow/dashboard/)."""

from __future__ import annotations

import ipaddress
import os
from typing import TextIO

import click

from shardflow.cli.base import CliState, cli, pass_state

TOKEN_ENV = "SHARDFLOW_DASHBOARD_TOKEN"


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Allow cancel and requeue (behind a confirmation, audited). Default: read-only.",
)
@click.option(
    "--token-file",
    type=click.File("r", encoding="utf-8"),
    help=f"Require this bearer token (read from the file, or ${TOKEN_ENV}); never on the "
    "command line.",
)
@click.option(
    "--sample-seconds",
    type=click.FloatRange(min=1),
    default=10.0,
    show_default=True,
    help="How often the last-hour charts sample each node (a count of workflows by status).",
)
@pass_state
def dashboard(
    state: CliState,
    host: str,
    port: int,
    allow_actions: bool,
    token_file: TextIO | None,
    sample_seconds: float,
) -> None:
    """Serve the web dashboard: cluster, workflows, failures, actions, /metrics."""
    import uvicorn

    from shardflow.dashboard import create_app

    token = (token_file.read().strip() if token_file else None) or os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < 16:
        raise click.BadParameter("use a token of at least 16 characters", param_hint="token")
    local = _loopback(host)
    if not local and token is None:
        if allow_actions:
            raise click.UsageError(
                f"--allow-actions on {host} needs a token (--token-file or ${TOKEN_ENV}): "
                "otherwise anyone who reaches the port can cancel workflows"
            )
        click.echo(
            f"warning: serving on {host} without a token: anyone who reaches it can read "
            f"every workflow; set --token-file or ${TOKEN_ENV}",
            err=True,
        )
    # On localhost only local names are answered: a page elsewhere that points its own DNS
    # name at 127.0.0.1 (rebinding) cannot read or act through the browser.
    hosts = ["localhost", "127.0.0.1", "::1", host] if local else None
    app = create_app(
        state.config(),
        allow_actions=allow_actions,
        token=token,
        allowed_hosts=hosts,
        sample_seconds=sample_seconds,
    )
    mode = "actions allowed" if allow_actions else "read-only"
    click.echo(f"dashboard on http://{host}:{port}/ ({mode})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
