"""A small asyncio TCP proxy in front of one PostgreSQL node, driven by the tests.

Modes: ``pass``; ``latency`` (seconds added to every chunk, both directions); ``blackhole``
(connections stay open, nothing is forwarded); ``reset()`` closes every connection at once;
``drop_after(pattern)`` closes a connection right after the server answered a client message
containing ``pattern`` (the server committed, the client never hears it: an ambiguous commit);
``drop_after(pattern, then=b"COMMIT")`` waits, on that connection, for the next message with
``then`` (a statement inside a transaction commits only at its COMMIT).
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.latency = 0.0
        # Set while traffic flows; cleared by a blackhole (bytes wait until heal()).
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._drop_pattern: bytes | None = None
        self._drop_then: bytes | None = None
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def reset(self) -> None:
        """Abort every open connection (the clients see a reset)."""
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    @property
    def blackhole(self) -> bool:
        return not self._flowing.is_set()

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    def heal(self) -> None:
        self.latency = 0.0
        self.blackhole = False
        self._drop_pattern = None

    def drop_after(self, pattern: bytes, *, then: bytes | None = None) -> None:
        """Arm: the next connection whose client sends ``pattern`` (and then ``then``) loses
        the server's answer to it."""
        self._drop_pattern = pattern
        self._drop_then = then

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        armed = asyncio.Event()
        await asyncio.gather(
            self._pipe(reader, up_writer, watch=armed),
            self._pipe(up_reader, writer, drop_on=armed),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        watch: asyncio.Event | None = None,
        drop_on: asyncio.Event | None = None,
    ) -> None:
        waiting_for: bytes | None = None  # this connection saw the pattern; drop at this
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            await self._flowing.wait()
            if self.latency:
                await asyncio.sleep(self.latency)
            if watch is not None and waiting_for is not None and waiting_for in chunk:
                watch.set()
            elif watch is not None and self._drop_pattern and self._drop_pattern in chunk:
                self._drop_pattern = None
                if self._drop_then is None:
                    watch.set()
                else:
                    waiting_for = self._drop_then
            if drop_on is not None and drop_on.is_set():
                # The server has answered the armed statement: lose the answer.
                self.dropped += 1
                writer.transport.abort()
                break
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.transport.abort()
