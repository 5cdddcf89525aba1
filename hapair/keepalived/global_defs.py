"""keepalived's `global_defs`: the router id, mail, the sync daemon, ARP timing; and the
statements that need no carrying over, with why (shared with the instances)."""

from __future__ import annotations

from typing import Any

from hapair.keepalived.parse import Statement
from hapair.keepalived.report import Notes, number

HARMLESS = {
    "authentication": "hapair authenticates every heartbeat with cluster.auth_key_file",
    "state": "hapair has no initial state: the director with the higher priority is MASTER",
    "unicast_src_ip": "hapair's heartbeats leave from the address the routing picks",
    "mcast_src_ip": "hapair's heartbeats leave from the address the routing picks",
    "garp_master_delay": "hapair announces at once on takeover, garp_repeat times",
    "garp_master_refresh_repeat": "hapair sends one announcement per garp_refresh",
    "smtp_connect_timeout": "hapair's mail has its own timeout",
    "smtp_helo_name": "hapair greets the SMTP server with its own name",
    "vrrp_skip_check_adv_addr": "hapair sends no VRRP advertisements",
    "vrrp_version": "hapair sends no VRRP advertisements",
    "version": "hapair sends no VRRP advertisements",
    "enable_script_security": "hapair runs its scripts as its own user",
    "script_user": "hapair runs its scripts as its own user",
    "vrrp_gna_interval": "hapair sends IPv6 neighbour advertisements as it sends ARPs",
    "preempt": "preempting is hapair's default",
    "advert_int_compat": "hapair sends no VRRP advertisements",
}


def global_defs(st: Statement, doc: dict[str, Any], defaults: dict[str, Any], notes: Notes) -> None:
    email: dict[str, Any] = {}
    mail: list[Statement] = []
    for child in st.children:
        word = child.keyword
        if word == "router_id":
            pass  # the node's name, read before
        elif word == "notification_email":
            email["to"] = [w for inner in child.children for w in inner.words]
            mail.append(child)
        elif word == "notification_email_from" and child.args:
            email["from"] = child.args[0]
        elif word == "smtp_server" and child.args:
            host = f"[{child.args[0]}]" if ":" in child.args[0] else child.args[0]
            port = child.args[1] if len(child.args) > 1 else "25"
            email["smtp"] = f"{host}:{port}"
        elif word == "lvs_sync_daemon" and len(child.args) >= 2:
            doc["sync"] = _sync_daemon(child, notes)
        elif word in ("vrrp_garp_master_repeat", "vrrp_garp_master_refresh", "vrrp_garp_interval"):
            defaults[word.removeprefix("vrrp_")] = number(notes, child, 0, 86400)
        elif word == "vrrp_mcast_group4" and child.args:
            defaults["group"] = child.args[0]
        elif word in HARMLESS:
            notes.drop(child, HARMLESS[word], changes=False)
        else:
            notes.drop(child, "no hapair equivalent")
    if "to" in email and "smtp" in email:
        email.setdefault("from", "hapair@localhost")
        doc["alerts"] = {"email": {"smtp": email["smtp"], "from": email["from"], "to": email["to"]}}
        notes.comment("alerts.email", "LOOK: hapair mails every alert, not only smtp_alert's")
    elif mail:
        notes.drop(mail[0], "no smtp_server: no mail is sent", changes=False)


def _sync_daemon(st: Statement, notes: Notes) -> dict[str, Any]:
    """`lvs_sync_daemon IFACE INSTANCE [id N] [maxlen N] [port N] [ttl N] [group IP]`."""
    sync: dict[str, Any] = {"enabled": True, "interface": st.args[0]}
    rest = st.args[2:]
    for key, value in zip(rest[::2], rest[1::2], strict=False):
        name = {"id": "sync_id"}.get(key, key)
        if name in ("sync_id", "maxlen", "port", "ttl") and value.isdigit():
            sync[name] = int(value)
        elif name == "group":
            sync[name] = value
        else:
            notes.drop(st, f"{key} {value}: not a sync daemon option hapair knows")
    return sync
