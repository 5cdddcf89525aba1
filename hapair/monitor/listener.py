"""The monitor's front door: accepts TCP connections, does the TLS handshake and hands
each connection to aiohttp, within bounds that no client can stretch.

Owns the listening sockets and what a connection may cost before and around aiohttp:
at most `max_connections` at once and `max_per_client` from one address (beyond, a
connection is closed at accept, before any TLS work); a TLS handshake within
HANDSHAKE_TIMEOUT; a request head within HEAD_TIMEOUT of the connection or of its
first byte; the whole request read and answered within REQUEST_TIMEOUT; a response
taken by the client within RESPONSE_TIMEOUT. Slow clients are closed in seconds, so a
flood of them holds a bounded number of descriptors. It knows nothing of HTTP beyond
where a request head ends, and nothing of the pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

from hapair.config.model import Monitor as MonitorConfig

log = logging.getLogger("hapair.monitor")

HANDSHAKE_TIMEOUT = 5.0
HEAD_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0  # the agent may take ACT_TIMEOUT to answer an action
RESPONSE_TIMEOUT = 60.0  # a status of thousands of servers to a slow but honest client
BACKLOG = 128
END_OF_HEAD = b"\r\n\r\n"


def connection_caps(settings: MonitorConfig) -> tuple[int, int]:
    """(connections at once, from one address): as configured, but never more than a
    quarter of this process's descriptors, whatever the limit it runs under."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = max(16, soft // 4) if soft != resource.RLIM_INFINITY else settings.max_connections
    total = min(settings.max_connections, room)
    if total < settings.max_connections:
        log.warning(
            "monitor: at most %d connections at once, not %d: the agent may open only %d "
            "files (raise LimitNOFILE / ulimit -n)",
            total,
            settings.max_connections,
            soft,
        )
    return total, min(settings.max_connections_per_client, total)


class Listener:
    """TLS connections for `factory()`'s protocols (aiohttp's request handlers)."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        max_connections: int,
        max_per_client: int,
    ) -> None:
        self.factory = factory
        self.context = context
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.head_timeout = HEAD_TIMEOUT
        self.request_timeout = REQUEST_TIMEOUT
        self.response_timeout = RESPONSE_TIMEOUT
        self.open = 0
        self.most = 0  # the most connections open at once
        self.per_client: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()  # refused, handshake_failed, timed_out
        self._servers: list[asyncio.AbstractServer] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._guards: dict[asyncio.Protocol, _Guard] = {}

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port ('*' or '' for every address); returns the bound address."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Gate(self),
            None if host in ("*", "") else host,
            port,
            backlog=BACKLOG,
            reuse_address=True,
        )
        self._servers.append(server)
        name = server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._handshakes):
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    def response_started(self, handler: Any) -> None:
        """aiohttp prepares a response on `handler`'s connection (on_response_prepare)."""
        guard = self._guards.get(handler)
        if guard is not None:
            guard.responding()

    # A connection's life.

    def _accepted(self, transport: asyncio.Transport) -> None:
        transport.pause_reading()  # the ClientHello waits for start_tls
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        if self.open >= self.max_connections or self.per_client[client] >= self.max_per_client:
            self.counts["refused"] += 1
            if self.counts["refused"] in (1, 10, 100) or not self.counts["refused"] % 1000:
                log.warning(
                    "monitor: %d connection(s) refused so far: at most %d at once, %d from one "
                    "address (now %s holds %d)",
                    self.counts["refused"],
                    self.max_connections,
                    self.max_per_client,
                    client,
                    self.per_client[client],
                )
            transport.abort()
            return
        self.open += 1
        self.most = max(self.most, self.open)
        self.per_client[client] += 1
        task = asyncio.create_task(self._handshake(transport, client))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, transport: asyncio.Transport, client: str) -> None:
        loop = asyncio.get_running_loop()
        guard = _Guard(self, self.factory(), client)
        try:
            tls = await loop.start_tls(
                transport,
                guard,
                self.context,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (Exception, asyncio.CancelledError) as exc:
            self.counts["handshake_failed"] += 1
            log.debug("monitor: TLS handshake with %s: %s", client, exc)
            transport.abort()
            guard.release()  # the TLS layer may also report it lost: released once
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if tls is None or guard.released:  # gone during the handshake, or since
            guard.release()
            return
        self._guards[guard.inner] = guard
        guard.connection_made(tls)

    def _release(self, client: str) -> None:
        self.open -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]

    def _closed(self, guard: _Guard) -> None:
        self._guards.pop(guard.inner, None)
        self._release(guard.client)


class _Gate(asyncio.Protocol):
    """The plain TCP connection until its TLS handshake starts."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.listener._accepted(transport)


class _Guard(asyncio.Protocol):
    """Sits between TLS and aiohttp's handler: passes everything on, and closes the
    connection when the client is too slow for the phase it is in."""

    def __init__(self, listener: Listener, inner: Any, client: str) -> None:
        self.listener = listener
        self.inner = inner
        self.client = client
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._phase = "head"  # head -> request -> response -> idle -> head ...
        self._tail = b""  # the last bytes of the head so far, to find its end across reads
        self.released = False  # counted out of the listener's connections

    # Phases.

    def _arm(self, phase: str, seconds: float | None) -> None:
        self._phase = phase
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if seconds is not None and not self.released:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def responding(self) -> None:
        self._arm("response", self.listener.response_timeout)

    def _expired(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or self.released:
            return
        if self._phase == "response" and not transport.get_write_buffer_size():
            self._arm("idle", None)  # answered and taken: aiohttp's keep-alive rules now
            return
        self.listener.counts["timed_out"] += 1
        log.debug(
            "monitor: closing a connection from %s, too slow in its %s", self.client, self._phase
        )
        transport.abort()

    # asyncio.Protocol, passed on.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._arm("head", self.listener.head_timeout)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._phase in ("idle", "response"):
            # A new request: its head must come in time (pipelining is not worth more).
            self._arm("head", self.listener.head_timeout)
            self._tail = b""
        if self._phase == "head":
            seen = self._tail + data
            if END_OF_HEAD in seen:
                self._arm("request", self.listener.request_timeout)
            else:
                self._tail = seen[-(len(END_OF_HEAD) - 1) :]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def release(self) -> None:
        """Out of the listener's counts, once, however the connection ended."""
        if not self.released:
            self.released = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.listener._closed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        if self.transport is not None:  # aiohttp's handler saw the connection made
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
