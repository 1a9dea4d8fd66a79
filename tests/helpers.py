"""Helpers for tests: run a coroutine with a timeout, wait for a condition."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from shardflow.cluster.local import LocalCluster, LocalNode
from shardflow.config import NodeConfig
from shardflow.storage.conninfo import parse_conninfo

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Run a coroutine to completion with a hard timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 20,
    what: str = "condition",
) -> None:
    """Wait for ``check()`` to become true (polling), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


REPO = Path(__file__).resolve().parent.parent


def worker_command(
    config_file: Path, app: str = "tests.apps:app"
) -> tuple[list[str], dict[str, Any]]:
    """argv and keyword arguments to start ``shardflow worker`` for ``app`` in a subprocess."""
    argv = [
        sys.executable,
        "-m",
        "shardflow",
        "--config",
        str(config_file),
        "worker",
        "--app",
        app,
    ]
    return argv, {"cwd": REPO, "env": {**os.environ, "PYTHONPATH": str(REPO)}}


async def spawn_worker(
    config_file: Path, env: dict[str, str] | None = None, *, app: str = "tests.apps:app"
) -> asyncio.subprocess.Process:
    """``shardflow worker`` for ``app`` in a process of its own (``env`` added to ours)."""
    argv, options = worker_command(config_file, app)
    if env:
        options["env"] = {**options["env"], **env}
    return await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, **options)


async def one_loop_turn() -> None:
    """Let every callback that is ready now run once (one turn of the event loop); no timing."""
    loop = asyncio.get_running_loop()
    turned = loop.create_future()
    loop.call_soon(turned.set_result, None)
    await turned


def local_node(cluster: LocalCluster, node: NodeConfig) -> LocalNode:
    """The local server behind a data node (by port: Citus workers are named host_port)."""
    port = int(parse_conninfo(node.dsn)["port"])
    return next(n for n in cluster.nodes() if n.port == port)


async def workflow_exists(client: Any, wf_id: str) -> bool:
    """Whether ``wf_id`` exists (a start that was rolled back, a removed one: no)."""
    from shardflow.errors import WorkflowNotFound

    try:
        await client.get(wf_id)
    except WorkflowNotFound:
        return False
    return True
