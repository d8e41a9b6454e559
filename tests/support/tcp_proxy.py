"""A TCP proxy on a free loopback port, for network faults in front of a shared service.

Tests must never stop the shared PostgreSQL (or broker): other suites use it at the same time.
Instead the component under test connects through ``TcpProxy``, and the test cuts the proxy:
``cut()`` closes the listening socket (new connections are refused) and aborts every proxied
connection in both directions (RST, as when a cable is pulled or the server dies), so the
service becomes unreachable for this component only. ``restore()`` listens again on the same
port.
"""

from __future__ import annotations

import asyncio
import contextlib

HOST = "127.0.0.1"
CHUNK = 64 * 1024


class TcpProxy:
    """Forwards connections on ``host:port`` to ``upstream_host:upstream_port``."""

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = HOST, port: int = 0
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self.connections = 0  # accepted since the start, for the test's own checks
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a cut)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            for writer in link:
                writer.transport.abort()
        # The handlers end as soon as their transports are gone.
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=5)

    async def restore(self) -> None:
        """Accept connections again, on the same port."""
        await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        if self._server is None:  # cut while the upstream connection was being opened
            for side in link:
                side.transport.abort()
            return
        self._links.add(link)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._links.discard(link)
            for side in link:
                side.close()
            for side in link:
                with contextlib.suppress(OSError):
                    await side.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until either side ends; then close ``writer`` (which ends
    the opposite pipe, since ``writer`` shares its socket with that pipe's reader)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
