"""One node's connections, and the one place psycopg errors become shardflow errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shardflow.errors import ClusterNotInitialized, NodeUnavailable, ShardflowError
from shardflow.stalls import paused_since
from shardflow.storage.conninfo import display_address
from shardflow.storage.pool_log import OUTAGES
from shardflow.storage.queries import QueryBook

log = logging.getLogger("shardflow.storage")

# A pooled connection idle for longer than this is pinged before use.
IDLE_CHECK_SECONDS = 1.0

Row = dict[str, Any]
Params = Mapping[str, Any]


class StorageError(ShardflowError):
    """An unexpected database error. It is a bug in shardflow or a broken node: report it."""


def jsonb(value: Any) -> Jsonb | None:
    """Wrap an already validated JSON value for a jsonb parameter (None stays SQL NULL)."""
    return None if value is None else Jsonb(value)


class NodeConnector:
    """A pool of autocommit connections to one node, and helpers that run named queries.

    ``connection()`` is the only way above this module to hold a connection; errors leaving
    it are NodeUnavailable (cannot reach or lost the node), ClusterNotInitialized (no schema)
    or StorageError.
    """

    def __init__(
        self,
        *,
        name: str,
        dsn: str,
        schema: str,
        connect_timeout: float = 5.0,
        pool_max_size: int = 10,
        application_name: str = "shardflow",
        operation_timeout: float | None = None,
        dialect: str = "plain",
    ):
        self.name = name
        self.schema = schema
        # "plain" or "citus": which variant of the named queries this node runs.
        self.dialect = dialect
        self.queries = QueryBook(schema, dialect)
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        # Bounds one call (connection + statements): a node that stops answering (a network
        # blackhole) fails fast with NodeUnavailable instead of hanging its callers.
        self._operation_timeout = operation_timeout
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, int(connect_timeout)),
            "application_name": application_name,
        }
        self._pool_max_size = max(1, pool_max_size)
        self._pool = self._new_pool()
        self._opened = False
        self._revive_lock = asyncio.Lock()
        # When the node last took a direct connection while the pool timed out (monotonic).
        self._answered_at = float("-inf")
        # True while the node refused the last connection attempt.
        self._down = False
        # False until a connection to the node succeeded: the first call then connects
        # directly, so a node that is down fails in milliseconds, not after the pool's
        # connect_timeout (a CLI call needing only healthy nodes used to wait it out).
        self._reached = False
        # id(connection) -> when it went back to the pool (monotonic): see _check_if_idle.
        self._returned_at: dict[int, float] = {}

    def _new_pool(self) -> psycopg_pool.AsyncConnectionPool:
        return psycopg_pool.AsyncConnectionPool(
            self._dsn,
            kwargs=self._kwargs,
            min_size=1,
            max_size=self._pool_max_size,
            open=False,
            timeout=self._connect_timeout,
            check=self._check_if_idle,
            name=f"shardflow-{self.name}",
        )

    async def _check_if_idle(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Ping a pooled connection before handing it out, unless it was used just now.

        A node restart breaks every pooled connection, so an idle one is checked (one round
        trip); under load, connections come back within milliseconds and the ping would
        double the round trips of short statements. A busy connection that broke fails its
        call once (NodeUnavailable) and the pool drops it.
        """
        returned = self._returned_at.get(id(conn))
        if returned is not None and time.monotonic() - returned < IDLE_CHECK_SECONDS:
            return
        await psycopg_pool.AsyncConnectionPool.check_connection(conn)

    async def _revive(self, failed: psycopg_pool.AsyncConnectionPool) -> None:
        """After a pool timeout: if the node answers a direct connection now, start a fresh pool.

        A pool whose node was down backs off its reconnect attempts for longer and longer;
        without this, a node that is back could stay unused for many seconds. When the node
        does not answer, the probe's error (refused, wrong certificate, bad password...) is
        raised: it says more than the pool's timeout; and until a probe succeeds, callers
        probe directly instead of each waiting out connect_timeout on the pool.
        """
        async with self._revive_lock:
            if self._pool is not failed and not self._down:
                return  # another caller already revived it
            await self._probe()
            self._pool = self._new_pool()
            await self._pool.open(wait=False)
            asyncio.get_running_loop().create_task(failed.close())
            log.info(
                "node %s is back: connection pool renewed",
                self.name,
                extra={"action": "pool_renewed", "node": self.name},
            )

    async def _answers(self) -> bool:
        """Whether the node answers a direct connection now: one probe at a time, and none
        within a connect timeout of the last answer (callers waiting on a busy pool do not
        each open a connection). A server that refuses it (too many clients, starting up)
        answers: it is busy, not gone, and its pool must not be replaced."""
        async with self._revive_lock:
            if time.monotonic() - self._answered_at < self._connect_timeout:
                return True
            try:
                await self._probe()
            except psycopg.OperationalError as exc:
                if exc.sqlstate is None:
                    return False  # no server there: refused, timed out, unreachable
                self._down = False
            self._answered_at = time.monotonic()
            return True

    async def _probe(self) -> None:
        """Connect once, directly: raises the node's real error (refused, certificate,
        password...) at once when it is down."""
        try:
            probe = await psycopg.AsyncConnection.connect(self._dsn, **self._kwargs)
        except psycopg.OperationalError:
            self._down = True
            raise
        self._down = False
        self._reached = True
        await probe.close()

    @property
    def address(self) -> str:
        return display_address(self._dsn)

    def pool_stats(self) -> dict[str, int]:
        """Connections of the pool now: busy, idle, and requests waiting for one."""
        stats = self._pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return {"busy": size - idle, "idle": idle, "waiting": stats.get("requests_waiting", 0)}

    async def open(self) -> None:
        """Start the pool without waiting: a node that is down only fails its own calls."""
        if not self._opened:
            await self._pool.open(wait=False)
            self._opened = True

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
            self._opened = False

    async def __aenter__(self) -> NodeConnector:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled autocommit connection; use ``conn.transaction()`` for several statements."""
        await self.open()
        started = time.monotonic()
        with self.translate_errors(sent=False, started=started):
            pool, conn = await self._acquire()
        with self.translate_errors(sent=True, started=started):
            try:
                async with asyncio.timeout(self._operation_timeout):
                    yield conn
            finally:
                self._returned_at[id(conn)] = time.monotonic()
                await pool.putconn(conn)

    async def _acquire(
        self,
    ) -> tuple[psycopg_pool.AsyncConnectionPool, psycopg.AsyncConnection[Any]]:
        """A connection from the pool; nothing has been sent to the node when this fails."""
        waits = _PoolWaits()
        try:
            return await self._acquire_within_timeout(waits)
        except TimeoutError:
            if not waits.busy:
                raise
            raise PoolExhausted(
                f"node {self.name}: all connections of this process's pool (at most "
                f"{self._pool_max_size}) stayed busy for {self._operation_timeout}s; raise "
                "pool_max_size or send fewer concurrent calls",
                node=self.name,
            ) from None

    async def _acquire_within_timeout(
        self, waits: _PoolWaits
    ) -> tuple[psycopg_pool.AsyncConnectionPool, psycopg.AsyncConnection[Any]]:
        async with asyncio.timeout(self._operation_timeout):
            if self._down:
                # Down at the last try: probe directly rather than wait on the pool's
                # reconnect backoff. A refused probe fails in milliseconds.
                await self._revive(self._pool)
            elif not self._reached:
                async with self._revive_lock:  # one probe, however many first callers
                    if not self._reached:
                        await self._probe()
            while True:
                pool = self._pool
                try:
                    conn = await pool.getconn()
                    break
                except psycopg_pool.PoolTimeout:
                    # A pool that holds connections is busy, or is retrying to replace
                    # connections of a node that went down (those count in its size too):
                    # only a direct connection tells them apart.
                    if pool.get_stats().get("pool_size", 0) > 0 and await self._answers():
                        waits.busy = True
                        # The pool holds connections, all busy: the node is up, and this
                        # process asks more of it than its pool holds. Wait on (bounded by
                        # the operation timeout); replacing the pool would only close the
                        # connections the other callers are about to get (seen: thousands
                        # of concurrent result() calls churning pools until they timed out).
                        continue
                    await self._revive(pool)  # raises the real reason if the node is down
            if OUTAGES.recovered(pool.name):
                log.warning(
                    "node %s is reachable again",
                    self.name,
                    extra={"action": "node_reachable", "node": self.name},
                )
            return pool, conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection inside one transaction, committed when the block exits cleanly."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def dedicated(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection outside the pool (LISTEN, migrations): closed when the block exits."""
        with self.translate_errors():
            conn = await psycopg.AsyncConnection.connect(self._dsn, **self._kwargs)
            try:
                yield conn
            finally:
                await conn.close()

    def translate_errors(self, *, sent: bool = True, started: float | None = None) -> _Translate:
        """Turn psycopg errors into shardflow's. ``sent=False``: nothing reached the node yet,
        so a failure is certainly not an ambiguous commit. ``started`` (monotonic): when the
        call began, to tell a timeout caused by this process's own pause from a slow node."""
        return _Translate(self, sent=sent, started=started)

    async def fetch(
        self, conn: psycopg.AsyncConnection[Any], query: str, params: Params | None = None
    ) -> list[Row]:
        """Run a named query on ``conn`` and return its rows as dicts (none for no result)."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(self.queries[query], params)
            return await cur.fetchall() if cur.description else []

    async def run(self, query: str, params: Params | None = None) -> list[Row]:
        """Run one named query in its own (autocommit) transaction on a pooled connection."""
        async with self.connection() as conn:
            return await self.fetch(conn, query, params)

    async def run_many(self, query: str, params: Sequence[Params]) -> list[list[Row]]:
        """Run one named query once per parameter set, all in one transaction, pipelined
        (one round trip and one commit). Citus runs single-partition statements this way
        where plain PostgreSQL takes one statement for many partitions."""
        if not params:
            return []
        async with self.transaction() as conn:
            return await self.fetch_many(conn, query, params)

    async def fetch_many(
        self, conn: psycopg.AsyncConnection[Any], query: str, params: Sequence[Params]
    ) -> list[list[Row]]:
        """``run_many`` on ``conn``, inside the caller's transaction."""
        return await self.fetch_each(conn, [(query, one) for one in params])

    async def fetch_each(
        self, conn: psycopg.AsyncConnection[Any], statements: Sequence[tuple[str, Params]]
    ) -> list[list[Row]]:
        """Several named queries on ``conn``, pipelined (one round trip); their rows in order."""
        cursors = []
        async with conn.pipeline():
            for query, params in statements:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(self.queries[query], params)
                cursors.append(cur)
        return [await cur.fetchall() if cur.description else [] for cur in cursors]

    async def execute_script(self, conn: psycopg.AsyncConnection[Any], script: bytes) -> None:
        """Run a multi-statement script (migrations): no parameters, simple protocol."""
        await conn.execute(script)


