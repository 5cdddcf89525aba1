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

    def __str__(self) -> str:
        if self.protocol == "fwmark":
            return f"FWM {self.fwmark}" + (" IPv6" if self.family == 6 else "")
        host = f"[{self.address}]" if self.family == 6 else str(self.address)
        return f"{self.protocol.upper()} {host}:{self.port}"


@dataclass(frozen=True, slots=True, order=True)
class DestKey:
    address: IPAddress
    port: int = 0  # 0 for the destinations of a fwmark service
    # Hashed once: tables of 10,000 destinations are built and compared every few seconds.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.address, self.port)))

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


@dataclass(frozen=True, slots=True)
class Service:
    key: ServiceKey
    scheduler: str = "wlc"
    persistence: int = 0  # seconds; 0: not persistent
    netmask: int = 32  # persistence granularity as a prefix length (128 for IPv6)
    flags: frozenset[str] = frozenset()  # sh-fallback, sh-port, mh-fallback, mh-port
    dests: dict[DestKey, Dest] = field(default_factory=dict, compare=True, hash=False)

    def settings(self) -> tuple[str, int, int, frozenset[str]]:
        """What `ipvsadm -E` can change in place."""
        return (self.scheduler, self.persistence, self.netmask, self.flags)


Table = dict[ServiceKey, Service]
