"""The one director-config builder: a director's TOML and its files, for the lab, the
tests and the benches."""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hapair.config.merge import pair_document
from hapair.config.toml_out import to_toml
from lab.topology import (
    CLUSTER_ID,
    GROUP,
    HB_PORT,
    HOSTS,
    IN_GUEST,
    MONITOR_PORT,
    NAT_GATEWAY,
    PAGER_PORT,
    PREFIXLEN,
    REALS,
    SMTP_SINK_PORT,
    TOPOLOGY,
    VIP,
    real_address,
    timing,
)


@dataclass(frozen=True)
class DirectorFiles:
    """The files a director's config names: in the namespace lab's directory, or where an
    installed director keeps them (/etc/hapair, /var/lib/hapair, /run/hapair, under a root
    prefix for tests)."""

    config: Path
    socket: Path
    state_dir: Path
    authkey: Path
    tls_cert: Path
    tls_key: Path
    users: Path
    password: Path  # the monitor login's password, for the operator to read

    @classmethod
    def lab(cls, name: str, lab: Path) -> DirectorFiles:
        """The namespace lab's: in its directory, one monitor login for both; each
        director's copy of the pair file in a folder of its own, with its end of the
        serial cable (`tty`) beside it."""
        return cls(
            config=lab / name / "hapair.toml",
            socket=lab / f"{name}.sock",
            state_dir=lab / name,
            authkey=lab / "authkey",
            tls_cert=lab / "monitor.crt",
            tls_key=lab / "monitor.key",
            users=lab / "users",
            password=lab / "monitor-password",
        )

    @classmethod
    def installed(cls, name: str, root: Path) -> DirectorFiles:
        """A machine's (`provision`): the contract's default places, under `root`."""
        etc = root / "etc" / "hapair"
        return cls(
            config=etc / "hapair.toml",
            socket=root / "run" / "hapair" / f"{name}.sock",
            state_dir=root / "var" / "lib" / "hapair",
            authkey=etc / "authkey",
            tls_cert=etc / "monitor.crt",
            tls_key=etc / "monitor.key",
            users=etc / "users",
            password=etc / "monitor-password",
        )


