"""The status of a director, as `hapair status --json`, `GET /api/status`, the CLI's
table and the metrics read it: its one definition.

TypedDicts, so the JSON is the object itself (nothing to convert on the way out), and
every reader is checked against the same shape. The contract's fields come first in
each; the rest are hapair's additions (README, "Using it").
"""

from __future__ import annotations

from typing import Any, TypedDict


class LinkStatus(TypedDict):
    type: str  # udp | serial
    name: str  # the interface or the device
    alive: bool
    last_heard: float | None  # seconds ago


class PeerStatus(TypedDict):
    node: str | None
    state: str | None
    alive: bool
    last_heard: float | None  # seconds ago, on any link
    links: list[LinkStatus]
    priority: int | None
    since: float | None  # UNIX time this node first heard the peer in its current state


class VipStatus(TypedDict):
    address: str
    interface: str
    held: bool


class SyncStatus(TypedDict):
    enabled: bool
    role: str | None  # master | backup, None when off


class ProbeStatus(TypedDict):
    ok: bool | None  # None: the attempt failed for a reason of this host's
    reason: str
    latency_ms: float


class Transition(TypedDict):
    up: bool
    time: float
    reason: str


class RealServerStatus(TypedDict):
    address: str
    port: int
    weight: int
    healthy: bool
    admin: str  # enabled | drained | disabled
    in_ipvs: bool
    active_conns: int
    inactive_conns: int
    probe: ProbeStatus | None
    history: list[Transition]  # the last up/down transitions


class ServiceStatus(TypedDict):
    name: str
    address: str | None
    port: int | None
    protocol: str
    healthy: int
    quorum_ok: bool
    real_servers: list[RealServerStatus]
    fwmark: int | None
    scheduler: str
    forward: str
    sorry_server: bool  # the sorry server stands in


class HealthStatus(TypedDict):
    ok: bool
    failing: dict[str, str]  # check -> reason


class HeartbeatCounts(TypedDict):
    sent: int
    received: int
    dropped: dict[str, int]  # reason -> count


class AlertsStatus(TypedDict):
    queued: int
    recent: list[dict[str, Any]]


class ReloadStatus(TypedDict):
    time: float
    ok: bool
    error: str | None


class Status(TypedDict):
    node: str
    state: str
    priority: int
    since: float  # UNIX time of the last state change
    peer: PeerStatus
    vips: list[VipStatus]
    sync: SyncStatus
    services: list[ServiceStatus]
    health: HealthStatus
    heartbeats: HeartbeatCounts
    preempt_hold: str | None
    timer_late_max_ms: float
    alerts: AlertsStatus
    reload: ReloadStatus | None
