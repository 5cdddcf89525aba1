"""Scalar types of the configuration: durations, IP addresses, host:port endpoints.

Each parser takes what TOML gives and either returns a typed value or raises
ValueError with a message an operator can act on. No I/O here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


def parse_duration(value: Any) -> float:
    """`2`, `0.5`, `"150ms"`, `"2s"`, `"1m"`, `"1h"` -> seconds (a float >= 0)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '150ms', '2s', '1m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                f"{value!r} is not a duration; write seconds (2, 0.5) or '150ms', '2s', '1m', '1h'"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("a duration is a number of seconds or a string like '150ms', '2s', '1m'")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{value!r} is not a duration >= 0")
    return seconds


def parse_ip(value: Any) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError("an IP address is a string, e.g. '10.0.0.11' or '2001:db8::11'")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def parse_ip_interface(value: Any) -> IPInterface:
    if not isinstance(value, str):
        raise ValueError("an address is a string such as '10.0.0.100/24'")
    try:
        return ipaddress.ip_interface(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is not an address with prefix length, e.g. '10.0.0.100/24'"
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
    if not text.isdigit() or not 1 <= int(text) <= 65535:
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
        raise ValueError(f"{value!r}: expected 'host:port', e.g. '127.0.0.1:25'")
    return HostPort(host, _port(port, value))


def parse_ifname(value: Any) -> str:
    if not isinstance(value, str) or not _IFNAME.match(value):
        raise ValueError(
            f"{value!r} is not an interface name (1-15 characters, no '/', ':' or spaces)"
        )
    return value


Duration = Annotated[float, PlainValidator(parse_duration)]
IP = Annotated[IPAddress, PlainValidator(parse_ip), PlainSerializer(str)]
IPWithPrefix = Annotated[IPInterface, PlainValidator(parse_ip_interface), PlainSerializer(str)]
EndpointStr = Annotated[Endpoint, PlainValidator(parse_endpoint), PlainSerializer(str)]
HostPortStr = Annotated[HostPort, PlainValidator(parse_host_port), PlainSerializer(str)]
IfName = Annotated[str, PlainValidator(parse_ifname)]
