"""The status of a director, as `hapair status --json`, `GET /api/status`, the CLI's
table and the metrics read it: its one definition, and how it is put together.

TypedDicts, so the JSON is the object itself (nothing to convert on the way out), and
every reader is checked against the same shape. The contract's fields come first in
each; the rest are hapair's additions (README, "Using it").
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict

from hapair.core.health import Health


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


class ConfigStatus(TypedDict):
    version: str | None  # the running config's: SHA-256 of the file's bytes
    peer_version: str | None  # the peer's, when known (a pair file)
    in_sync: bool | None  # whether the live peer runs the same (None: no live peer)


class LastRestart(TypedDict):
    time: float
    reason: str


class CheckerStatus(TypedDict):
    pid: int | None
    state: str  # stopped (no probes), starting, running, waiting (to be started again)
    probes: int  # distinct probes it runs (services naming the same check share one)
    restarts: int
    last_restart: LastRestart | None


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
    config: ConfigStatus
    checker: CheckerStatus


class HeardConfig(Protocol):
    """The HA core's view of the peer's config (HaNode)."""

    @property
    def settings(self) -> Any: ...  # its whole_file: the digest is of the whole pair file
    @property
    def in_sync(self) -> bool | None: ...
    @property
    def peer_digest(self) -> bytes | None: ...


def config_of(version: str | None, node: HeardConfig, asked: str | None) -> ConfigStatus:
    """The config line of the status. A pair file's heartbeats carry 8 bytes of its
    version (`node.peer_digest`): in sync, the peer's version is ours; otherwise it is
    the one last asked of the peer (`asked`, configure.py) while the heartbeats still
    match it."""
    whole_file, in_sync, digest = node.settings.whole_file, node.in_sync, node.peer_digest
    peer_version = None
    if whole_file and in_sync:
        peer_version = version
    elif whole_file and in_sync is False and asked and digest == bytes.fromhex(asked[:16]):
        peer_version = asked
    return {"version": version, "peer_version": peer_version, "in_sync": in_sync}


def compose(
    core: dict[str, Any],
    *,
    now: float,
    wall: float,
    links: list[str],
    vips: list[tuple[str, str]],
    vips_held: bool,
    syncing: bool,
    services: list[ServiceStatus],
    health: Health,
    timer_late_max: float,
    alerts: AlertsStatus,
    reload: ReloadStatus | None,
    config: ConfigStatus,
    checker: CheckerStatus,
) -> Status:
    """The status from the HA core's own (`HaNode.status`, in loop time `now`; `wall` is
    the UNIX time of the same moment) and what the agent's other parts hold."""
    peer = core["peer"]
    kinds = {name: name.split(":", 1) for name in links}
    peer_since = peer["since_monotonic"]
    master = core["state"] == "MASTER"
    return {
        "node": core["node"],
        "state": core["state"],
        "priority": core["priority"],
        "since": round(wall - (now - core["since_monotonic"]), 3),
        "peer": {
            "node": peer["node"],
            "state": peer["state"],
            "alive": peer["alive"],
            "last_heard": peer["last_heard"],
            "links": [
                {
                    "type": kinds[link["name"]][0],
                    "name": kinds[link["name"]][1],
                    "alive": link["alive"],
                    "last_heard": link["last_heard"],
                }
                for link in peer["links"]
            ],
            "priority": peer["priority"],
            "since": None if peer_since is None else round(wall - (now - peer_since), 3),
        },
        "vips": [{"address": a, "interface": i, "held": vips_held} for a, i in vips],
        "sync": {
            "enabled": syncing,
            "role": None if not syncing else ("master" if master else "backup"),
        },
        "services": services,
        "health": {"ok": health.ok, "failing": dict(health.failing)},
        "heartbeats": core["heartbeats"],
        "preempt_hold": core["preempt_hold"],
        "timer_late_max_ms": round(timer_late_max * 1000, 1),
        "alerts": alerts,
        "reload": reload,
        "config": config,
        "checker": checker,
    }
