"""The UDP heartbeat link: one socket bound to one interface, multicast or unicast.

Owns building and configuring that socket, and its error counters. It must not block the
event loop, raise from `send`, or look inside a payload; a dead interface is counted, not
fatal, and the socket is rebuilt when the interface comes back under a new index.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections import Counter

import asyncio_dgram

from hapair.config.model import UdpLink
from hapair.links import LinkError, OnDatagram

log = logging.getLogger(__name__)

# Linux options without a Python constant: deliver only the groups this socket joined,
# not every group any socket on the host joined on the same port.
IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
MAX_DATAGRAM = 1024
REBUILD_INTERVAL = 1.0

Address = tuple[str, int] | tuple[str, int, int, int]


def open_udp_socket(config: UdpLink) -> tuple[socket.socket, Address, int]:
    """A configured, bound, non-blocking socket for `config`, where to send, and the ifindex.

    Raises LinkError naming the link when the interface is missing or an option is refused.
    """
    ifname = config.interface
    where = f"udp link on {ifname}"
    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError:
        raise LinkError(f"{where}: interface {ifname!r} does not exist") from None
    target = config.group if config.group is not None else config.peer
    if target is None:
        raise LinkError(f"{where}: needs a multicast `group` or a unicast `peer`")
    v6 = isinstance(target, ipaddress.IPv6Address)
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            scope = ifindex if (target.is_multicast or target.is_link_local) else 0
            dest: Address = (str(target), config.port, 0, scope)
            if config.group is not None:
                mreq = target.packed + struct.pack("@I", ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
                sock.bind(dest)  # bound to the group: nothing else reaches this socket
            else:
                sock.bind(("::", config.port, 0, 0))
        else:
            dest = (str(target), config.port)
            if config.group is not None:
                mreqn = struct.pack("4s4si", target.packed, bytes(4), ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
                sock.bind(dest)
            else:
                sock.bind(("0.0.0.0", config.port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise LinkError(f"{where} ({target} port {config.port}): {exc.strerror or exc}") from exc
    return sock, dest, ifindex


class UdpHeartbeatLink:
    """Sends payloads to the peer and hands every datagram received to `on_datagram`.

    `counters`: sent, send_errors, send_oversize, received, recv_errors, oversize,
    callback_errors, rebuilds. `last_error` is the latest send or receive error, readable.
    """

    def __init__(
        self,
        config: UdpLink,
        on_datagram: OnDatagram,
        *,
        max_datagram: int = MAX_DATAGRAM,
        rebuild_interval: float = REBUILD_INTERVAL,
    ) -> None:
        self.config = config
        self.on_datagram = on_datagram
        self.max_datagram = max_datagram
        self.rebuild_interval = rebuild_interval
        self.counters: Counter[str] = Counter()
        self.last_error: str | None = None
        self._sock: socket.socket | None = None
        self._dest: Address | None = None
        self._ifindex = 0
        self._stream: asyncio_dgram.aio.DatagramStream | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._rebuilder: asyncio.Task[None] | None = None
        self._last_rebuild = 0.0
        self._failing = False
        self._closed = False

    @property
    def name(self) -> str:
        return self.config.interface

    async def start(self) -> None:
        """Open the socket and start receiving; LinkError if the interface is missing."""
        self._closed = False
        await self._open()

    async def _open(self) -> None:
        sock, dest, ifindex = open_udp_socket(self.config)
        try:
            stream = await asyncio_dgram.from_socket(sock)
        except BaseException:
            sock.close()
            raise
        old_stream, old_receiver = self._stream, self._receiver
        self._sock, self._dest, self._ifindex, self._stream = sock, dest, ifindex, stream
        self._receiver = asyncio.create_task(self._receive(stream), name=f"udp-recv-{self.name}")
        if old_receiver is not None:
            old_receiver.cancel()
        if old_stream is not None:
            old_stream.close()

    def send(self, payload: bytes) -> None:
        """Send one datagram now, or count why not; never blocks, never raises."""
        if len(payload) > self.max_datagram:
            self.counters["send_oversize"] += 1
            return
        if self._sock is None or self._dest is None:
            self._send_failed("link not started")
            return
        try:
            self._sock.sendto(payload, self._dest)
        except BlockingIOError:
            self._send_failed("socket buffer full, heartbeat dropped")
        except OSError as exc:
            self._send_failed(f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}")
            self._maybe_rebuild()
        else:
            self.counters["sent"] += 1
            if self._failing:
                self._failing = False
                log.info("udp link %s: sending again", self.name)

    def _send_failed(self, reason: str) -> None:
        self.counters["send_errors"] += 1
        self.last_error = f"send to {self._dest_text()} on {self.name}: {reason}"
        if not self._failing:
            self._failing = True  # log the first error of a streak, not every heartbeat
            log.warning("udp link %s: %s", self.name, self.last_error)

    def _dest_text(self) -> str:
        if self._dest is None:
            return "?"
        host = self._dest[0]
        return f"[{host}]:{self._dest[1]}" if ":" in host else f"{host}:{self._dest[1]}"

    def _maybe_rebuild(self) -> None:
        """Rebuild the socket if the interface was re-created under a new index: the old
        socket stays bound to the old one and would fail forever."""
        if self._closed or (self._rebuilder is not None and not self._rebuilder.done()):
            return
        now = time.monotonic()
        if now - self._last_rebuild < self.rebuild_interval:
            return
        self._last_rebuild = now
        try:
            index = socket.if_nametoindex(self.name)
        except OSError:
            return  # still missing: keep counting, try again later
        if index != self._ifindex:
            self._rebuilder = asyncio.create_task(self._rebuild())

    async def _rebuild(self) -> None:
        try:
            await self._open()
        except (LinkError, OSError) as exc:
            self.last_error = str(exc)
            log.warning("udp link %s: cannot reopen: %s", self.name, exc)
        else:
            self.counters["rebuilds"] += 1
            log.info("udp link %s: socket reopened on the new interface", self.name)

    async def _receive(self, stream: asyncio_dgram.aio.DatagramStream) -> None:
        while True:
            try:
                data, _addr = await stream.recv()
            except asyncio_dgram.TransportClosed:
                if not self._closed and stream is self._stream:
                    await asyncio.sleep(self.rebuild_interval)
                    self._rebuilder = asyncio.create_task(self._rebuild())
                return
            except OSError as exc:
                # Errors the kernel queued on the socket (e.g. ICMP unreachable for unicast).
                self.counters["recv_errors"] += 1
                self.last_error = f"receive on {self.name}: {exc}"
                continue
            if len(data) > self.max_datagram:
                self.counters["oversize"] += 1
                continue
            self.counters["received"] += 1
            try:
                self.on_datagram(data)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("udp link %s: on_datagram failed", self.name)

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._receiver, self._rebuilder) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._stream is not None:
            self._stream.close()
        self._stream = self._sock = self._receiver = self._rebuilder = None
