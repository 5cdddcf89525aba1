"""The configuration schema: one frozen pydantic model per TOML section.

Field-level checks live here (types, ranges, a multicast group that is not
multicast). Rules that relate several fields live in `rules.py`, so that every
broken rule is reported at once with the path of the field it is about.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from hapair.config.checks import PROBE_TIMING_KEYS, Probe, Track
from hapair.config.types import (
    IP,
    Bool,
    Duration,
    EndpointStr,
    FilePath,
    HostPortStr,
    IfName,
    Int,
    IPWithPrefix,
    Line,
    LongDuration,
    Mailbox,
    Section,
)

# Every scheduler the Linux kernel ships (net/netfilter/ipvs/ip_vs_*.c).
SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}
)
SCHEDULER_FLAGS = {"sh-fallback": "sh", "sh-port": "sh", "mh-fallback": "mh", "mh-port": "mh"}
SERIAL_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


# A Unix socket's path holds at most 107 bytes (sun_path, less its terminating NUL).
MAX_SOCKET_PATH = 107
U32 = 0xFFFFFFFF  # the kernel's connection thresholds are 32-bit


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a name: 1-32 letters, digits, '_', '.', '-', starting alphanumeric"
        )
    return value


class Node(Section):
    name: str
    priority: Int = Field(ge=1, le=254)
    control_socket: FilePath | None = None
    state_dir: FilePath = Path("/var/lib/hapair")  # what must outlive the agent: its epoch
    realtime_priority: Int = Field(default=10, ge=0, le=99)  # SCHED_FIFO; 0: normal

    _name = field_validator("name")(_check_name)

    @field_validator("control_socket")
    @classmethod
    def _socket_fits(cls, value: Path | None) -> Path | None:
        if value is not None and len(bytes(value)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"{len(bytes(value))} bytes is longer than a Unix socket's path may be "
                f"({MAX_SOCKET_PATH}); choose a shorter path"
            )
        return value

    @property
    def socket_path(self) -> Path:
        return self.control_socket or Path(f"/run/hapair/{self.name}.sock")


class UdpLink(Section):
    type: Literal["udp"]
    interface: IfName
    group: IP | None = None
    peer: IP | None = None
    port: Int = Field(default=694, ge=1, le=65535)

    @field_validator("group")
    @classmethod
    def _multicast(cls, value: IP | None) -> IP | None:
        if value is not None and not value.is_multicast:
            raise ValueError(f"{value} is not a multicast group (224.0.0.0/4 or ff00::/8)")
        return value

    @field_validator("peer")
    @classmethod
    def _unicast(cls, value: IP | None) -> IP | None:
        if value is not None and (value.is_multicast or value.is_unspecified):
            raise ValueError(f"{value} is not a unicast address; use `group` for multicast")
        return value

    @property
    def name(self) -> str:
        return self.interface


class SerialLink(Section):
    type: Literal["serial"]
    device: FilePath
    baud: Int = 19200

    @field_validator("baud")
    @classmethod
    def _baud(cls, value: int) -> int:
        if value not in SERIAL_BAUDS:
            raise ValueError(f"{value} is not a serial speed; use one of {SERIAL_BAUDS}")
        return value

    @property
    def name(self) -> str:
        return str(self.device)


Link = Annotated[UdpLink | SerialLink, Field(discriminator="type")]


class Cluster(Section):
    id: Int = Field(ge=1, le=255)
    auth_key_file: FilePath
    interval: Duration = 0.2
    deadtime: Duration = 1.0
    warntime: Duration | None = None
    initdead: Duration | None = None
    preempt: Bool = True
    preempt_delay: Duration = 0.0
    links: list[Link] = Field(default_factory=list)

    @property
    def warn_after(self) -> float:
        """Late-heartbeat warning threshold; by default halfway between interval and deadtime."""
        if self.warntime is not None:
            return self.warntime
        return (self.interval + self.deadtime) / 2

    @property
    def initdead_after(self) -> float:
        """How long a starting node waits for a peer; by default twice the deadtime."""
        return self.initdead if self.initdead is not None else 2 * self.deadtime


class Vip(Section):
    address: IPWithPrefix
    interface: IfName
    garp_repeat: Int = Field(default=5, ge=0, le=100)
    garp_interval: Duration = 0.1
    garp_refresh: Duration = 60.0

    @field_validator("address")
    @classmethod
    def _usable(cls, value: Any) -> Any:
        ip = value.ip
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
            raise ValueError(f"{ip} cannot be a virtual IP (multicast, loopback or link-local)")
        shortest = 8 if ip.version == 4 else 16
        if value.network.prefixlen < shortest:
            raise ValueError(
                f"/{value.network.prefixlen}: the kernel adds an on-link route for the VIP's "
                f"prefix, and /{value.network.prefixlen} would cover more than a LAN; give the "
                f"prefix of the VIP's network (/{shortest} or longer, e.g. /24)"
            )
        return value


class Sync(Section):
    enabled: Bool = True
    interface: IfName | None = None
    sync_id: Int | None = Field(default=None, ge=0, le=255)
    maxlen: Int | None = Field(default=None, ge=1, le=65535)
    group: IP | None = None
    port: Int | None = Field(default=None, ge=1, le=65535)
    ttl: Int | None = Field(default=None, ge=1, le=255)
    # A recovering node with preempt = true learns the MASTER's connections this long
    # (less once they stop coming) before it takes the VIPs back; 0 = at once.
    warmup: Duration = 10.0

    @field_validator("group")
    @classmethod
    def _multicast(cls, value: IP | None) -> IP | None:
        if value is not None and not value.is_multicast:
            raise ValueError(f"{value} is not a multicast group")
        return value


class RealServer(Section):
    address: IP
    port: Int | None = Field(default=None, ge=1, le=65535)
    weight: Int = Field(default=1, ge=0, le=65535)
    upper_threshold: Int = Field(default=0, ge=0, le=U32)  # connections; 0 = no limit
    lower_threshold: Int = Field(default=0, ge=0, le=U32)  # back in service below this
    probe: Probe | None = None


class Service(Section):
    name: str
    protocol: Literal["tcp", "udp", "sctp", "fwmark"]
    address: IP | None = None
    port: Int | None = Field(default=None, ge=0, le=65535)
    fwmark: Int | None = Field(default=None, ge=1, le=U32)
    scheduler: str = "wlc"
    scheduler_flags: list[str] = Field(default_factory=list)
    forward: Literal["dr", "nat", "tun"] = "dr"
    tunnel: Literal["ipip", "gue", "gre"] = "ipip"  # with forward = "tun"
    tunnel_port: Int | None = Field(default=None, ge=1, le=65535)  # gue only
    persistence: LongDuration = 0.0
    persistence_netmask: Int | None = Field(default=None, ge=0, le=128)  # prefix length
    quorum: Int = Field(default=1, ge=0, le=65535)
    sorry_server: EndpointStr | None = None
    on_failure: Literal["remove", "inhibit"] = "remove"
    probe: Probe | None = None
    probe_start: Literal["up", "down"] = "up"  # until probed: serve, or wait for `rise`
    real_servers: list[RealServer] = Field(default_factory=list)

    _name = field_validator("name")(_check_name)

    @model_validator(mode="before")
    @classmethod
    def _inherit_probe(cls, data: Any) -> Any:
        """A server's `probe = {...}` overrides the service's probe key by key;
        of a different type, it keeps only the service's timing keys."""
        if not isinstance(data, dict) or not isinstance(data.get("probe"), dict):
            return data
        base = data["probe"]
        servers = data.get("real_servers")
        if not isinstance(servers, list):
            return data
        merged = []
        for server in servers:
            override = server.get("probe") if isinstance(server, dict) else None
            if isinstance(override, dict):
                same = override.get("type", base.get("type")) == base.get("type")
                inherited = base if same else {k: base[k] for k in PROBE_TIMING_KEYS if k in base}
                server = {**server, "probe": {**inherited, **override}}
            merged.append(server)
        return {**data, "real_servers": merged}

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        if value not in SCHEDULERS:
            raise ValueError(
                f"{value!r} is not an IPVS scheduler; use one of {', '.join(sorted(SCHEDULERS))}"
            )
        return value

    @field_validator("scheduler_flags")
    @classmethod
    def _flags(cls, value: list[str]) -> list[str]:
        for flag in value:
            if flag not in SCHEDULER_FLAGS:
                raise ValueError(f"{flag!r} is not a scheduler flag; use {sorted(SCHEDULER_FLAGS)}")
        return value

    @property
    def label(self) -> str:
        if self.protocol == "fwmark":
            return f"FWM {self.fwmark}"
        host = f"[{self.address}]" if self.address and self.address.version == 6 else self.address
        return f"{self.protocol.upper()} {host}:{self.port}"


