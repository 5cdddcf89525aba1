"""The status JSON as the table `hapair status` prints: the HA state on top, then the
links, the VIPs, the services and their real servers."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hapair.status import ServiceStatus, Status


FORWARD_NAMES = {"dr": "Route", "nat": "Masq", "tun": "Tunnel"}  # as ipvsadm -Ln prints them


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _since(when: float | None, now: float) -> str:
    if not when:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{stamp} ({_age(max(0.0, now - when))} ago)"


def _heard(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f}s ago"


def _endpoint(address: Any, port: Any) -> str:
    host = f"[{address}]" if ":" in str(address) else str(address)
    return host if port is None else f"{host}:{port}"


def _config_line(config: Any) -> str:
    """The running config's version (12 digits, as `config history` starts them) and
    whether the peer runs the same."""
    version = str(config.get("version") or "-")[:12]
    in_sync, peer = config.get("in_sync"), config.get("peer_version")
    if in_sync is None:
        return f"config  {version}  (peer not compared)"
    if in_sync:
        return f"config  {version}  peer the same"
    theirs = str(peer)[:12] if peer else "another"
    return f"config  {version}  PEER RUNS {theirs}: OUT OF SYNC (hapair config show)"


def format_status(s: Status, now: float | None = None) -> str:
    """The status JSON as a table an operator reads in one look: the HA state on top,
    then the services and real servers laid out like `ipvsadm -Ln`."""
    now = time.time() if now is None else now
    peer = s.get("peer") or {}
    sync = s.get("sync") or {}
    lines = [
        f"{s.get('node')}  {s.get('state')}  priority {s.get('priority')}  "
        f"since {_since(s.get('since'), now)}",
        f"peer  {peer.get('node') or '-'}  "
        + (
            f"{peer.get('state') or '-'}  priority {peer.get('priority') or '-'}  alive, "
            f"heard {_heard(peer.get('last_heard'))}  since {_since(peer.get('since'), now)}"
            if peer.get("alive")
            else f"DEAD (last heard {_heard(peer.get('last_heard'))})"
        ),
    ]
    for i, link in enumerate(peer.get("links", [])):
        lines.append(
            f"{'links' if i == 0 else '':6}{link.get('type')} {link.get('name')}  "
            f"{'up' if link.get('alive') else 'DOWN'}  heard {_heard(link.get('last_heard'))}"
        )
    vips = s.get("vips", [])
    for i, vip in enumerate(vips):
        lines.append(
            f"{'VIPs' if i == 0 else '':6}{vip.get('address')} on {vip.get('interface')}  "
            f"{'held' if vip.get('held') else 'not held'}"
        )
    if not vips:
        lines.append("VIPs  none")
    lines.append(f"sync  {sync.get('role') if sync.get('enabled') else 'off'}")
    lines.append(_config_line(s.get("config") or {}))
    health = s.get("health") or {}
    for check, reason in (health.get("failing") or {}).items():
        lines.append(f"FAILING  {check}: {reason}")
    reload = s.get("reload")
    if reload is not None and reload.get("ok") is False:
        problems = str(reload.get("error") or "").splitlines() or ["?"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        lines.append(
            f"RELOAD REFUSED  {_since(reload.get('time'), now)}: {problems[0]}{more}; "
            "running on the config before"
        )
    alerts = s.get("alerts")
    if alerts is not None:
        lines.append(f"alerts  {alerts.get('queued', 0)} queued")
    checker = s.get("checker")
    if checker and (checker.get("state") != "stopped" or checker.get("restarts")):
        line = f"checker  {checker.get('state')}"
        if checker.get("pid"):
            line += f", pid {checker['pid']}"
        line += f", {checker.get('probes', 0)} probes"
        last = checker.get("last_restart")
        if checker.get("restarts") and last:
            line += (
                f"; {checker['restarts']} restart(s), the last {_since(last.get('time'), now)}:"
                f" {last.get('reason')}"
            )
        lines.append(line)
    services = s.get("services", [])
    if services:
        lines += [
            "",
            "Prot LocalAddress:Port Scheduler Flags",
            f"  -> {'RemoteAddress:Port':<28} {'Forward':<7} {'Weight':<6} "
            f"{'ActiveConn':<10} {'InActConn':<10} {'Health':<6} Admin",
        ]
    for svc in services:
        lines.append(_service_line(svc))
        forward = FORWARD_NAMES.get(svc.get("forward", ""), svc.get("forward") or "-")
        for rs in svc.get("real_servers", []):
            in_ipvs = rs.get("in_ipvs", True)
            cells = [
                _endpoint(rs.get("address"), rs.get("port")),
                forward if in_ipvs else "-",
                rs.get("weight") if in_ipvs else "-",
                rs.get("active_conns", "-") if in_ipvs else "-",
                rs.get("inactive_conns", "-") if in_ipvs else "-",
                "up" if rs.get("healthy") else "DOWN",
            ]
            cells = ["-" if c is None else c for c in cells]
            lines.append(
                f"  -> {cells[0]:<28} {cells[1]:<7} {cells[2]!s:<6} {cells[3]!s:<10} "
                f"{cells[4]!s:<10} {cells[5]:<6} {rs.get('admin', 'enabled')}"
                + ("" if in_ipvs else "  (not in IPVS)")
            )
    return "\n".join(lines)


def _service_line(svc: ServiceStatus) -> str:
    if svc.get("fwmark") is not None:
        where = f"FWM  {svc['fwmark']}"
    else:
        protocol = str(svc.get("protocol", "")).upper()
        where = f"{protocol:<4} {_endpoint(svc.get('address'), svc.get('port'))}"
    total = len(svc.get("real_servers", []))
    notes = [f"{svc.get('name')}: {svc.get('healthy', '-')} of {total} healthy"]
    if not svc.get("quorum_ok", True):
        notes.append("QUORUM LOST")
    if svc.get("sorry_server"):
        notes.append("sorry server in use")
    scheduler = svc.get("scheduler") or "-"
    return f"{where} {scheduler}  ({', '.join(notes)})"
