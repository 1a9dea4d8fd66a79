"""The ``shardflow`` command group and what every command shares: the configuration, running a
coroutine, and turning shardflow's errors into clean command-line errors."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from shardflow import cli_logging
from shardflow.config import ClusterConfig, load_config
from shardflow.errors import ConfigurationError, ShardflowError

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ShardflowError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


class CliState:
    def __init__(self, config_path: str | None):
        self.config_path = config_path

    def config(self) -> ClusterConfig:
        try:
            config = load_config(self.config_path)
            config.require_nodes()
            return config
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None


pass_state = click.make_pass_decorator(CliState)


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
    ctx.obj = CliState(config_path)


def main() -> None:
    cli(prog_name="shardflow")
