"""A deadline for the statements on one connection that gives up at once.

Cancelling a task while its connection runs a query makes psycopg (3.3) send a cancel request
on a new connection and then wait for the query to end: up to 5 s for each, so a node behind a
network blackhole held a call for operation_timeout + 10 s, and a worker's stop as long. At the
deadline this shuts the connection's socket down instead: the pending read fails at once, the
server rolls back whatever the connection had open (as it does for any lost client), and the
pool discards the connection. The caller sees TimeoutError, as from ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

# A block that does not wait on its connection at the deadline (its own code awaits something
# else) is cancelled this much later: severing cannot interrupt it.
CANCEL_GRACE_SECONDS = 0.5


def sever(conn: psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket down (both directions) without closing its descriptor,
    which psycopg still owns and may be polling."""
    with contextlib.suppress(OSError, ValueError, psycopg.Error):
        duplicate = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


@asynccontextmanager
async def deadline(
    conn: psycopg.AsyncConnection[Any], seconds: float | None
) -> AsyncIterator[None]:
    """Run the block within ``seconds`` (None: no bound); past it, raise TimeoutError."""
    if seconds is None:
        yield
        return
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        sever(conn)

    handle = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        async with asyncio.timeout(seconds + CANCEL_GRACE_SECONDS):
            yield
    except psycopg.Error as exc:
        if fired:
            raise TimeoutError(f"no answer within {seconds}s") from exc
        raise
    finally:
        handle.cancel()