def write_authkey(path: Path) -> Path:
    """A new cluster auth key at `path`: 32 random bytes, mode 0600 from the start."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(secrets.token_bytes(32))
    return path


def director_config(
    name: str, mode: str, files: DirectorFiles, interfaces: dict[str, str], serial: str | None
) -> str:
    """Director `name`'s config for the lab (namespaces, guests, `provision`); `interfaces`:
    {network: its interface there}; `serial`: the device of the serial heartbeat cable, or
    None for UDP heartbeats alone."""
    host, t = HOSTS[name], timing()
    probe_interval, probe_timeout = (5, 4) if IN_GUEST else (2, 1)
    probe = {"type": "", "interval": f"{probe_interval}s", "timeout": f"{probe_timeout}s"}
    services = [
        service(
            svc,
            VIP,
            port,
            mode,
            [real_address(mode, rs) for rs in REALS],
            scheduler,
            probe | {"type": kind},
        )
        for svc, port, scheduler, kind in TOPOLOGY["services"]
    ]
    public, heartbeat = interfaces["public"], interfaces["heartbeat"]
    vips = [vip(f"{VIP}/{PREFIXLEN}", public)]
    if mode == "nat":
        vips.append(vip(f"{NAT_GATEWAY}/{PREFIXLEN}", interfaces["private"]))
    links = [udp_link(heartbeat, GROUP, HB_PORT)]
    if serial is not None:
        links.append(serial_link(serial))
    sink = HOSTS["ops"]["public"]
    return director_toml(
        name=name,
        priority=host["priority"],
        socket=files.socket,
        state_dir=files.state_dir,
        cluster_id=CLUSTER_ID,
        auth_key_file=files.authkey,
        cluster={
            "interval": f"{t['interval']}s",
            "deadtime": f"{t['deadtime']}s",
            "initdead": f"{t['initdead']}s",
            "preempt": True,
        },
        links=links,
        vips=vips,
        services=services,
        sections={
            "sync": {"interface": heartbeat, "sync_id": CLUSTER_ID, "warmup": f"{t['warmup']}s"},
            "sysctl": {"ip_forward": mode == "nat", "sync_threshold": [3, 10]},
            "alerts": {
                "min_interval": "0s",
                "email": {
                    "smtp": f"{sink}:{SMTP_SINK_PORT}",
                    "from": "hapair@lvs.lab",  # shared: a pair file has one [alerts]
                    "to": ["oncall@example.org"],
                },
                "pager": {"url": f"http://{sink}:{PAGER_PORT}/alert"},
            },
            "monitor": {
                "listen": f"{host['management']}:{MONITOR_PORT}",
                "tls_cert": files.tls_cert,
                "tls_key": files.tls_key,
                "users_file": files.users,
            },
        },
        comment=f"written by scripts/lab for the {mode} lab",
    )


def pair_config(configs: Mapping[str, str], comment: str) -> str:
    """One pair file of two directors' configs (director_config's texts, name -> text),
    as `hapair config merge` makes it: what they share must be the same."""
    (one, a), (two, b) = configs.items()
    doc = pair_document(tomllib.loads(a), tomllib.loads(b), (one, two))
    return f"# {comment}\n" + to_toml(doc)


# --- the builder: a director's config as data, written as TOML ----------------------------


def director_toml(
    *,
    name: str,
    priority: int,
    socket: Path | str,
    state_dir: Path | str,
    cluster_id: int,
    auth_key_file: Path | str,
    cluster: Mapping[str, Any],
    links: Sequence[Mapping[str, Any]],
    vips: Sequence[Mapping[str, Any]] = (),
    services: Sequence[Mapping[str, Any]] = (),
    node: Mapping[str, Any] | None = None,
    sections: Mapping[str, Any] | None = None,
    extra: str = "",
    comment: str = "",
) -> str:
    """A director's config (TOML): [node] (`node`: keys beyond name, priority, control
    socket and state directory), [cluster] (`cluster`: its timing and preempt) with its
    `links`, the `vips`, the `services`; `sections`: more top-level tables (sync, sysctl,
    alerts, monitor, ...; a list there extends the one above, e.g. more vips); `extra`:
    TOML text appended as it is; `comment`: the first line's."""
    doc: dict[str, Any] = {
        "node": {
            "name": name,
            "priority": priority,
            "control_socket": socket,
            "state_dir": state_dir,
            **(node or {}),
        },
        "cluster": {
            "id": cluster_id,
            "auth_key_file": auth_key_file,
            **cluster,
            "links": list(links),
        },
    }
    if vips:
        doc["vips"] = list(vips)
    if services:
        doc["services"] = list(services)
    for key, value in (sections or {}).items():
        doc[key] = doc.get(key, []) + list(value) if isinstance(value, list) else value
    head = f"# {comment}\n" if comment else ""
    return head + to_toml(doc) + extra


def vip(address: str, interface: str) -> dict[str, Any]:
    """A [[vips]] entry (`address` with its prefix length), announced with 3 gratuitous
    ARPs 50 ms apart."""
    return {"address": address, "interface": interface, "garp_repeat": 3, "garp_interval": "50ms"}


def udp_link(interface: str, group: str, port: int) -> dict[str, Any]:
    """A [[cluster.links]] UDP heartbeat link to multicast `group`."""
    return {"type": "udp", "interface": interface, "group": group, "port": port}


def serial_link(device: str | Path) -> dict[str, Any]:
    """A [[cluster.links]] serial heartbeat link (115200 baud)."""
    return {"type": "serial", "device": device, "baud": 115200}


def service(
    name: str,
    address: str,
    port: int,
    forward: str,
    real_servers: Iterable[str | Mapping[str, Any]],
    scheduler: str | None = None,
    probe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A TCP [[services]] entry; `real_servers`: addresses, or tables (address, weight)."""
    svc: dict[str, Any] = {"name": name, "protocol": "tcp", "address": address, "port": port}
    if scheduler is not None:
        svc["scheduler"] = scheduler
    svc["forward"] = forward
    if probe is not None:
        svc["probe"] = dict(probe)
    svc["real_servers"] = [
        {"address": rs} if isinstance(rs, str) else dict(rs) for rs in real_servers
    ]
    return svc
