"""HTTP and HTTPS probe: one request to address:port, judged by status range and body regex.

Owns the aiohttp session of each event loop (closed by `hapair.probes.close()`). It connects
to the given address only (no DNS), follows no redirect and reads at most 64 KiB of body.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from ipaddress import IPv4Address, IPv6Address
from types import SimpleNamespace

import aiohttp

from hapair.config.checks import HttpProbe
from hapair.probes import Result, describe_error, endpoint, one_line

BODY_LIMIT = 64 * 1024
_USER_AGENT = "hapair-probe"

# One session per event loop: a session is bound to the loop it was made in.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
    weakref.WeakKeyDictionary()
)


async def _connected(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
    """Trace hook: the connection (TCP, and TLS for https) is up; now the server's turn."""
    steps = ctx.trace_request_ctx
    if isinstance(steps, list):
        steps.append("connected, waiting for the response headers")


def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        # Tells a timeout while connecting (a dead host) from one while waiting (a hung app).
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(_connected)
        session = aiohttp.ClientSession(
            trace_configs=[trace],
            # A new connection per probe: a kept-alive one would hide a dead listener.
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            # The probe's own asyncio.timeout bounds the attempt end to end.
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": _USER_AGENT},
        )
        _sessions[loop] = session
    return session


async def close() -> None:
    """Close the running loop's session (the others belong to loops that are gone)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


async def check(probe: HttpProbe, address: IPv4Address | IPv6Address, port: int) -> Result:
    started = time.perf_counter()
    url = f"{probe.type}://{endpoint(address, port)}{probe.path}"
    label = f"HTTP {probe.method} {url}"
    steps = ["connecting"]
    try:
        async with asyncio.timeout(probe.timeout):
            ok, outcome = await _request(probe, url, steps)
    except TimeoutError:
        ok, outcome = False, f"no answer within {probe.timeout:g}s ({steps[-1]})"
    except aiohttp.ClientConnectorCertificateError as exc:
        ok, outcome = False, describe_error(exc.certificate_error)
    except aiohttp.ClientConnectorError as exc:
        ok, outcome = False, describe_error(exc.os_error)
    except aiohttp.ServerDisconnectedError:
        ok, outcome = False, f"connection closed by the server ({steps[-1]})"
    except aiohttp.ClientResponseError as exc:
        ok, outcome = False, f"invalid HTTP response: {one_line(exc.message)}"
    except aiohttp.ClientPayloadError:
        ok, outcome = False, f"body cut short ({steps[-1]})"
    except Exception as exc:
        ok, outcome = False, describe_error(exc)
    return Result(ok, f"{label}: {outcome}", time.perf_counter() - started)


async def _request(probe: HttpProbe, url: str, steps: list[str]) -> tuple[bool, str]:
    """Send the request; `steps` records how far it got, for the reason of a timeout."""
    headers = {"Host": probe.host} if probe.host else None
    # SNI (and the name a verified certificate must carry): `sni`, else the Host header's
    # name; none for a bare IP, which is what a server without virtual hosts expects.
    sni = probe.sni or (_host_name(probe.host) if probe.host else None)
    if probe.type == "https":
        # ssl=True: aiohttp's cached verifying context; False: no verification at all.
        request = _session().request(
            probe.method,
            url,
            headers=headers,
            allow_redirects=False,
            ssl=probe.verify_tls,
            server_hostname=sni,
            trace_request_ctx=steps,
        )
    else:
        # No redirect is followed: a 302 is judged by its own status, like any other.
        request = _session().request(
            probe.method, url, headers=headers, allow_redirects=False, trace_request_ctx=steps
        )
    async with request as response:
        status = f"{response.status} {one_line(response.reason or '', 60)}".rstrip()
        low, high = probe.expect_status
        if not low <= response.status <= high:
            expected = f"{low}" if low == high else f"{low}-{high}"
            return False, f"{status} (expected {expected})"
        if probe.body_regex is None or probe.method == "HEAD":
            return True, status
        steps.append(f"{status}, reading the body")
        body = await _read_head(response)
    if re.search(probe.body_regex, body):
        return True, f"{status}, body matches '{probe.body_regex}'"
    return False, f"{status}, body does not match '{probe.body_regex}'"


async def _read_head(response: aiohttp.ClientResponse) -> str:
    """At most BODY_LIMIT bytes of the (decoded) body, as text."""
    chunks: list[bytes] = []
    size = 0
    while size < BODY_LIMIT:
        chunk = await response.content.read(BODY_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    try:
        return body.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


def _host_name(host: str) -> str:
    """'www.example.org:8080' -> 'www.example.org'; '[2001:db8::1]' -> '2001:db8::1'."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host
