"""A keepalived.conf tree as a one-director hapair config document (a dict for
`to_toml`), with a report of every statement not carried over. No I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hapair.keepalived.global_defs import HARMLESS, global_defs
from hapair.keepalived.parse import Statement, applies
from hapair.keepalived.report import Notes, duration, integer, number
from hapair.keepalived.services import services

HEARTBEAT_GROUP = "239.0.0.18"  # hapair's, not VRRP's 224.0.0.18: both may run at once
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_NO_WEIGHT = "hapair faults the director on a failed track; it moves no priority by a weight"
_NO_ROUTES = "hapair adds no routes or rules; keep them in the system's network config"
_TOP = {
    "static_ipaddress": "hapair adds only the VIPs; keep it in the system's network config",
    "static_routes": _NO_ROUTES,
    "static_rules": _NO_ROUTES,
    "vrrp_track_process": "hapair tracks processes with a script track (e.g. pgrep)",
    "track_file": "hapair tracks files with a script track",
}
_GROUP_SCRIPTS = {
    "notify_master": "on_master",
    "notify_backup": "on_backup",
    "notify_fault": "on_fault",
}


@dataclass(frozen=True, slots=True)
class Converted:
    doc: dict[str, Any]
    notes: Notes
    state: str  # the first vrrp_instance's state: MASTER or BACKUP (a tie's breaker)


def router_id(tree: list[Statement]) -> str | None:
    for st in tree:
        if st.keyword == "global_defs" and st.condition is None:
            for child in st.children:
                if child.keyword == "router_id" and child.args and child.condition is None:
                    return child.args[0]
    return None


def convert(
    tree: list[Statement], auth_key_file: str = "/etc/hapair/authkey", default_name: str = "lvs1"
) -> Converted:
    notes = Notes()
    rid = router_id(tree)
    tree = _applicable(tree, rid, notes)
    doc: dict[str, Any] = {
        "node": {"name": default_name, "priority": 100},
        "cluster": {
            "id": 1,
            "auth_key_file": auth_key_file,
            "interval": "1s",
            "deadtime": "3s",
            "links": [],
        },
    }
    notes.comment(
        "cluster.auth_key_file",
        f"LOOK: create the key on both directors: "
        f"head -c 32 /dev/urandom > {auth_key_file}; chmod 600 {auth_key_file}",
    )
    scripts: dict[str, Statement] = {}
    instances: list[Statement] = []
    sync_groups: list[Statement] = []
    virtual: list[Statement] = []
    vs_groups: dict[str, Statement] = {}
    defaults: dict[str, Any] = {}
    for st in tree:
        word = st.keyword
        if word == "global_defs":
            global_defs(st, doc, defaults, notes)
        elif word == "vrrp_script" and st.args:
            scripts[st.args[0]] = st
        elif word == "vrrp_instance":
            instances.append(st)
        elif word == "vrrp_sync_group":
            sync_groups.append(st)
        elif word == "virtual_server":
            virtual.append(st)
        elif word == "virtual_server_group" and st.args:
            vs_groups[st.args[0]] = st
        else:
            notes.drop(st, _TOP.get(word, "no hapair equivalent"))
    if rid is not None:
        _node_name(rid, doc, notes)
    else:
        notes.comment("node.name", "LOOK: no router_id in global_defs; name this director")
    state = _instances(instances, sync_groups, scripts, doc, defaults, notes)
    used = {
        w
        for i in instances
        for t in i.children
        if t.keyword == "track_script"
        for s in t.children
        for w in s.words[:1]
    }
    for name, st in scripts.items():
        if name not in used:
            notes.drop(st, "no vrrp_instance tracks it", changes=False)
    found = services(virtual, vs_groups, notes)
    if found:
        doc["services"] = found
    if any(svc.get("forward") == "nat" for svc in found):
        doc["sysctl"] = {"ip_forward": True}
        notes.comment(
            "sysctl.ip_forward",
            "LOOK: NAT routes the replies through the "
            "director; hapair sets net.ipv4.ip_forward (keepalived did not)",
        )
    return Converted(_ordered(doc), notes, state)


def _applicable(
    tree: tuple[Statement, ...] | list[Statement], rid: str | None, notes: Notes
) -> list[Statement]:
    """The statements whose `@NAME` condition holds (keepalived -i NAME: NAME is the
    router id here); the others reported."""
    kept = []
    for st in tree:
        cond = st.condition
        if cond is not None and not applies(cond, rid):
            notes.drop(
                st,
                f"@{cond}: applies only when keepalived runs as {_as(cond)} "
                f"(router_id is {rid or 'unset'})",
                changes=False,
            )
            continue
        if st.keyword.startswith("$"):
            continue  # a conditional definition, applied by the parser
        if st.block is not None:
            st = Statement(st.file, st.line, st.words, tuple(_applicable(st.block, rid, notes)))
        kept.append(st)
    return kept


def _as(condition: str) -> str:
    return f"any but {condition[1:]}" if condition.startswith("^") else condition


def _node_name(rid: str, doc: dict[str, Any], notes: Notes) -> None:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", rid).lstrip("_.-")[:32]
    if _NAME.fullmatch(name):
        doc["node"]["name"] = name
    if name != rid:
        notes.comment("node.name", f"LOOK: router_id {rid!r} made a hapair name")


def _instances(
    instances: list[Statement],
    groups: list[Statement],
    scripts: dict[str, Statement],
    doc: dict[str, Any],
    defaults: dict[str, Any],
    notes: Notes,
) -> str:
    grouped = {
        w
        for g in groups
        for t in g.children
        if t.keyword == "group"
        for s in t.children
        for w in s.words
    }
    for group in groups:
        for child in group.children:
            if child.keyword in _GROUP_SCRIPTS and child.args:
                scripts_of = doc.setdefault("alerts", {}).setdefault("scripts", {})
                scripts_of[_GROUP_SCRIPTS[child.keyword]] = " ".join(child.args)
            elif child.keyword not in ("group", "smtp_alert"):
                notes.drop(child, "no hapair equivalent")
    if not instances:
        notes.comment("cluster.links", "LOOK: no vrrp_instance: give the heartbeat link")
        return "BACKUP"
    state = "BACKUP"
    first = instances[0].args[0] if instances[0].args else "the first"
    for i, inst in enumerate(instances):
        together = bool(inst.args) and inst.args[0] in grouped and first in grouped
        if i:
            why = (
                "in one vrrp_sync_group, as hapair fails over"
                if together
                else ("hapair fails every VIP over together")
            )
            notes.drop(
                inst,
                f"{why}; its VIPs and tracks are carried over with {first}'s settings",
                changes=not together,
                at="vips",
            )
        before = len(doc.get("vips", []))
        for child in inst.children:
            if child.keyword == "state" and i == 0 and child.args:
                state = child.args[0].upper()
            _instance_statement(child, i == 0, scripts, doc, defaults, notes)
        own = [c.args[0] for c in inst.children if c.keyword == "interface" and c.args]
        for vip in doc.get("vips", [])[before:] if own else []:
            vip.setdefault("interface", own[0])  # no `dev`: the instance's interface
    # VRRP's master-down time: three adverts and a skew that favours the higher priority
    advert = doc["cluster"].pop("_advert", 1.0)
    skew = (256 - doc["node"]["priority"]) / 256 * advert
    doc["cluster"]["interval"] = duration(advert)
    doc["cluster"]["deadtime"] = duration(3 * advert + skew)
    link = doc["cluster"].get("_link", {})
    interface = link.get("interface")
    if interface is None:
        notes.comment("cluster.links", "LOOK: no interface in vrrp_instance: set it")
        interface = "eth0"
    entry = {"type": "udp", "interface": interface}
    if "peer" in link:
        entry["peer"] = link["peer"]
    else:
        entry["group"] = defaults.get("group", HEARTBEAT_GROUP)
    entry["port"] = 694
    doc["cluster"]["links"] = [entry]
    doc["cluster"].pop("_link", None)
    notes.comment(
        "cluster.links",
        "LOOK: hapair's heartbeats are UDP port 694 (not VRRP, "
        "IP protocol 112): let them through any firewall between the directors",
    )
    for vip in doc.get("vips", []):
        vip.setdefault("interface", interface)
        for key in ("garp_master_repeat", "garp_master_refresh", "garp_interval"):
            if defaults.get(key) is not None:
                value = defaults[key]
                name = key.replace("_master", "")
                vip[name] = int(value) if name == "garp_repeat" else duration(value)
    return state


def _instance_statement(
    st: Statement,
    first: bool,
    scripts: dict[str, Statement],
    doc: dict[str, Any],
    defaults: dict[str, Any],
    notes: Notes,
) -> None:
    word = st.keyword
    cluster = doc["cluster"]
    link = cluster.setdefault("_link", {})
    if word in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
        for vip in st.children:
            _vip(vip, doc, notes)
    elif word == "track_interface":
        for track in st.children:
            _weighted(track, notes)
            _add_track(doc, {"type": "interface", "interface": track.words[0]})
    elif word == "track_script":
        for track in st.children:
            _weighted(track, notes)
            _script_track(track, scripts, doc, notes)
    elif not first:
        return  # the first instance's settings stand; the instance itself is reported
    elif word == "interface" and st.args:
        link["interface"] = st.args[0]
    elif word == "virtual_router_id":
        cluster["id"] = integer(notes, st, 1, 255) or cluster["id"]
    elif word == "priority":
        value = integer(notes, st, 1, 255)
        if value == 255:
            notes.comment("node.priority", "LOOK: keepalived's 255 (address owner) made 254")
        doc["node"]["priority"] = min(value or 100, 254)
    elif word == "advert_int":
        cluster["_advert"] = number(notes, st, 0.01, 255) or 1.0
    elif word == "nopreempt":
        cluster["preempt"] = False
    elif word == "preempt_delay":
        cluster["preempt_delay"] = duration(number(notes, st, 0, 1000) or 0)
    elif word == "unicast_peer":
        peers = [p.words[0] for p in st.children if p.words]
        if peers:
            link["peer"] = peers[0]
        for extra in st.children[1:]:
            notes.drop(extra, "a hapair pair has one peer", at="cluster.links")
    elif word in _GROUP_SCRIPTS and st.args:
        scripts_of = doc.setdefault("alerts", {}).setdefault("scripts", {})
        scripts_of[_GROUP_SCRIPTS[word]] = " ".join(st.args)
    elif word in ("garp_master_repeat", "garp_master_refresh"):
        defaults[word] = number(notes, st, 0, 86400)
    elif word == "lvs_sync_daemon_interface" and st.args:
        doc["sync"] = {"enabled": True, "interface": st.args[0]}
    elif word == "smtp_alert":
        pass  # hapair mails every alert when [alerts.email] is set
    elif word in ("notify", "notify_stop"):
        notes.drop(
            st, "hapair runs alerts.scripts on_master, on_backup and on_fault only", at="alerts"
        )
    elif word in ("virtual_routes", "virtual_rules"):
        notes.drop(st, _NO_ROUTES, at="vips")
    elif word in HARMLESS:
        notes.drop(st, HARMLESS[word], changes=False)
    else:
        notes.drop(st, "no hapair equivalent")


def _vip(st: Statement, doc: dict[str, Any], notes: Notes) -> None:
    address = st.words[0]
    vip: dict[str, Any] = {
        "address": address if "/" in address else f"{address}/{128 if ':' in address else 32}"
    }
    options = st.words[1:]
    for key, value in zip(options[::2], options[1::2], strict=False):
        if key == "dev":
            vip["interface"] = value
        elif key in ("brd", "broadcast", "label", "scope"):
            notes.drop(st, f"{key} {value}: hapair adds the address without it", changes=False)
        else:
            notes.drop(st, f"{key} {value}: hapair adds the address as it is", at="vips")
    if len(options) % 2:
        notes.drop(st, f"{options[-1]}: hapair adds the address as it is", at="vips")
    doc.setdefault("vips", []).append(vip)


def _weighted(st: Statement, notes: Notes) -> None:
    if len(st.words) >= 3 and st.words[1] == "weight" and st.words[2] not in ("0", "+0", "-0"):
        notes.drop(st, _NO_WEIGHT, at="track")


def _script_track(
    st: Statement, scripts: dict[str, Statement], doc: dict[str, Any], notes: Notes
) -> None:
    script = scripts.get(st.words[0])
    if script is None:
        notes.drop(st, f"no vrrp_script {st.words[0]}")
        return
    track: dict[str, Any] = {"type": "script", "command": ""}
    interval, timeout = 1.0, None
    for child in script.children:
        word = child.keyword
        if word == "script" and child.args:
            track["command"] = " ".join(child.args)
        elif word == "interval":
            interval = number(notes, child, 0.01, 86400) or interval
        elif word == "timeout":
            timeout = number(notes, child, 0.001, 86400)
        elif word in ("fall", "rise"):
            value = integer(notes, child, 1, 100)
            if value is not None:
                track[word] = value
        elif word == "weight":
            if child.args and child.args[0] not in ("0", "+0", "-0"):
                notes.drop(child, _NO_WEIGHT, at="track")
        else:
            notes.drop(child, "no hapair equivalent")
    track["interval"] = duration(interval)
    track["timeout"] = duration(min(timeout or interval, interval))
    if not track["command"]:
        notes.drop(script, "no script to run", at="track")
        track["command"] = "/bin/false"
    _add_track(doc, track)


def _add_track(doc: dict[str, Any], track: dict[str, Any]) -> None:
    """A track two instances share is one track."""
    tracks = doc.setdefault("track", [])
    if track not in tracks:
        tracks.append(track)


def _ordered(doc: dict[str, Any]) -> dict[str, Any]:
    order = ("node", "cluster", "track", "vips", "sync", "services", "sysctl", "alerts")
    return {key: doc[key] for key in order if key in doc}
