"""The checks of the configuration: a director's own health (`[[track]]`) and its real
servers' probes (`probe` of a service or a real server), one frozen model per type."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_serializer, field_validator

from hapair.config.types import (
    IP,
    Bool,
    Duration,
    EndpointStr,
    Host,
    HostHeader,
    IfName,
    Int,
    Line,
    Section,
)

# Probe keys that describe timing; a per-server override of another probe type keeps them.
PROBE_TIMING_KEYS = ("interval", "timeout", "rise", "fall")


class _Check(Section):
    interval: Duration = 1.0
    timeout: Duration = 1.0
    rise: Int = Field(default=2, ge=1, le=100)
    fall: Int = Field(default=3, ge=1, le=100)


class IcmpTrack(_Check):
    type: Literal["icmp"]
    target: IP


class TcpTrack(_Check):
    type: Literal["tcp"]
    target: EndpointStr

    @field_validator("target")
    @classmethod
    def _port(cls, value: Any) -> Any:
        if value.port is None:
            raise ValueError(f"{value}: a tcp check needs a port, e.g. '10.0.0.254:22'")
        return value


class InterfaceTrack(_Check):
    type: Literal["interface"]
    interface: IfName


class ScriptTrack(_Check):
    type: Literal["script"]
    command: Line = Field(min_length=1)


Track = Annotated[IcmpTrack | TcpTrack | InterfaceTrack | ScriptTrack, Field(discriminator="type")]


class _Probe(Section):
    interval: Duration = 2.0
    timeout: Duration = 1.0
    rise: Int = Field(default=2, ge=1, le=100)
    fall: Int = Field(default=3, ge=1, le=100)
    port: Int | None = Field(default=None, ge=1, le=65535)


class IcmpProbe(_Probe):
    type: Literal["icmp"]


class TcpProbe(_Probe):
    type: Literal["tcp"]


def _parse_status(value: Any) -> tuple[int, int]:
    """`200` or `"200-399"` -> an inclusive range of HTTP status codes."""
    low: Any
    high: Any
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\d{3}(-\d{3})?", value.strip()):
        low, _, high = value.strip().partition("-")
        low, high = int(low), int(high or low)
    else:
        raise ValueError(f"{value!r}: expected a status code (200) or a range ('200-399')")
    if not 100 <= low <= high <= 599:
        raise ValueError(f"{value!r}: status codes are 100..599, low to high")
    return (low, high)


class HttpProbe(_Probe):
    type: Literal["http", "https"]
    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = "GET"
    path: str = "/"
    host: HostHeader | None = None  # the Host header; may carry a port ("www.example.org:8080")
    expect_status: tuple[int, int] = (200, 299)
    body_regex: Line | None = None
    verify_tls: Bool = False
    sni: Host | None = None

    @field_validator("expect_status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> tuple[int, int]:
        return _parse_status(value)

    @field_serializer("expect_status")
    def _dump_status(self, value: tuple[int, int]) -> int | str:
        """As it is written (200, or '200-399'): a dumped probe reads back the same."""
        low, high = value
        return low if low == high else f"{low}-{high}"

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if (
            not value.startswith("/")
            or not (value.isascii() and value.isprintable())
            or (" " in value or len(value) > 2048)
        ):
            raise ValueError(
                f"{value!r}: a path starts with '/' and is printable ASCII without spaces"
            )
        return value

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value


class SmtpProbe(_Probe):
    type: Literal["smtp"]
    starttls: Bool = False
    helo_name: Host = "hapair"


class DnsProbe(_Probe):
    type: Literal["dns"]
    query: Host
    qtype: Literal["A", "AAAA", "CNAME", "MX", "NS", "SOA", "TXT", "SRV", "PTR"] = "A"


class ScriptProbe(_Probe):
    type: Literal["script"]
    command: Line = Field(min_length=1)


Probe = Annotated[
    IcmpProbe | TcpProbe | HttpProbe | SmtpProbe | DnsProbe | ScriptProbe,
    Field(discriminator="type"),
]
