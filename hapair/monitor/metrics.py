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
        alerts = s.get("alerts") or {}
        if "queued" in alerts:
            yield GaugeMetricFamily(
                "hapair_alerts_queued", "alerts waiting to be delivered", alerts["queued"]
            )

    def _services(self, services: list[ServiceStatus]) -> Iterator[Metric]:
        svc_labels, rs_labels = ["service"], ["service", "server"]
        healthy_count = GaugeMetricFamily(
            "hapair_service_healthy_servers", "real servers healthy", labels=svc_labels
        )
        quorum = GaugeMetricFamily(
            "hapair_service_quorum_ok", "1 while the service has its quorum", labels=svc_labels
        )
        healthy = GaugeMetricFamily(
            "hapair_real_server_healthy", "the probes' verdict: 1 up, 0 down", labels=rs_labels
        )
        weight = GaugeMetricFamily(
            "hapair_real_server_weight", "weight in IPVS (0: drained)", labels=rs_labels
        )
        in_ipvs = GaugeMetricFamily(
            "hapair_real_server_in_ipvs", "1 while in the IPVS table", labels=rs_labels
        )
        admin = GaugeMetricFamily(
            "hapair_real_server_admin",
            "1 for the operator's setting",
            labels=[*rs_labels, "admin"],
        )
        probe_ok = GaugeMetricFamily(
            "hapair_probe_success", "the last probe: 1 passed, 0 failed", labels=rs_labels
        )
        probe_latency = GaugeMetricFamily(
            "hapair_probe_latency_seconds", "how long the last probe took", labels=rs_labels
        )
        active = GaugeMetricFamily(
            "hapair_ipvs_active_connections", "IPVS ActiveConn", labels=rs_labels
        )
        inactive = GaugeMetricFamily(
            "hapair_ipvs_inactive_connections", "IPVS InActConn", labels=rs_labels
        )
        for svc in services:
            name = str(svc.get("name"))
            healthy_count.add_metric([name], svc.get("healthy", 0))
            quorum.add_metric([name], bool(svc.get("quorum_ok", True)))
            for rs in svc.get("real_servers", []):
                labels = [name, _server(rs)]
                healthy.add_metric(labels, bool(rs.get("healthy")))
                weight.add_metric(labels, rs.get("weight") or 0)
                in_ipvs.add_metric(labels, bool(rs.get("in_ipvs")))
                for setting in ("enabled", "drained", "disabled"):
                    admin.add_metric([*labels, setting], rs.get("admin") == setting)
                probe = rs.get("probe")
                if probe:
                    probe_ok.add_metric(labels, bool(probe.get("ok")))
                    if probe.get("latency_ms") is not None:
                        probe_latency.add_metric(labels, probe["latency_ms"] / 1000)
                if rs.get("active_conns") is not None:
                    active.add_metric(labels, rs["active_conns"])
                if rs.get("inactive_conns") is not None:
                    inactive.add_metric(labels, rs["inactive_conns"])
        yield from (healthy_count, quorum, healthy, weight, in_ipvs, admin)
        yield from (probe_ok, probe_latency, active, inactive)


class Metrics:
    """A registry of its own (not the process-global one): the status and the process."""

    def __init__(self, status: StatusOf) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StatusCollector(status))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
