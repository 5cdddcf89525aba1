"""TCP probe: up when a connect to address:port completes within the timeout.

Owns the lean connect path (thousands of these run each second): no streams, no data
sent, and the socket is reset and closed the moment the handshake completes.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from ipaddress import IPv4Address, IPv6Address

from hapair.config.model import TcpProbe
from hapair.probes import Result, describe_error, endpoint

# SO_LINGER on with 0 s: close() sends RST, so a probe leaves no TIME_WAIT socket behind
# (at 10,000 probes/s those would exhaust the ephemeral ports towards one real server).
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


async def check(probe: TcpProbe, address: IPv4Address | IPv6Address, port: int) -> Result:
    started = time.perf_counter()
    sock: socket.socket | None = None
    try:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        # A bare socket and sock_connect: asyncio.open_connection would build a transport,
        # a protocol, a reader and a writer for a connection that is closed at once.
        async with asyncio.timeout(probe.timeout):
            await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        ok, outcome = True, "connected"
    except TimeoutError:
        ok, outcome = False, f"no answer within {probe.timeout:g}s"
    except Exception as exc:
        ok, outcome = False, describe_error(exc)
    finally:
        if sock is not None:
            sock.close()
    latency = time.perf_counter() - started
    return Result(ok, f"TCP connect to {endpoint(address, port)}: {outcome}", latency)