class Email(Section):
    smtp: HostPortStr
    from_: Mailbox = Field(alias="from")
    to: list[Mailbox] = Field(min_length=1, max_length=100)
    starttls: Bool = False
    username: Line | None = None
    password_file: FilePath | None = None


class Pager(Section):
    url: str
    timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if (
            not value.isprintable()
            or len(value) > 2048
            or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value)
        ):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value


class Scripts(Section):
    on_master: Line | None = None
    on_backup: Line | None = None
    on_fault: Line | None = None
    timeout: Duration = 10.0

    @field_validator("on_master", "on_backup", "on_fault")
    @classmethod
    def _command_line(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a command line: {exc}") from None
            if not argv:
                raise ValueError("an empty command line")
        return value


class Alerts(Section):
    min_interval: Duration = 60.0
    spool_dir: FilePath | None = None  # default: <node.state_dir>/alerts
    email: Email | None = None
    pager: Pager | None = None
    scripts: Scripts | None = None

    def spool_path(self, state_dir: Path) -> Path:
        return self.spool_dir or state_dir / "alerts"


class Monitor(Section):
    listen: HostPortStr
    tls_cert: FilePath
    tls_key: FilePath
    users_file: FilePath
    metrics_listen: HostPortStr | None = None
    # Connections at once, and from one address; more are closed at accept.
    max_connections: Int = Field(default=64, ge=1, le=65535)
    max_connections_per_client: Int = Field(default=16, ge=1, le=65535)


SyncCount = Annotated[Int, Field(ge=0, le=65535)]


class Sysctl(Section):
    """Kernel settings hapair writes at start and on reload; only the keys given."""

    ip_forward: Bool | None = None  # NAT directors route the real servers' replies
    conntrack: Bool | None = None  # net.ipv4.vs.conntrack: netfilter state for IPVS traffic
    expire_nodest_conn: Bool | None = None  # drop a removed server's connections at once
    expire_quiescent_template: Bool | None = None  # persistence ends on a weight-0 server
    # sync after N packets, then every M (the kernel takes 0..65535)
    sync_threshold: tuple[SyncCount, SyncCount] | None = None
    sync_refresh_period: Duration | None = None
    sync_retries: Int | None = Field(default=None, ge=0, le=3)


class Config(Section):
    node: Node
    cluster: Cluster
    track: list[Track] = Field(default_factory=list)
    vips: list[Vip] = Field(default_factory=list)
    sync: Sync | None = None
    services: list[Service] = Field(default_factory=list)
    sysctl: Sysctl | None = None
    alerts: Alerts | None = None
    monitor: Monitor | None = None
    # Where the config came from, set by the loader (hapair.config), not TOML keys.
    _version: str | None = PrivateAttr(default=None)
    _pair: bool = PrivateAttr(default=False)
    _peer_node: str | None = PrivateAttr(default=None)
    _peer_monitor: str | None = PrivateAttr(default=None)

    @property
    def version(self) -> str | None:
        """SHA-256 (hex) of the file's bytes; None for a config not read from text."""
        return self._version

    @property
    def pair(self) -> bool:
        """Whether the file describes the whole pair (`[[nodes]]`), not one director."""
        return self._pair

    @property
    def peer_node(self) -> str | None:
        """The other `[[nodes]]` entry's name in a pair file; None with `[node]`."""
        return self._peer_node

    @property
    def peer_monitor(self) -> str | None:
        """Where the peer's monitor listens (host:port), from a pair file's entry."""
        return self._peer_monitor

    def shared_digest(self) -> bytes:
        """8 bytes of a hash of what both nodes of a pair must agree on (heartbeats
        carry it, so a difference is noticed): timing, VIPs, sync, services."""
        shared = self.model_dump(
            mode="json",
            include={"cluster", "vips", "sync", "services"},
            exclude={"cluster": {"auth_key_file", "links"}},
        )
        text = json.dumps(shared, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).digest()[:8]
