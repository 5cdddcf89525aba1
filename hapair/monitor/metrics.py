"""`/metrics`: the agent's status as Prometheus metrics, read fresh at every scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from hapair.status import RealServerStatus, ServiceStatus, Status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("INIT", "BACKUP", "MASTER", "FAULT", "STOPPED")
SYNC_ROLES = ("master", "backup")

StatusOf = Callable[[], Status]


def _server(rs: RealServerStatus) -> str:
    address = str(rs.get("address"))
    address = f"[{address}]" if ":" in address else address
    return address if rs.get("port") is None else f"{address}:{rs['port']}"


class StatusCollector(Collector):
    def __init__(self, status: StatusOf) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        node = str(s.get("node"))
        state = GaugeMetricFamily(
            "hapair_node_state", "1 for this node's current HA state", labels=["state"]
        )
        for name in STATES:
            state.add_metric([name], 1.0 if s.get("state") == name else 0.0)
        yield state
        yield GaugeMetricFamily("hapair_node_priority", "election priority", s.get("priority", 0))
        yield GaugeMetricFamily(
            "hapair_node_state_since_seconds",
            "Unix time of the last state change",
            s.get("since", 0),
        )
        info = GaugeMetricFamily("hapair_node_info", "this node's name", labels=["node"])
        info.add_metric([node], 1.0)
        yield info

        peer = s.get("peer") or {}
        yield GaugeMetricFamily(
            "hapair_peer_alive", "1 while the peer is heard on any link", bool(peer.get("alive"))
        )
        peer_state = GaugeMetricFamily(
            "hapair_peer_state", "1 for the state the peer last announced", labels=["state"]
        )
        for name in STATES:
            peer_state.add_metric([name], 1.0 if peer.get("state") == name else 0.0)
        yield peer_state
        link_alive = GaugeMetricFamily(
            "hapair_link_alive", "1 while heartbeats arrive on this link", labels=["type", "link"]
        )
        link_heard = GaugeMetricFamily(
            "hapair_link_last_heard_seconds",
            "seconds since the newest heartbeat on this link (absent: never heard)",
            labels=["type", "link"],
        )
        for link in peer.get("links", []):
            labels = [str(link.get("type")), str(link.get("name"))]
            link_alive.add_metric(labels, bool(link.get("alive")))
            heard = link.get("last_heard")
            if heard is not None:
                link_heard.add_metric(labels, heard)
        yield link_alive
        yield link_heard

        vip_held = GaugeMetricFamily(
            "hapair_vip_held", "1 while this node holds the VIP", labels=["address", "interface"]
        )
        for vip in s.get("vips", []):
            vip_held.add_metric([str(vip.get("address")), str(vip.get("interface"))], vip["held"])
        yield vip_held
        sync = s.get("sync") or {}
        sync_role = GaugeMetricFamily(
            "hapair_sync_role", "1 for the IPVS sync daemon role now", labels=["role"]
        )
        for role in SYNC_ROLES:
            sync_role.add_metric([role], 1.0 if sync.get("role") == role else 0.0)
        yield sync_role

        heartbeats = s.get("heartbeats") or {}
        yield CounterMetricFamily(
            "hapair_heartbeats_sent", "heartbeats sent (each on every link)", heartbeats.get("sent")
        )
        yield CounterMetricFamily(
            "hapair_heartbeats_received",
            "authentic, fresh heartbeats received",
            heartbeats.get("received"),
        )
        dropped = CounterMetricFamily(
            "hapair_heartbeats_dropped", "heartbeats dropped, by reason", labels=["reason"]
        )
        for reason, count in sorted((heartbeats.get("dropped") or {}).items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield GaugeMetricFamily(
            "hapair_timer_late_max_seconds",
            "the latest any timer fired (CPU starvation)",
            s.get("timer_late_max_ms", 0) / 1000,
        )

        yield from self._services(s.get("services", []))
        checker = s.get("checker") or {}
        yield GaugeMetricFamily(
            "hapair_checker_running",
            "1 while the probes' checker process runs",
            checker.get("state") == "running",
        )
        yield CounterMetricFamily(
            "hapair_checker_restarts",
            "times the checker process failed and was started again",
            checker.get("restarts", 0),
        )
        alerts = s.get("alerts") or {}
        if "queued" in alerts:
            yield GaugeMetricFamily(
                "hapair_alerts_queued", "alerts waiting to be delivered", alerts["queued"]
            )

    def _services(self, services: list[ServiceStatus]) -> Iterator[Metric]:
        per_service = [(_family(name, text, ["service"]), value) for name, text, value in _SVC]
        per_server = [
            (_family(name, text, ["service", "server"]), value) for name, text, value in _RS
        ]
        admin = GaugeMetricFamily(
            "hapair_real_server_admin",
            "1 for the operator's setting",
            labels=["service", "server", "admin"],
        )
        for svc in services:
            name = str(svc.get("name"))
            for family, of_service in per_service:
                family.add_metric([name], of_service(svc))
            for rs in svc.get("real_servers", []):
                labels = [name, _server(rs)]
                for family, of_server in per_server:
                    value = of_server(rs)
                    if value is not None:
                        family.add_metric(labels, value)
                for setting in ("enabled", "drained", "disabled"):
                    admin.add_metric([*labels, setting], rs.get("admin") == setting)
        yield from (family for family, _ in per_service)
        yield from (family for family, _ in per_server[:3])
        yield admin
        yield from (family for family, _ in per_server[3:])


def _family(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=labels)


def _latency(rs: RealServerStatus) -> float | None:
    probe = rs.get("probe")
    latency = probe.get("latency_ms") if probe else None
    return None if latency is None else latency / 1000


# (name, help, value): a service's gauges, then a real server's (None: no sample).
_SVC: tuple[tuple[str, str, Callable[[ServiceStatus], float]], ...] = (
    ("hapair_service_healthy_servers", "real servers healthy", lambda s: s.get("healthy", 0)),
    (
        "hapair_service_quorum_ok",
        "1 while the service has its quorum",
        lambda s: bool(s.get("quorum_ok", True)),
    ),
)
_RS: tuple[tuple[str, str, Callable[[RealServerStatus], float | None]], ...] = (
    (
        "hapair_real_server_healthy",
        "the probes' verdict: 1 up, 0 down",
        lambda rs: bool(rs.get("healthy")),
    ),
    ("hapair_real_server_weight", "weight in IPVS (0: drained)", lambda rs: rs.get("weight") or 0),
    ("hapair_real_server_in_ipvs", "1 while in the IPVS table", lambda rs: bool(rs.get("in_ipvs"))),
    (
        "hapair_probe_success",
        "the last probe: 1 passed, 0 failed",
        lambda rs: bool(p.get("ok")) if (p := rs.get("probe")) else None,
    ),
    ("hapair_probe_latency_seconds", "how long the last probe took", _latency),
    ("hapair_ipvs_active_connections", "IPVS ActiveConn", lambda rs: rs.get("active_conns")),
    ("hapair_ipvs_inactive_connections", "IPVS InActConn", lambda rs: rs.get("inactive_conns")),
)


class Metrics:
    """A registry of its own (not the process-global one): the status and the process."""

    def __init__(self, status: StatusOf) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StatusCollector(status))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
