"""Real-server probes: `check(probe, address, port) -> Result`, one module per probe type.

Owns the dispatch, the Result type and the shared resources (`close()`). A probe only
observes: it never raises (but CancelledError), never touches IPVS, keeps no verdict.
"""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address

    from hapair.config.checks import Probe

__all__ = [
    "Result",
    "check",
    "close",
    "describe_error",
    "endpoint",
    "failed",
    "one_line",
    "own_fault",
]


class Result(NamedTuple):  # a tuple: made thousands of times a second, cheaply
    ok: bool | None  # None: no verdict; the attempt failed here, not at the server
    reason: str  # readable, built step by step; what status, the monitor and alerts show
    latency: float  # seconds the attempt took


# Errors of this host, not of the server probed: the agent is out of descriptors or
# memory. Such an attempt says nothing about the server and counts neither way.
OWN_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
OWN_FAULT = "not counted: the failure was this host's (out of descriptors or memory)"


def own_fault(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) is an error of this host, not of the peer."""
    for _ in range(8):  # causes and contexts, and aiohttp's os_error
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in OWN_ERRNOS:
            return True
        inner = getattr(exc, "os_error", None)
        exc = inner if isinstance(inner, BaseException) else (exc.__cause__ or exc.__context__)
    return False


def failed(exc: BaseException, reason: str, latency: float) -> Result:
    """The Result of an attempt that raised `exc`: down, or no verdict if it was ours."""
    if own_fault(exc):
        return Result(None, f"{reason} ({OWN_FAULT})", latency)
    return Result(False, reason, latency)


CheckFn = Callable[[Any, "IPv4Address | IPv6Address", int], Awaitable[Result]]

# probe.type -> submodule; imported on first use so that `import hapair.probes` stays cheap.
_MODULE_OF = {
    "icmp": "icmp",
    "tcp": "tcp",
    "http": "http",
    "https": "http",
    "smtp": "smtp",
    "dns": "dns",
    "script": "script",
}
_checks: dict[str, CheckFn] = {}


async def check(probe: Probe, address: IPv4Address | IPv6Address, port: int) -> Result:
    """One attempt of `probe` against address:port, bounded by `probe.timeout`."""
    fn = _checks.get(probe.type)
    try:
        if fn is None:
            fn = _checks[probe.type] = _load(probe.type)
        return await fn(probe, address, port)
    except Exception as exc:  # the modules catch their own; this guards against their bugs
        reason = f"{probe.type} probe of {endpoint(address, port)}: {describe_error(exc)}"
        return failed(exc, reason, 0.0)


def preload(kinds: set[str]) -> None:
    """Import the modules of these probe types now: an import inside the event loop
    (aiohttp takes ~0.15 s) would delay the heartbeat timers."""
    for kind in kinds:
        _checks.setdefault(kind, _load(kind))


def _load(kind: str) -> CheckFn:
    if kind not in _MODULE_OF:
        raise ValueError(f"no probe of type {kind!r}")
    fn: CheckFn = importlib.import_module(f"hapair.probes.{_MODULE_OF[kind]}").check
    return fn


async def close() -> None:
    """Release shared resources (the HTTP session of the running event loop).
    Call it before the loop ends; probes may be used again afterwards."""
    http = sys.modules.get("hapair.probes.http")
    if http is not None:
        await http.close()


def endpoint(address: IPv4Address | IPv6Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connect timed out",
    errno.EPIPE: "connection closed by the server",
}


def describe_error(exc: BaseException) -> str:
    """A short operator-readable text for an exception: 'connection refused', not a repr."""
    ssl = sys.modules.get("ssl")  # not imported here: no ssl module loaded, no TLS error
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if ssl is not None and isinstance(exc, ssl.SSLError):
        text = exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
        return f"TLS handshake failed: {one_line(text)}"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    if isinstance(exc, EOFError | ConnectionError):
        return str(exc) or "connection closed by the server"
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def one_line(text: str, limit: int = 160) -> str:
    """Text from a server or a library, fit for a reason: one line, printable, bounded
    (it ends up in status, logs and alert subjects)."""
    text = " ".join(text.split())
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
