"""A TCP proxy a test can cut: every connection a service makes to PostgreSQL or RabbitMQ through
it can be dropped at once, and new ones refused or held, without touching the shared servers."""

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from enum import StrEnum

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024


class PauseMode(StrEnum):
    # A new connection is accepted and reset at once: like a server that is down.
    REFUSE = "refuse"
    # A new connection is accepted and left waiting, unconnected, until `resume()`: like a network
    # that swallows packets. The client's own timeouts decide what happens.
    HOLD = "hold"


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.connections_made = 0
        self.held = 0
        self._server: asyncio.Server | None = None
        self._mode: PauseMode | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def paused(self) -> bool:
        return self._mode is not None

    @property
    def open_connections(self) -> int:
        """Connections piped through now; `held` counts those waiting for `resume()`."""
        return len(self._links)

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._mode = PauseMode.REFUSE
        self._drop_all()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def pause(self, mode: PauseMode = PauseMode.REFUSE) -> None:
        """Drop every open connection (both ends see a reset) and refuse or hold new ones."""
        self._mode = mode
        self._resumed.clear()
        self._drop_all()
        log.info("proxy to :%s paused (%s)", self.upstream_port, mode)

    def resume(self) -> None:
        self._mode = None
        self._resumed.set()
        log.info("proxy to :%s resumed", self.upstream_port)

    def _drop_all(self) -> None:
        for client, upstream in list(self._links):
            _reset(client)
            _reset(upstream)
        self._links.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(client_reader, client_writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._mode is PauseMode.REFUSE:
            _reset(client_writer)
            return
        if self._mode is PauseMode.HOLD:
            self.held += 1
            try:
                await self._resumed.wait()
            finally:
                self.held -= 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            _reset(client_writer)
            return
        if self.paused:
            # Paused while connecting upstream: this one belongs to the outage too.
            _reset(client_writer)
            _reset(upstream_writer)
            return
        link = (client_writer, upstream_writer)
        self._links.add(link)
        self.connections_made += 1
        try:
            await asyncio.gather(
                _pipe(client_reader, upstream_writer),
                _pipe(upstream_reader, client_writer),
            )
        finally:
            self._links.discard(link)
            for writer in link:
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, RuntimeError):
        _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a crashed peer or a cut cable looks to the other end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# `await proxy_to(url)`, the fixture: a proxy to that URL's host and port, and the URL rewritten through it.
ProxyFactory = Callable[[str], Awaitable[tuple["TcpProxy", str]]]
