"""One sample of the agent's status (hapair/status.py), for the tests that read one: the
CLI's table, the monitor's API and page, the metrics. It is checked against the status
type itself (`conforms`), as is the status of a real agent in the netns layer, so the
samples cannot drift from what the agent sends."""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from hapair.status import RealServerStatus, Status


def _server(address: str, **changes: Any) -> RealServerStatus:
    """Real server `address`:80 of the sample: healthy, enabled and in IPVS, without
    connections or probe results, but for `changes`."""
    server: RealServerStatus = {
        "address": address,
        "port": 80,
        "weight": 1,
        "healthy": True,
        "admin": "enabled",
        "in_ipvs": True,
        "active_conns": 0,
        "inactive_conns": 0,
        "probe": None,
        "history": [],
    }
    return server | changes  # type: ignore[return-value]


STATUS: Status = {
    "node": "lvs1",
    "state": "MASTER",
    "priority": 150,
    "since": 1000.0,
    "peer": {
        "node": "lvs2",
        "state": "BACKUP",
        "alive": True,
        "last_heard": 0.12,
        "links": [
            {"type": "udp", "name": "eth1", "alive": True, "last_heard": 0.12},
            {"type": "serial", "name": "/dev/ttyS1", "alive": False, "last_heard": None},
        ],
        "priority": 100,
        "since": 1500.0,
    },
    "vips": [{"address": "10.0.0.100/24", "interface": "eth0", "held": True}],
    "sync": {"enabled": True, "role": "master"},
    "services": [
        {
            "name": "web",
            "address": "10.0.0.100",
            "port": 80,
            "protocol": "tcp",
            "healthy": 1,
            "quorum_ok": True,
            "real_servers": [
                _server(
                    "10.0.0.11",
                    active_conns=3,
                    inactive_conns=12,
                    probe={"ok": True, "reason": "connected", "latency_ms": 1.5},
                    history=[{"up": True, "time": 1200.0, "reason": "connected"}],
                ),
                _server("10.0.0.12", weight=0, admin="drained"),
                _server(
                    "10.0.0.13",
                    healthy=False,
                    in_ipvs=False,
                    probe={"ok": False, "reason": "timed out", "latency_ms": 1000.0},
                    history=[{"up": False, "time": 1300.0, "reason": "timed out"}],
                ),
            ],
            "fwmark": None,
            "scheduler": "wlc",
            "forward": "dr",
            "sorry_server": False,
        },
        {
            "name": "media",
            "address": None,
            "port": None,
            "protocol": "fwmark",
            "healthy": 0,
            "quorum_ok": False,
            "real_servers": [],
            "fwmark": 7,
            "scheduler": "sh",
            "forward": "nat",
            "sorry_server": True,
        },
    ],
    "health": {"ok": True, "failing": {}},
    "heartbeats": {"sent": 120, "received": 118, "dropped": {"bad MAC": 2, "replay": 1}},
    "preempt_hold": None,
    "timer_late_max_ms": 3.2,
    "alerts": {"queued": 2, "recent": []},
    "reload": None,
    "config": {"version": "c0ffee" + "0" * 58, "peer_version": None, "in_sync": False},
    "checker": {
        "pid": 4242,
        "state": "running",
        "probes": 2,
        "restarts": 1,
        "last_restart": {"time": 1700000000.0, "reason": "pid 4241 killed by SIGKILL"},
    },
}


def status() -> Status:
    """A copy of the sample, to change freely."""
    return copy.deepcopy(STATUS)


def conforms(value: Any, kind: Any = Status, where: str = "status") -> list[str]:
    """Where `value` differs from the type `kind` (a TypedDict of hapair/status.py, or a
    type within one): missing or unknown keys, wrong types. Empty when it conforms."""
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [conforms(value, option, where) for option in get_args(kind)]
        return [] if any(not o for o in options) else min(options, key=len)
    if kind is type(None):
        return [] if value is None else [f"{where}: {value!r} is not None"]
    if kind is Any:
        return []
    if typing.is_typeddict(kind):
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        hints = get_type_hints(kind)
        problems = [f"{where}.{k}: missing" for k in hints if k not in value]
        problems += [f"{where}.{k}: not in {kind.__name__}" for k in value if k not in hints]
        for key, hint in hints.items():
            if key in value:
                problems += conforms(value[key], hint, f"{where}.{key}")
        return problems
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        (item,) = get_args(kind)
        return [p for i, v in enumerate(value) for p in conforms(v, item, f"{where}.{i}")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        _, item = get_args(kind)
        return [p for k, v in value.items() for p in conforms(v, item, f"{where}.{k}")]
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    return [] if ok else [f"{where}: {value!r} is not {kind.__name__}"]


def config(key_file: Path, **sections: Any) -> dict[str, Any]:
    """The smallest valid config (lvs1, one UDP link on eth1) as `validate` takes it, with
    `sections` added or put in the place of its own."""
    return {
        "node": {"name": "lvs1", "priority": 150},
        "cluster": {
            "id": 1,
            "auth_key_file": str(key_file),
            "links": [{"type": "udp", "interface": "eth1", "group": "239.0.0.1"}],
        },
    } | sections
