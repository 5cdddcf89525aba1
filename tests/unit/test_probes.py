"""Probes against real servers on 127.0.0.1 ephemeral ports, started in the test's own loop.

Every server is stopped by its context manager even when the test fails; each test runs in
its own event loop (asyncio.run) and closes the probes' shared HTTP session before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hapair import probes
from hapair.config.checks import DnsProbe, HttpProbe, ScriptProbe, SmtpProbe, TcpProbe
from hapair.monitor.cert import write_self_signed
from hapair.probes import Result

pytestmark = pytest.mark.unit

LOCAL = IPv4Address("127.0.0.1")
MARGIN = 0.5  # seconds a failing probe may take beyond its timeout
T = TypeVar("T")
P = ParamSpec("P")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test body in a fresh loop, then release the probes' shared resources."""

    async def main() -> T:
        try:
            return await coro
        finally:
            await probes.close()

    return asyncio.run(main())


def in_loop(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """An async test, run by `run` with the fixtures pytest passes."""

    @functools.wraps(test)
    def run_test(*args: P.args, **kwargs: P.kwargs) -> None:
        run(test(*args, **kwargs))

    return run_test


async def timed(probe: Any, port: int, address: Any = LOCAL) -> tuple[Result, float]:
    started = time.monotonic()
    result = await probes.check(probe, address, port)
    return result, time.monotonic() - started


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A TCP server running `handler` per connection; yields its port."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:  # a hanging handler must not keep its client connected
            writer.transport.abort()
        await server.wait_closed()


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- HTTP / HTTPS ----------------------------------------------------------------------


class WebApp:
    """An aiohttp server that records what it saw."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.methods: list[str] = []
        self.sni: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{name:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hosts.append(request.headers.get("Host", ""))
        self.methods.append(request.method)
        name = request.match_info["name"]
        if name == "fail":
            return web.Response(status=500, text="broken")
        if name == "moved":
            return web.Response(status=302, headers={"Location": "/fail"})
        return web.Response(text="service status: green\n")

    @contextlib.asynccontextmanager
    async def serving(self, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
        runner = web.AppRunner(self.app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
            await site.start()
            yield runner.addresses[0][1]
        finally:
            await runner.cleanup()


def http(**fields: Any) -> HttpProbe:
    return HttpProbe.model_validate({"type": "http", "timeout": 1.0, **fields})


@in_loop
async def test_http_ok() -> None:
    app = WebApp()
    async with app.serving() as port:
        result = await probes.check(http(path="/health"), LOCAL, port)
    assert result.ok, result
    assert result.latency > 0
    assert result.reason == f"HTTP GET http://127.0.0.1:{port}/health: 200 OK"


@in_loop
async def test_http_500_fails_with_status() -> None:
    async with WebApp().serving() as port:
        result = await probes.check(http(path="/fail"), LOCAL, port)
    assert not result.ok
    assert "500 Internal Server Error (expected 200-299)" in result.reason


@in_loop
async def test_http_hanging_server_fails_at_timeout() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with raw_server(hang) as port:
        (plain, plain_elapsed), (tls, tls_elapsed) = await asyncio.gather(
            timed(http(), port), timed(http(type="https"), port)
        )
    # The reason tells a hung application from a connection that never came up.
    assert not plain.ok
    assert plain.reason.endswith(
        "no answer within 1s (connected, waiting for the response headers)"
    ), plain.reason
    assert not tls.ok
    assert tls.reason.endswith("no answer within 1s (connecting)"), tls.reason  # TLS hangs
    for elapsed in (plain_elapsed, tls_elapsed):
        assert 1.0 <= elapsed < 1.0 + MARGIN


@in_loop
async def test_http_trickling_server_fails_at_timeout() -> None:
    """One byte every 0.3 s keeps every read short: only an end-to-end bound stops it."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for i in range(len(response)):
            writer.write(response[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.3)

    async with raw_server(trickle) as port:
        result, elapsed = await timed(http(), port)
    assert not result.ok
    assert "no answer within 1s" in result.reason, result.reason
    assert elapsed < 1.0 + MARGIN


@in_loop
async def test_http_body_regex() -> None:
    async with WebApp().serving() as port:
        match = await probes.check(http(body_regex=r"status: (green|yellow)"), LOCAL, port)
        miss = await probes.check(http(body_regex=r"status: red"), LOCAL, port)
    assert match.ok, match
    assert "body matches" in match.reason
    assert not miss.ok
    assert "200 OK, body does not match 'status: red'" in miss.reason


@in_loop
async def test_http_host_header_and_head_method() -> None:
    app = WebApp()
    async with app.serving() as port:
        result = await probes.check(http(method="HEAD", host="www.example.org"), LOCAL, port)
    assert result.ok, result
    assert result.reason.startswith("HTTP HEAD ")
    assert app.hosts == ["www.example.org"]
    assert app.methods == ["HEAD"]


@in_loop
async def test_http_status_range_accepts_a_redirect_without_following_it() -> None:
    app = WebApp()
    async with app.serving() as port:
        accepted = await probes.check(http(path="/moved", expect_status="200-399"), LOCAL, port)
        refused = await probes.check(http(path="/moved"), LOCAL, port)
    assert accepted.ok, accepted
    assert "302 Found" in accepted.reason
    assert not refused.ok
    assert "302 Found (expected 200-299)" in refused.reason
    assert app.hosts and len(app.methods) == 2  # /fail, the redirect target, never asked


@in_loop
async def test_http_connection_refused() -> None:
    result, elapsed = await timed(http(), free_port())
    assert not result.ok
    assert "connection refused" in result.reason
    assert elapsed < 0.5


@pytest.fixture
def tls_context(tmp_path: Path) -> tuple[ssl.SSLContext, list[str | None]]:
    """A server context with a self-signed certificate; the list gets each SNI name seen."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "backend.example.org")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen: list[str | None] = []

    def on_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(name)

    context.sni_callback = on_sni
    return context, seen


@in_loop
async def test_https_self_signed(tls_context: tuple[ssl.SSLContext, list[str | None]]) -> None:
    context, _ = tls_context

    async with WebApp().serving(context) as port:
        trusting = await probes.check(http(type="https"), LOCAL, port)
        verifying = await probes.check(http(type="https", verify_tls=True), LOCAL, port)
    assert trusting.ok, trusting
    assert trusting.reason == f"HTTP GET https://127.0.0.1:{port}/: 200 OK"
    assert not verifying.ok
    assert "certificate" in verifying.reason, verifying.reason


@in_loop
async def test_https_sni(tls_context: tuple[ssl.SSLContext, list[str | None]]) -> None:
    context, seen = tls_context

    async with WebApp().serving(context) as port:
        plain = await probes.check(http(type="https"), LOCAL, port)
        named = await probes.check(http(type="https", sni="sni.example.org"), LOCAL, port)
        by_host = await probes.check(http(type="https", host="www.example.org:8443"), LOCAL, port)
    assert plain.ok and named.ok and by_host.ok
    # No SNI for a bare IP; `sni` when given; else the Host header's name.
    assert seen == [None, "sni.example.org", "www.example.org"]


# --- SMTP -----------------------------------------------------------------------------


class Recorder:
    """aiosmtpd handler that records EHLO names."""

    def __init__(self) -> None:
        self.helo: list[str] = []

    async def handle_EHLO(  # aiosmtpd calls its hooks by this name
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.helo.append(hostname)
        session.host_name = hostname
        return responses


@contextlib.asynccontextmanager
async def smtp_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, Recorder]]:
    from aiosmtpd.smtp import SMTP

    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, hostname="mx.test", tls_context=tls), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1], recorder
    finally:
        server.close()
        await server.wait_closed()


def smtp(**fields: Any) -> SmtpProbe:
    return SmtpProbe.model_validate({"type": "smtp", "timeout": 2.0, **fields})


@in_loop
async def test_smtp_ok() -> None:
    async with smtp_server() as (port, recorder):
        result = await probes.check(smtp(helo_name="lvs1.example.org"), LOCAL, port)
    assert result.ok, result
    assert result.reason.startswith(f"SMTP 127.0.0.1:{port}: banner 220 mx.test")
    assert "EHLO ok" in result.reason
    assert recorder.helo == ["lvs1.example.org"]


@in_loop
async def test_smtp_554_banner_fails() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 no service here\r\n")
        await writer.drain()
        await reader.read()  # until the client hangs up

    async with raw_server(refuse) as port:
        result = await probes.check(smtp(), LOCAL, port)
    assert not result.ok
    assert "554 no service here" in result.reason, result.reason


@in_loop
async def test_smtp_starttls(tls_context: tuple[ssl.SSLContext, list[str | None]]) -> None:
    context, _ = tls_context

    async with smtp_server(context) as (port, recorder):
        result = await probes.check(smtp(starttls=True), LOCAL, port)
    assert result.ok, result
    assert "STARTTLS ok" in result.reason
    assert recorder.helo == ["hapair", "hapair"]  # once before TLS, once within it


@in_loop
async def test_smtp_starttls_not_offered() -> None:
    async with smtp_server() as (port, _):
        result = await probes.check(smtp(starttls=True), LOCAL, port)
    assert not result.ok
    assert "STARTTLS" in result.reason


@in_loop
async def test_smtp_connection_refused() -> None:
    result = await probes.check(smtp(), LOCAL, free_port())
    assert not result.ok
    assert result.reason.endswith("connection refused"), result.reason


# --- DNS ------------------------------------------------------------------------------


class DnsServer(asyncio.DatagramProtocol):
    """Answers A queries for www.example.org; NXDOMAIN otherwise; nothing when `silent`."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        from dnslib import QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]

        if self.silent or self.transport is None:
            return
        query = DNSRecord.parse(data)
        reply = query.reply()
        if str(query.q.qname) == "www.example.org." and query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.10"), ttl=60))
        elif str(query.q.qname) != "www.example.org.":
            reply.header.rcode = RCODE.NXDOMAIN
        self.transport.sendto(reply.pack(), addr)


@contextlib.asynccontextmanager
async def dns_server(silent: bool = False) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: DnsServer(silent), local_addr=("127.0.0.1", 0)
    )
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def dnsq(**fields: Any) -> DnsProbe:
    return DnsProbe.model_validate({"type": "dns", "timeout": 1.0, **fields})


@in_loop
async def test_dns_ok_nxdomain_and_empty() -> None:
    async with dns_server() as port:
        known = await probes.check(dnsq(query="www.example.org"), LOCAL, port)
        unknown = await probes.check(dnsq(query="nope.example.org"), LOCAL, port)
        empty = await probes.check(dnsq(query="www.example.org", qtype="MX"), LOCAL, port)
    assert known.ok, known
    assert known.reason == f"DNS A www.example.org @127.0.0.1:{port}: NOERROR, 1 answer"
    assert not unknown.ok
    assert unknown.reason.endswith("NXDOMAIN")
    assert not empty.ok
    assert "no answer" in empty.reason


@in_loop
async def test_dns_silent_server_fails_at_timeout() -> None:
    async with dns_server(silent=True) as port:
        result, elapsed = await timed(dnsq(query="www.example.org"), port)
    assert not result.ok
    assert "no answer within 1s" in result.reason
    assert 1.0 <= elapsed < 1.0 + MARGIN


# --- TCP ------------------------------------------------------------------------------


@in_loop
async def test_tcp_listening_port() -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with raw_server(accept) as port:
        result = await probes.check(TcpProbe(type="tcp"), LOCAL, port)
    assert result.ok, result
    assert result.reason == f"TCP connect to 127.0.0.1:{port}: connected"
    assert result.latency > 0


@in_loop
async def test_tcp_closed_port_is_refused_fast() -> None:
    result, elapsed = await timed(TcpProbe(type="tcp"), free_port())
    assert not result.ok
    assert result.reason.endswith("connection refused")
    assert elapsed < 0.2


@in_loop
async def test_tcp_ipv6_loopback() -> None:
    from ipaddress import IPv6Address

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    server = await asyncio.start_server(lambda r, w: w.close(), "::1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await probes.check(TcpProbe(type="tcp"), IPv6Address("::1"), port)
    finally:
        server.close()
        await server.wait_closed()
    assert result.ok, result
    assert f"[::1]:{port}" in result.reason


# --- Script ---------------------------------------------------------------------------


def script(command: str, timeout: float = 2.0) -> ScriptProbe:
    return ScriptProbe(type="script", command=command, timeout=timeout)


@in_loop
async def test_script_exit_codes() -> None:
    up = await probes.check(script("true"), LOCAL, 80)
    down = await probes.check(script("false"), LOCAL, 80)
    said = await probes.check(script("echo starting; echo 'db: read-only' >&2; exit 3"), LOCAL, 80)
    assert up.ok and up.reason == "script 'true': exit 0"
    assert not down.ok and down.reason == "script 'false': exit 1"
    assert not said.ok and said.reason.endswith("exit 3: db: read-only")


@in_loop
async def test_script_environment() -> None:
    command = 'echo "$HAPAIR_ADDRESS port $HAPAIR_PORT"; test "$HAPAIR_PORT" = 8080'
    result = await probes.check(script(command), IPv4Address("10.0.0.11"), 8080)
    assert result.ok, result
    assert result.reason.endswith("exit 0: 10.0.0.11 port 8080")


def _gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def test_script_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    # A background child as well: killing only the shell would leave it running.
    command = f"sleep 10 & echo $! > {pidfile}; echo $$ >> {pidfile}; wait"

    async def body() -> None:
        result, elapsed = await timed(script(command, timeout=0.5), 80)
        assert not result.ok
        assert result.reason.endswith("no exit within 0.5s, killed")
        assert elapsed < 0.5 + MARGIN

    run(body())
    pids = [int(line) for line in pidfile.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 2
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(_gone(pid) for pid in pids), pids


def test_script_cancelled_kills_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def body() -> None:
        task = asyncio.create_task(
            probes.check(script(f"echo $$ > {pidfile}; sleep 10"), LOCAL, 80)
        )
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(body())
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(pid)


# --- Never raises ---------------------------------------------------------------------


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(max_size=512), hang_up=st.booleans())
def test_garbage_servers_never_make_a_probe_raise(garbage: bytes, hang_up: bool) -> None:
    async def spew(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(garbage)
        await writer.drain()
        if hang_up:
            writer.close()
        else:
            await reader.read()

    kinds = [
        http(timeout=0.5),
        http(type="https", timeout=0.5),
        http(method="HEAD", body_regex="x", timeout=0.5),
        smtp(timeout=0.5),
        smtp(starttls=True, timeout=0.5),
        TcpProbe(type="tcp", timeout=0.5),
    ]

    async def body() -> None:
        async with raw_server(spew) as port:
            results = await asyncio.gather(*(timed(kind, port) for kind in kinds))
        for result, elapsed in results:
            assert isinstance(result, Result)
            assert isinstance(result.reason, str) and result.reason
            assert elapsed < 0.5 + MARGIN

    run(body())


@settings(max_examples=25, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=512))
def test_garbage_dns_replies_never_make_a_probe_raise(garbage: bytes) -> None:
    class Spew(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            # Half the time keep the query's id, so dnspython reads the rest as a reply.
            self.transport.sendto(data[:2] + garbage if garbage[0] & 1 else garbage, addr)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Spew, local_addr=("127.0.0.1", 0))
        try:
            port = transport.get_extra_info("sockname")[1]
            result, elapsed = await timed(dnsq(query="www.example.org", timeout=0.5), port)
        finally:
            transport.close()
        assert isinstance(result, Result)
        assert elapsed < 0.5 + MARGIN

    run(body())


# --- The package ----------------------------------------------------------------------


def test_import_is_cheap() -> None:
    code = (
        "import sys, hapair.probes\n"
        "heavy = {'aiohttp', 'aiosmtplib', 'dns', 'icmplib'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


@in_loop
async def test_icmp_on_loopback_never_raises() -> None:
    """As root the echo to 127.0.0.1 succeeds; without a raw socket the reason says why."""
    from hapair.config.checks import IcmpProbe

    result = await probes.check(IcmpProbe(type="icmp"), LOCAL, 0)
    assert result.reason.startswith("ICMP echo to 127.0.0.1: ")
    assert result.ok == (os.geteuid() == 0), result
