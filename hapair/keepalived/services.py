"""keepalived's `virtual_server`s (and `virtual_server_group`s) as hapair services,
their `real_server`s and checkers as real servers and probes."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from hapair.keepalived.parse import Statement
from hapair.keepalived.report import Notes, duration, integer, number

_FORWARD = {"dr": "dr", "nat": "nat", "tun": "tun"}
_PROBES = {
    "http_get": "http",
    "ssl_get": "https",
    "tcp_check": "tcp",
    "smtp_check": "smtp",
    "dns_check": "dns",
    "misc_check": "script",
    "ping_check": "icmp",
}
_QTYPES = {"A", "AAAA", "CNAME", "MX", "NS", "SOA", "TXT", "SRV", "PTR"}
_IGNORED_SERVICE = {
    "ha_suspend": "hapair's services are in IPVS on the MASTER alone already",
    "alpha": "hapair starts every server up until probed (probe_start = 'up')",
    "omega": "hapair does not run quorum scripts",
    "hysteresis": "hapair has no quorum hysteresis",
    "quorum_up": "hapair does not run quorum scripts; it sends the alert service_quorum",
    "quorum_down": "hapair does not run quorum scripts; it sends the alert service_quorum",
    "smtp_alert": "hapair's alerts go to [alerts.email] when it is set",
}
_LOOSE_TIMING = {"delay_before_retry", "warmup"}  # hapair retries at the probe interval


def services(
    vs: list[Statement], groups: dict[str, Statement], notes: Notes
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for st in vs:
        for key in _virtuals(st, groups, notes):
            out.append(_service(st, key, len(out), notes))
    names: set[str] = set()
    for svc in out:  # names unique: the same virtual twice gets -2, -3 ...
        base, n = svc["name"], 1
        while svc["name"] in names:
            n += 1
            svc["name"] = f"{base[:29]}-{n}"
        names.add(svc["name"])
    return out


def _virtuals(
    st: Statement, groups: dict[str, Statement], notes: Notes
) -> list[tuple[str, str, int | None]]:
    """(protocol-or-fwmark, address-or-mark, port) of each virtual `st` stands for."""
    args = st.args
    if len(args) == 2 and args[0].lower() == "fwmark" and args[1].isdigit():
        return [("fwmark", args[1], None)]
    if len(args) == 2 and args[0].lower() == "group":
        group = groups.get(args[1])
        if group is None:
            notes.drop(st, f"no virtual_server_group {args[1]}")
            return []
        found: list[tuple[str, str, int | None]] = []
        for member in group.children:
            found += _member(member, notes)
        return found
    if len(args) == 2 and _address(args[0]) and args[1].isdigit():
        return [("", args[0], int(args[1]))]
    notes.drop(st, "expected ADDRESS PORT, fwmark N or group NAME")
    return []


def _member(st: Statement, notes: Notes) -> list[tuple[str, str, int | None]]:
    words = st.words
    if len(words) == 2 and words[0].lower() == "fwmark" and words[1].isdigit():
        return [("fwmark", words[1], None)]
    if len(words) == 2 and words[1].isdigit():
        if _address(words[0]):
            return [("", words[0], int(words[1]))]
        found = re.fullmatch(r"(\d+\.\d+\.\d+\.)(\d+)-(\d+)", words[0])
        if found and int(found[2]) <= int(found[3]) <= 255:
            first, last = int(found[2]), int(found[3])
            return [("", f"{found[1]}{n}", int(words[1])) for n in range(first, last + 1)]
    notes.drop(st, "expected ADDRESS PORT, ADDRESS-LAST PORT or fwmark N")
    return []


def _address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _service(
    st: Statement, key: tuple[str, str, int | None], index: int, notes: Notes
) -> dict[str, Any]:
    kind, where, port = key
    at = f"services.{index}"
    svc: dict[str, Any] = {"name": _name(kind, where, port), "protocol": kind or "tcp"}
    if kind == "fwmark":
        svc["fwmark"] = int(where)
    else:
        svc["address"], svc["port"] = where, port
    delay_loop = 60.0  # keepalived's default
    servers: list[Statement] = []
    for child in st.children:
        word = child.keyword
        if word == "delay_loop":
            delay_loop = number(notes, child, 0.01, 86400) or delay_loop
        elif word in ("lb_algo", "lvs_sched") and child.args:
            svc["scheduler"] = child.args[0].lower()
        elif word in ("lb_kind", "lvs_method") and child.args:
            forward = _FORWARD.get(child.args[0].lower())
            if forward is None:
                notes.drop(child, "hapair forwards by dr, nat or tun", at=at)
            else:
                svc["forward"] = forward
        elif word == "protocol" and child.args:
            proto = child.args[0].lower()
            if kind == "fwmark":
                notes.drop(child, "a fwmark service has no protocol in hapair", changes=False)
            elif proto in ("tcp", "udp", "sctp"):
                svc["protocol"] = proto
            else:
                notes.drop(child, "hapair's protocols are TCP, UDP and SCTP", at=at)
        elif word == "persistence_timeout":
            seconds = number(notes, child, 0, 31536000)
            if seconds is not None:
                svc["persistence"] = duration(seconds)
        elif word == "persistence_granularity" and child.args:
            prefix = _prefix(child.args[0])
            if prefix is None:
                notes.drop(child, "expected a netmask or prefix length", at=at)
            else:
                svc["persistence_netmask"] = prefix
        elif word == "quorum":
            quorum = integer(notes, child, 0, 65535)
            if quorum is not None:
                svc["quorum"] = quorum
        elif word == "sorry_server" and child.args:
            svc["sorry_server"] = _endpoint(child.args)
        elif word == "virtualhost" and child.args:
            svc["_host"] = child.args[0]
        elif word == "real_server":
            servers.append(child)
        elif word in _IGNORED_SERVICE:
            notes.drop(child, _IGNORED_SERVICE[word], changes=word != "smtp_alert")
        else:
            notes.drop(child, "no hapair equivalent", at=at)
    host = svc.pop("_host", None)
    real = [
        _real_server(s, svc, delay_loop, host, f"{at}.real_servers.{i}", notes)
        for i, s in enumerate(servers)
    ]
    _share_probe(svc, real)
    inhibit = [s for s in servers if any(c.keyword == "inhibit_on_failure" for c in s.children)]
    if inhibit and len(inhibit) < len(servers):
        first = next(s for s in servers if s not in inhibit)
        notes.drop(
            first,
            "without inhibit_on_failure: hapair's on_failure is the service's, inhibit",
            at=at,
        )
    if svc.get("forward", "dr") != "nat" and "sorry_server" in svc:
        address, _, sorry_port = svc["sorry_server"].rpartition(":")
        if kind == "fwmark" or sorry_port != str(port):
            svc["sorry_server"] = address.strip("[]")
    if real and svc.get("quorum", 1) > len(real):
        notes.comment(at, "LOOK: quorum is more than the real servers listed")
    svc["real_servers"] = real
    return svc


def _name(kind: str, where: str, port: int | None) -> str:
    raw = f"fwmark-{where}" if kind == "fwmark" else f"{where}-{port}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", raw).strip("-")[:32] or "service"


def _prefix(text: str) -> int | None:
    try:
        return int(text) if text.isdigit() else ipaddress.ip_network(f"0.0.0.0/{text}").prefixlen
    except ValueError:
        return None


def _endpoint(args: tuple[str, ...]) -> str:
    host = f"[{args[0]}]" if ":" in args[0] else args[0]
    return f"{host}:{args[1]}" if len(args) > 1 and args[1].isdigit() else args[0]


def _real_server(
    st: Statement,
    svc: dict[str, Any],
    delay_loop: float,
    host: str | None,
    at: str,
    notes: Notes,
) -> dict[str, Any]:
    server: dict[str, Any] = {"address": st.args[0] if st.args else ""}
    if len(st.args) > 1 and st.args[1].isdigit() and svc["protocol"] != "fwmark":
        server["port"] = int(st.args[1])
    probes: list[dict[str, Any]] = []
    for child in st.children:
        word = child.keyword
        if word == "weight":
            weight = integer(notes, child, 0, 65535)
            if weight is not None:
                server["weight"] = weight
        elif word == "inhibit_on_failure":
            svc["on_failure"] = "inhibit"  # hapair's is per service
        elif word.endswith("_check") or word.endswith("_get"):
            if word not in _PROBES:
                notes.drop(child, f"hapair has no {child.words[0]}; give a probe by hand", at=at)
            elif probes:
                notes.drop(child, "hapair runs one probe per real server", at=at)
            else:
                probes.append(_probe(child, _PROBES[word], delay_loop, host, at, notes))
        elif word in ("notify_up", "notify_down"):
            notes.drop(child, "hapair runs no script per real server; it alerts", at=at)
        else:
            notes.drop(child, "no hapair equivalent", at=at)
    if probes:
        server["probe"] = probes[0]
    return server


def _probe(
    st: Statement, kind: str, delay_loop: float, host: str | None, at: str, notes: Notes
) -> dict[str, Any]:
    probe: dict[str, Any] = {"type": kind, "interval": duration(delay_loop), "rise": 1}
    timeout, retries = min(5.0, delay_loop), 1  # keepalived's defaults
    given = False
    urls = 0
    for child in st.children:
        word = child.keyword
        if word in ("connect_timeout", "misc_timeout"):
            timeout = number(notes, child, 0.001, 86400) or timeout
            given = True
        elif word in ("retry", "nb_get_retry"):
            value = integer(notes, child, 0, 99)
            retries = retries if value is None else value
        elif word == "connect_port":
            port = integer(notes, child, 1, 65535)
            if port is not None:
                probe["port"] = port
        elif word == "url" and kind in ("http", "https"):
            urls += 1
            if urls > 1:
                notes.drop(child, "hapair checks one url per server", at=at)
            else:
                _url(child, probe, at, notes)
        elif word == "virtualhost" and kind in ("http", "https"):
            host = child.args[0] if child.args else host
        elif word == "helo_name" and kind == "smtp" and child.args:
            probe["helo_name"] = child.args[0]
        elif word == "host" and kind == "smtp":  # the old form: host { connect_port N }
            for inner in child.children:
                if inner.keyword != "connect_port":
                    notes.drop(inner, "hapair probes the real server's own address", at=at)
                elif (port := integer(notes, inner, 1, 65535)) is not None:
                    probe["port"] = port
        elif word == "name" and kind == "dns" and child.args:
            probe["query"] = child.args[0].rstrip(".") or "localhost"
        elif word == "type" and kind == "dns" and child.args:
            qtype = child.args[0].upper()
            if qtype in _QTYPES:
                probe["qtype"] = qtype
            else:
                notes.drop(child, f"hapair asks for {', '.join(sorted(_QTYPES))}", at=at)
        elif word == "misc_path" and kind == "script" and child.args:
            probe["command"] = " ".join(child.args)
        elif word == "misc_dynamic":
            notes.drop(child, "hapair does not set weights from a script's exit code", at=at)
        elif word in _LOOSE_TIMING:
            notes.drop(child, "hapair probes again at the probe interval", changes=False)
        elif word == "enable_sni" and kind == "https":
            probe["_sni"] = True
        elif word in ("connect_ip", "bindto", "bind_port"):
            notes.drop(child, "hapair probes the real server's own address, from its own", at=at)
        else:
            notes.drop(child, "no hapair equivalent", at=at)
    if host is not None and kind in ("http", "https"):
        probe["host"] = host
        if probe.pop("_sni", False):
            probe["sni"] = host.partition(":")[0]
    probe.pop("_sni", None)
    if kind == "dns":
        probe.setdefault("query", "localhost")
        probe.setdefault("qtype", "SOA")
    if kind == "script" and "command" not in probe:
        notes.drop(st, "a MISC_CHECK needs misc_path", at=at)
        probe["command"] = "/bin/false"
    if given and timeout > delay_loop:
        notes.comment(at, f"LOOK: connect_timeout {timeout:g}s cut to delay_loop {delay_loop:g}s")
        timeout = delay_loop
    probe["timeout"] = duration(timeout)
    probe["fall"] = retries + 1  # the failure and its retries
    return probe


def _url(st: Statement, probe: dict[str, Any], at: str, notes: Notes) -> None:
    for child in st.children:
        word = child.keyword
        if word == "path" and child.args:
            probe["path"] = child.args[0]
        elif word == "status_code" and len(child.args) == 1:
            code = child.args[0]
            probe["expect_status"] = int(code) if code.isdigit() else code
        elif word == "digest":
            notes.drop(child, "hapair does not check a body's MD5 digest", at=at)
        elif word == "regex" and child.args:
            probe["body_regex"] = child.args[0]
        else:
            notes.drop(child, "no hapair equivalent", at=at)


def _share_probe(svc: dict[str, Any], real: list[dict[str, Any]]) -> None:
    """One probe for all the servers is the service's probe."""
    probes = [server.get("probe") for server in real]
    if probes and probes[0] is not None and all(p == probes[0] for p in probes):
        svc["probe"] = probes[0]
        for server in real:
            del server["probe"]
