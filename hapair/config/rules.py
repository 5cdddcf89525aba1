"""Rules between fields of a schema-valid configuration.

Each rule reports a `Problem` at the path of the field an operator must change,
and all of them run, so `hapair check` lists every mistake at once. Reading the
auth key file's mode is the only look at the system; nothing here changes it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from hapair.config.checks import Probe
from hapair.config.model import SCHEDULER_FLAGS, Config, SerialLink, Service, UdpLink
from hapair.config.types import IPAddress

MIN_KEY_BYTES = 16
MIN_INTERVAL = 0.01  # s: heartbeats, probes and checks
MIN_GARP_INTERVAL = 0.001  # s between the announcements of a takeover
MIN_GARP_REFRESH = 1.0  # s between the periodic announcements


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def check(cfg: Config) -> list[Problem]:
    return [
        *_timing(cfg),
        *_links(cfg),
        *_auth_key(cfg),
        *_vips(cfg),
        *_sync(cfg),
        *_services(cfg),
        *_checks(cfg),
        *_monitor(cfg),
    ]


def _monitor(cfg: Config) -> Iterator[Problem]:
    m = cfg.monitor
    if m is None or m.metrics_listen is None:
        return
    a, b = m.listen, m.metrics_listen
    wildcard = {"0.0.0.0", "::", "*"}
    if a.port == b.port and (a.host == b.host or a.host in wildcard or b.host in wildcard):
        yield Problem(
            "monitor.metrics_listen",
            f"{b} is where monitor.listen ({a}) already listens; give another port",
        )


def _timing(cfg: Config) -> Iterator[Problem]:
    c = cfg.cluster
    if c.interval < MIN_INTERVAL:
        yield Problem(
            "cluster.interval",
            f"{c.interval:g}s is shorter than {MIN_INTERVAL * 1000:g}ms; heartbeats that often "
            "would keep a core busy",
        )
    if c.deadtime <= c.interval:
        yield Problem(
            "cluster.deadtime",
            f"{c.deadtime:g}s must be longer than interval {c.interval:g}s "
            "(at least 3 intervals is usual), or every late heartbeat is a failover",
        )
    if c.warntime is not None and not c.interval < c.warntime < c.deadtime:
        yield Problem(
            "cluster.warntime",
            f"{c.warntime:g}s must lie between interval {c.interval:g}s "
            f"and deadtime {c.deadtime:g}s",
        )
    if c.initdead is not None and c.initdead < c.deadtime:
        yield Problem(
            "cluster.initdead",
            f"{c.initdead:g}s is shorter than deadtime {c.deadtime:g}s: a starting node would "
            "take over before a running peer could be heard",
        )


def _links(cfg: Config) -> Iterator[Problem]:
    links = cfg.cluster.links
    if not links:
        yield Problem(
            "cluster.links", "at least one heartbeat link ([[cluster.links]]) is required"
        )
    seen: dict[tuple[str, ...], int] = {}
    for i, link in enumerate(links):
        path = f"cluster.links.{i}"
        if isinstance(link, UdpLink):
            if (link.group is None) == (link.peer is None):
                yield Problem(
                    f"{path}.group", "give exactly one of `group` (multicast) or `peer` (unicast)"
                )
            key: tuple[str, ...] = (
                "udp",
                link.interface,
                str(link.group or link.peer),
                str(link.port),
            )
        elif isinstance(link, SerialLink):
            key = ("serial", str(link.device))
        if key in seen:
            yield Problem(path, f"the same link as cluster.links.{seen[key]}")
        seen.setdefault(key, i)


def _auth_key(cfg: Config) -> Iterator[Problem]:
    path = cfg.cluster.auth_key_file
    where = "cluster.auth_key_file"
    try:
        st = os.stat(path)
    except OSError as exc:
        yield Problem(where, f"{path}: {exc.strerror}")
        return
    if not stat.S_ISREG(st.st_mode):
        yield Problem(where, f"{path} is not a regular file")
        return
    if st.st_mode & stat.S_IROTH:
        yield Problem(where, f"{path} is world-readable; chmod 600 {path}")
    try:
        with open(path, "rb") as f:
            size = len(f.read(MIN_KEY_BYTES))
    except OSError as exc:
        yield Problem(where, f"{path}: {exc.strerror}")
        return
    if size < MIN_KEY_BYTES:
        yield Problem(
            where,
            f"{path} holds fewer than {MIN_KEY_BYTES} bytes; "
            f"make one with: head -c 32 /dev/urandom > {path}",
        )


def _vips(cfg: Config) -> Iterator[Problem]:
    seen: dict[object, int] = {}
    for i, vip in enumerate(cfg.vips):
        if vip.address.ip in seen:
            yield Problem(
                f"vips.{i}.address", f"{vip.address.ip} is already vips.{seen[vip.address.ip]}"
            )
        seen.setdefault(vip.address.ip, i)
        if vip.garp_repeat > 0 and vip.garp_interval < MIN_GARP_INTERVAL:
            yield Problem(
                f"vips.{i}.garp_interval",
                f"must be at least {MIN_GARP_INTERVAL * 1000:g}ms when garp_repeat > 0",
            )
        if 0 < vip.garp_refresh < MIN_GARP_REFRESH:
            yield Problem(
                f"vips.{i}.garp_refresh",
                f"{vip.garp_refresh:g}s: 0 (off) or at least {MIN_GARP_REFRESH:g}s; more often "
                "only floods the LAN",
            )


def _sync(cfg: Config) -> Iterator[Problem]:
    if cfg.sync is not None and cfg.sync.enabled and cfg.sync.interface is None:
        yield Problem(
            "sync.interface", "required when sync is enabled (the sync multicast interface)"
        )
    sysctl = cfg.sysctl
    if sysctl is not None and sysctl.sync_threshold is not None:
        threshold, period = sysctl.sync_threshold
        if threshold < 0 or period < 0 or (period and threshold >= period):
            yield Problem(
                "sysctl.sync_threshold",
                "[threshold, period]: sync after `threshold` packets, then every `period`; "
                "threshold must be below period (or period 0)",
            )


def _services(cfg: Config) -> Iterator[Problem]:
    names: dict[str, int] = {}
    virtuals: dict[tuple[object, ...], int] = {}
    vip_addresses = {vip.address.ip for vip in cfg.vips}
    for i, svc in enumerate(cfg.services):
        path = f"services.{i}"
        if svc.name in names:
            yield Problem(
                f"{path}.name", f"{svc.name!r} is already the name of services.{names[svc.name]}"
            )
        names.setdefault(svc.name, i)
        yield from _virtual(svc, path, vip_addresses)
        key = (
            (svc.protocol, svc.fwmark)
            if svc.protocol == "fwmark"
            else (svc.protocol, svc.address, svc.port)
        )
        if key in virtuals:
            yield Problem(path, f"{svc.label} is already services.{virtuals[key]}")
        virtuals.setdefault(key, i)
        yield from _real_servers(svc, path)


def _virtual(svc: Service, path: str, vip_addresses: set[IPAddress]) -> Iterator[Problem]:
    if svc.protocol == "fwmark":
        if svc.fwmark is None:
            yield Problem(f"{path}.fwmark", "required for a fwmark service")
        for key in ("address", "port"):
            if getattr(svc, key) is not None:
                yield Problem(
                    f"{path}.{key}", "a fwmark service has no address or port; the mark selects"
                )
    else:
        if svc.fwmark is not None:
            yield Problem(f"{path}.fwmark", f"only a fwmark service has a mark, not {svc.protocol}")
        if svc.address is None:
            yield Problem(f"{path}.address", f"required for a {svc.protocol} service")
        elif vip_addresses and svc.address not in vip_addresses:
            yield Problem(
                f"{path}.address",
                f"{svc.address} is none of the [[vips]]; only the MASTER must receive its traffic",
            )
        if svc.port is None:
            yield Problem(f"{path}.port", f"required for a {svc.protocol} service")
        elif svc.port == 0 and svc.persistence == 0:
            yield Problem(f"{path}.port", "port 0 (all ports) needs persistence > 0")
    if svc.persistence_netmask is not None:
        if svc.persistence == 0:
            yield Problem(f"{path}.persistence_netmask", "applies only with persistence > 0")
        elif svc.address is not None and svc.address.version == 4 and svc.persistence_netmask > 32:
            yield Problem(f"{path}.persistence_netmask", "an IPv4 prefix length is 0..32")
    if svc.forward != "tun":
        for key in ("tunnel", "tunnel_port"):
            if key in svc.model_fields_set:
                yield Problem(f"{path}.{key}", "applies only with forward = 'tun'")
    elif svc.tunnel == "gue" and svc.tunnel_port is None:
        yield Problem(f"{path}.tunnel_port", "a gue tunnel needs the real servers' UDP port")
    elif svc.tunnel != "gue" and svc.tunnel_port is not None:
        yield Problem(f"{path}.tunnel_port", f"only a gue tunnel has a port, not {svc.tunnel}")
    for j, flag in enumerate(svc.scheduler_flags):
        if SCHEDULER_FLAGS[flag] != svc.scheduler:
            yield Problem(
                f"{path}.scheduler_flags.{j}",
                f"{flag} is a flag of the {SCHEDULER_FLAGS[flag]} scheduler, not {svc.scheduler}",
            )
    if svc.real_servers and svc.quorum > len(svc.real_servers):
        yield Problem(
            f"{path}.quorum",
            f"{svc.quorum} is more than the {len(svc.real_servers)} real servers listed; "
            "the service would never be in quorum",
        )
    if svc.sorry_server is not None:
        yield from _family(svc, svc.sorry_server.address, f"{path}.sorry_server")
        if svc.sorry_server.port is not None and svc.protocol == "fwmark":
            yield Problem(f"{path}.sorry_server", "a fwmark service's servers take no port")
        elif svc.forward != "nat" and svc.sorry_server.port not in (None, svc.port):
            yield Problem(
                f"{path}.sorry_server",
                f"with forward = {svc.forward!r} the port must be the service port {svc.port}",
            )
        if any(rs.address == svc.sorry_server.address for rs in svc.real_servers):
            yield Problem(f"{path}.sorry_server", "is also a real server of this service")
    if svc.probe is not None:
        yield from _probe(svc, svc.probe, f"{path}.probe")


def _real_servers(svc: Service, path: str) -> Iterator[Problem]:
    seen: dict[tuple[object, ...], int] = {}
    for j, rs in enumerate(svc.real_servers):
        where = f"{path}.real_servers.{j}"
        if svc.protocol == "fwmark":
            if rs.port is not None:
                yield Problem(f"{where}.port", "a real server of a fwmark service has no port")
        elif svc.forward != "nat" and rs.port not in (None, svc.port):
            yield Problem(
                f"{where}.port",
                f"{rs.port} differs from the service port {svc.port}; "
                f"with forward = {svc.forward!r} the director cannot change ports (use nat)",
            )
        yield from _family(svc, rs.address, f"{where}.address")
        key = (rs.address, rs.port or svc.port)
        if key in seen:
            yield Problem(where, f"{rs.address} port {key[1]} is already real_servers.{seen[key]}")
        seen.setdefault(key, j)
        if 0 < rs.upper_threshold <= rs.lower_threshold:
            yield Problem(
                f"{where}.lower_threshold",
                f"{rs.lower_threshold} is not below upper_threshold {rs.upper_threshold}",
            )
        if rs.probe is not None:
            yield from _probe(svc, rs.probe, f"{where}.probe")


def _family(svc: Service, address: object, where: str) -> Iterator[Problem]:
    version = getattr(address, "version", None)
    if svc.address is not None and version != svc.address.version and svc.forward != "tun":
        yield Problem(
            where,
            f"IPv{version} server behind an IPv{svc.address.version} service needs forward = 'tun'",
        )


def _probe(svc: Service, probe: Probe, path: str) -> Iterator[Problem]:
    yield from _timeout(probe.interval, probe.timeout, path)
    if svc.protocol == "fwmark" and probe.type not in ("icmp", "script") and probe.port is None:
        yield Problem(
            f"{path}.port", f"a {probe.type} probe of a fwmark service needs a port to probe"
        )


def _checks(cfg: Config) -> Iterator[Problem]:
    for i, track in enumerate(cfg.track):
        yield from _timeout(track.interval, track.timeout, f"track.{i}")


def _timeout(interval: float, timeout: float, path: str) -> Iterator[Problem]:
    if interval < MIN_INTERVAL:
        yield Problem(f"{path}.interval", f"must be at least {MIN_INTERVAL * 1000:g}ms")
    if timeout <= 0:
        yield Problem(f"{path}.timeout", "must be greater than 0")
    elif timeout > interval:
        yield Problem(f"{path}.timeout", f"{timeout:g}s is longer than the interval {interval:g}s")
