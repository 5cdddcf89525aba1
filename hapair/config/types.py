"""Scalar types of the configuration: durations, IP addresses, host:port endpoints.

Each parser takes what TOML gives and either returns a typed value or raises
ValueError with a message an operator can act on. No I/O here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, Strict


class Section(BaseModel):
    """The base of every section of the configuration: no unknown keys, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_DURATION = re.compile(r"\s*(\d{1,12}(?:\.\d{0,12})?|\.\d{1,12})\s*(ms|s|m|h)?\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# Printable ASCII but '/' and ':' (Linux refuses '/', whitespace; ':' marks an alias).
_IFNAME = re.compile(r"[!-.0-9;-~]{1,15}")
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?|\[[0-9A-Fa-f:.]{2,45}\]")
_HOST_HEADER = re.compile(r"(?P<host>[^:\[\]]+|\[[^\]]*\])(?::(?P<port>[0-9]{1,5}))?")
DAY = 86400.0
MAX_TEXT = 1024  # characters of a free-text value (a command line, a user name)


def _text(value: object) -> str:
    """`value` for an error message: quoted, control characters escaped, bounded."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_duration(value: Any, maximum: float = DAY) -> float:
    """`2`, `0.5`, `"150ms"`, `"2s"`, `"1m"`, `"1h"` -> seconds (a float, 0..maximum)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("a duration is a number of seconds or a string like '150ms', '2s', '1m'")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not match:
            raise ValueError(
                f"{_text(value)} is not a duration; write seconds (2, 0.5) or '150ms', '2s', "
                "'1m', '1h'"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an integer of hundreds of digits
            seconds = float("inf")
    if not 0 <= seconds <= maximum:  # NaN fails this too
        shown = (
            _text(value)
            if isinstance(value, str)
            else f"{value:.6g}"
            if isinstance(value, float) or abs(value) < 10**15
            else "a number that large"
        )
        raise ValueError(f"{shown} is not a duration from 0 to {_seconds(maximum)}")
    return seconds


def _seconds(limit: float) -> str:
    return "1 day" if limit == DAY else f"{limit / DAY:g} days"


def parse_long_duration(value: Any) -> float:
    """A duration of up to 31 days (what ipvsadm takes for persistence)."""
    return parse_duration(value, 31 * DAY)


def parse_line(value: Any) -> str:
    """Free text that goes into a command line, a protocol or a log: one line of
    printable characters, so that no value can inject a header or a second command."""
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if not value.isprintable() or len(value) > MAX_TEXT:
        raise ValueError(
            f"{_text(value)} must be one line of printable text (at most {MAX_TEXT} characters)"
        )
    return value


def parse_host(value: Any) -> str:
    """A host name or an address, as an HTTP Host, a TLS server name or an SMTP HELO take it."""
    if not isinstance(value, str) or not _HOST.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{_text(value)} is not a host name "
            "(letters, digits, '-', '_' and dots) or a bracketed address"
        )
    return value


def parse_host_header(value: Any) -> str:
    """An HTTP Host header: a host name or bracketed address, optionally with a port."""
    match = _HOST_HEADER.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{_text(value)} is not a host name, with or without ':port'")
    parse_host(match["host"])
    if match["port"] is not None:
        _port(match["port"], value)
    return str(value)


def parse_file_path(value: Any) -> Path:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value or not value.isprintable() or len(value) > 4096:
        raise ValueError(f"{_text(value)} is not a file path (printable, one line)")
    return Path(value)


def parse_ip(value: Any) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError("an IP address is a string, e.g. '10.0.0.11' or '2001:db8::11'")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{_text(value)} is not an IP address") from None


def parse_ip_interface(value: Any) -> IPInterface:
    if not isinstance(value, str):
        raise ValueError("an address is a string such as '10.0.0.100/24'")
    try:
        return ipaddress.ip_interface(value.strip())
    except ValueError:
        raise ValueError(
            f"{_text(value)} is not an address with prefix length, e.g. '10.0.0.100/24'"
        ) from None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address and port, written `10.0.0.9:80` or `[2001:db8::9]:80`."""

    address: IPAddress
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host name or address and a port, e.g. `mail.example.org:25`."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _split_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 endpoint as '[2001:db8::9]:80'")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def _port(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{whole!r}: port must be 1..65535")
    return int(text)


def parse_endpoint(value: Any, *, port_required: bool = False) -> Endpoint:
    if not isinstance(value, str):
        raise ValueError("an endpoint is a string such as '10.0.0.9:80'")
    host, port = _split_port(value.strip())
    if port is None and port_required:
        raise ValueError(f"{value!r}: a port is required, e.g. '10.0.0.9:80'")
    return Endpoint(parse_ip(host), None if port is None else _port(port, value))


def parse_host_port(value: Any) -> HostPort:
    if not isinstance(value, str):
        raise ValueError("expected 'host:port', e.g. '127.0.0.1:25'")
    host, port = _split_port(value.strip())
    if not host or port is None:
        raise ValueError(f"{_text(value)}: expected 'host:port', e.g. '127.0.0.1:25'")
    if not _HOST.fullmatch(host) and ":" not in host:
        raise ValueError(f"{_text(value)}: {_text(host)} is not a host name or an address")
    if ":" in host:
        parse_ip(host)
    return HostPort(host, _port(port, value))


def parse_ifname(value: Any) -> str:
    if not isinstance(value, str) or not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"{_text(value)} is not an interface name "
            "(1-15 printable characters, no '/', ':' or spaces)"
        )
    return value


def parse_mailbox(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value.isprintable()
        or len(value) > 254
        or not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", value)
    ):
        raise ValueError(f"{value!r} is not an email address")
    return value


# Strict: a boolean is not a number (pydantic would take `priority = true` as 1), nor a
# number a boolean; a float is not an integer.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Duration = Annotated[float, PlainValidator(parse_duration)]
LongDuration = Annotated[float, PlainValidator(parse_long_duration)]
Line = Annotated[str, PlainValidator(parse_line)]
Host = Annotated[str, PlainValidator(parse_host)]
HostHeader = Annotated[str, PlainValidator(parse_host_header)]
FilePath = Annotated[Path, PlainValidator(parse_file_path), PlainSerializer(str)]
IP = Annotated[IPAddress, PlainValidator(parse_ip), PlainSerializer(str)]
IPWithPrefix = Annotated[IPInterface, PlainValidator(parse_ip_interface), PlainSerializer(str)]
EndpointStr = Annotated[Endpoint, PlainValidator(parse_endpoint), PlainSerializer(str)]
HostPortStr = Annotated[HostPort, PlainValidator(parse_host_port), PlainSerializer(str)]
IfName = Annotated[str, PlainValidator(parse_ifname)]
Mailbox = Annotated[str, PlainValidator(parse_mailbox)]
