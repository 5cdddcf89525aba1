"""The IPVS table as plain values: virtual services and their destinations.

Shared by the pure reconciler (desired vs actual) and the netlink driver (which
reads and writes the kernel's table in these terms). No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

IPAddress = IPv4Address | IPv6Address

FORWARDS = ("nat", "tun", "dr")  # kernel codes 0 (masq), 2 (tunnel), 3 (route)
TUNNELS = ("ipip", "gue", "gre")  # kernel codes 0, 1, 2 (Linux 5.3 and later)
PROTOCOLS = ("tcp", "udp", "sctp", "fwmark")


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """What identifies a virtual service: protocol, address and port, or a firewall mark.

    `family` is 4 or 6 (for fwmark services too: the mark matches one family)."""

    protocol: str
    address: IPAddress | None = None
    port: int = 0
    fwmark: int = 0
    family: int = 4
    # Compared and hashed as one tuple of plain values: tables of 1,000 services are
    # compared every few seconds, and ipaddress compares in Python.
    _id: tuple[str, int, int, int, int] = field(
        default=("", 0, 0, 0, 0), init=False, repr=False, compare=False
    )
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        address = 0 if self.address is None else int(self.address)
        ident = (self.protocol, address, self.port, self.fwmark, self.family)
        object.__setattr__(self, "_id", ident)
        object.__setattr__(self, "_hash", hash(ident))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not ServiceKey:
            return NotImplemented
        return self._id == other._id

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        if self.protocol == "fwmark":
            return f"FWM {self.fwmark}" + (" IPv6" if self.family == 6 else "")
        host = f"[{self.address}]" if self.family == 6 else str(self.address)
        return f"{self.protocol.upper()} {host}:{self.port}"


@dataclass(frozen=True, slots=True, order=True)
class DestKey:
    address: IPAddress
    port: int = 0  # 0 for the destinations of a fwmark service
    # As ServiceKey: one tuple of plain values, hashed once (10,000 destinations).
    _id: tuple[int, int, int] = field(default=(0, 0, 0), init=False, repr=False, compare=False)
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ident = (self.address.version, int(self.address), self.port)
        object.__setattr__(self, "_id", ident)
        object.__setattr__(self, "_hash", hash(ident))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not DestKey:
            return NotImplemented
        return self._id == other._id

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Dest:
    key: DestKey
    weight: int = 1
    forward: str = "dr"
    upper_threshold: int = 0  # 0: no limit
    lower_threshold: int = 0
    tunnel: str = "ipip"  # encapsulation of forward = "tun"
    tunnel_port: int = 0  # the UDP port of a gue tunnel
    # What the kernel counts; read with the table, never written, never compared.
    active_conns: int = field(default=0, compare=False)
    inactive_conns: int = field(default=0, compare=False)
    _id: tuple[object, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ident = (
            self.key._id,
            self.weight,
            self.forward,
            self.upper_threshold,
            self.lower_threshold,
            self.tunnel,
            self.tunnel_port,
        )
        object.__setattr__(self, "_id", ident)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Dest:
            return NotImplemented
        return self._id == other._id

    def __hash__(self) -> int:
        return hash(self._id)


@dataclass(frozen=True, slots=True)
class VirtualService:
    key: ServiceKey
    scheduler: str = "wlc"
    persistence: int = 0  # seconds; 0: not persistent
    netmask: int = 32  # persistence granularity as a prefix length (128 for IPv6)
    flags: frozenset[str] = frozenset()  # sh-fallback, sh-port, mh-fallback, mh-port
    dests: dict[DestKey, Dest] = field(default_factory=dict, compare=True, hash=False)

    def settings(self) -> tuple[str, int, int, frozenset[str]]:
        """What `ipvsadm -E` can change in place."""
        return (self.scheduler, self.persistence, self.netmask, self.flags)


Table = dict[ServiceKey, VirtualService]