class _PoolWaits:
    """Whether a connection request waited on a pool whose connections were all busy."""

    busy = False


class PoolExhausted(NodeUnavailable):
    """Every connection of this process's pool to the node stayed busy for the operation
    timeout: the node is up, the process asks too much of it at once. Raise pool_max_size,
    or lower the concurrency of the calls."""


class _Translate:
    """Context manager that turns psycopg and pool errors into shardflow errors."""

    def __init__(self, connector: NodeConnector, *, sent: bool, started: float | None = None):
        self._node = connector
        self._sent = sent
        self._started = time.monotonic() if started is None else started

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None or isinstance(exc, ShardflowError):
            return
        name, address = self._node.name, self._node.address
        paused = paused_since(self._started)
        if isinstance(exc, TimeoutError) and paused:
            raise NodeUnavailable(
                f"this process was paused (or its event loop blocked) for {paused:.1f}s while "
                f"waiting on node {name} ({address}), so the call timed out on its own clock; "
                "the node may be healthy",
                node=name,
                maybe_committed=self._sent,
            ) from exc
        if isinstance(exc, TimeoutError):
            raise NodeUnavailable(
                f"node {name} ({address}) did not answer within "
                f"{self._node._operation_timeout}s; only its partitions are affected",
                node=name,
                maybe_committed=self._sent,
            ) from exc
        if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
            raise NodeUnavailable(
                f"node {name} ({address}) is unavailable: {_first_line(exc)}; only its "
                "partitions are affected, retry later or check that the node is running",
                node=name,
                maybe_committed=self._sent,
            ) from exc
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
            raise ClusterNotInitialized(
                f"node {name} ({address}) has no shardflow schema {self._node.schema!r}: "
                "run `shardflow migrate` or `shardflow cluster init`"
            ) from exc
        if isinstance(exc, psycopg.Error):
            raise StorageError(f"database error on node {name}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
