"""Slow web clients, as a flood: `python slow_clients.py HOST PORT SECONDS N SRC...`.

N clients, spread over the source addresses SRC, each for SECONDS: connect, be slow in
one of four ways, and when the server closes the connection, note how long it lived and
connect again half a second later. Prints one JSON object: per way, the connections the
server closed and the longest any of them lived, and the connections still open at the
end with the oldest one's age.

The ways: `silent` (TCP, never a TLS hello), `junk` (a byte of garbage a second in place
of a TLS hello), `head` (TLS, then a request head a byte a second), `body` (TLS, a whole
head announcing 1,000 bytes of body, then a byte a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import ssl
import sys
import time
from collections import defaultdict
from typing import Any

WAYS = ("silent", "junk", "head", "body")
HEAD = b"GET /api/status HTTP/1.1\r\nHost: monitor\r\nAuthorization: Basic eDp5\r\n\r\n"
BODY_HEAD = (
    b"POST /api/servers/web HTTP/1.1\r\nHost: monitor\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
)


async def one(
    way: str,
    host: str,
    port: int,
    src: str,
    context: ssl.SSLContext,
    out: dict[str, Any],
    established: list[float],
) -> float:
    """One connection; returns how long it lived, from the TCP handshake until the server
    closed it (a connect the kernel made wait, its listen backlog full, holds nothing of
    the server's and is not counted)."""
    began = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(src, 0))
    except OSError:
        return 0.0
    start = time.monotonic()
    established.append(start)
    out["connect_wait"][way] = max(out["connect_wait"][way], start - began)
    if way in ("head", "body"):
        try:
            await writer.start_tls(context, ssl_handshake_timeout=120)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            writer.transport.abort()
            return time.monotonic() - start  # refused at accept, or the handshake cut
    closed = asyncio.ensure_future(reader.read(1 << 16))
    slowly = {"silent": b"", "junk": b"\x16" * 600, "head": HEAD, "body": BODY_HEAD + b"x" * 1000}
    data = slowly[way]
    if way == "body":  # the head at once, the body slowly
        writer.write(BODY_HEAD)
        data = data[len(BODY_HEAD) :]
    try:
        i = 0
        while not closed.done():
            if i < len(data):
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write(data[i : i + 1])
                i += 1
            await asyncio.wait([closed], timeout=1.0)
            if closed.done() and closed.exception() is None and closed.result():
                closed = asyncio.ensure_future(reader.read(1 << 16))  # an answer: read on
    finally:
        lived = time.monotonic() - start
        closed.cancel()
        writer.transport.abort()
    return lived


async def client(
    way: str, host: str, port: int, src: str, end: float, out: dict[str, Any], ctx: ssl.SSLContext
) -> None:
    while time.monotonic() < end:
        established: list[float] = []
        task = asyncio.ensure_future(one(way, host, port, src, ctx, out, established))
        try:
            lived = await asyncio.wait_for(task, max(0.1, end - time.monotonic()))
        except TimeoutError:
            if established:  # connected, and not closed by the server yet
                age = time.monotonic() - established[0]
                out["still_open"][way] = max(out["still_open"][way], age)
                out["open_at_end"][way] += 1
            return
        out["closed"][way] += 1
        out["longest"][way] = max(out["longest"][way], lived)
        await asyncio.sleep(0.5)


async def main() -> None:
    host, port, seconds, count, *sources = sys.argv[1:]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    out: dict[str, Any] = {
        "closed": defaultdict(int),
        "longest": defaultdict(float),
        "still_open": defaultdict(float),
        "open_at_end": defaultdict(int),
        "connect_wait": defaultdict(float),
    }
    end = time.monotonic() + float(seconds)
    tasks = [
        client(WAYS[i % len(WAYS)], host, int(port), sources[i % len(sources)], end, out, context)
        for i in range(int(count))
    ]
    print("started", flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
