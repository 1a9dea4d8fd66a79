"""The ``shardflow`` command line: cluster management, workers, workflows, benchmarks, demo.

Each command family lives in its own module; importing them registers their commands.
"""

from __future__ import annotations

from shardflow.cli import (
    admin_cmds,
    bench_cmds,
    cluster_cmds,
    dashboard_cmds,
    schedule_cmds,
    top_cmds,
    workflow_cmds,
)
from shardflow.cli.base import cli, main
from shardflow.cli.workflow_cmds import load_app

__all__ = [
    "admin_cmds",
    "bench_cmds",
    "cli",
    "cluster_cmds",
    "dashboard_cmds",
    "load_app",
    "main",
    "schedule_cmds",
    "top_cmds",
    "workflow_cmds",
]
