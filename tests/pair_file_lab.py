"""The pair of tests/pair.py running one pair file: a copy of the same file for each
director, in a folder of its own (d1/, d2/) with its end of the serial cable (`tty`,
relative in the file). Each director's monitor listens on a management network
(10.79.M.N, a bridge in the root namespace, where the test is 10.79.M.254; M is
`lab.net`): a change is
pushed to the peer there, and the test reaches both monitors."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hapair_cli import hapair
from monitor_lab import ADMIN, VIEWER
from pair import GROUP, INTERVAL, VIP, Lab, started
from topology import Bridge

from hapair.config.toml_out import to_toml
from lab.config import serial_link, udp_link, vip
from lab.shell import sh

__all__ = ["pair_file_lab_factory"]


def pair_text(
    lab: Lab,
    priorities: tuple[int, int] = (150, 100),
    sections: Mapping[str, Any] | None = None,
    **cluster: object,
) -> str:
    """The pair file; `sections`: more top-level tables (services, sync); `cluster`:
    timing beyond the lab's."""
    tmp, net = lab.tmp, lab.net
    nodes = [
        {
            "name": f"dir{i}",
            "priority": priority,
            "control_socket": tmp / f"d{i}" / "hapair.sock",
            "state_dir": tmp / f"d{i}" / "state",
            "monitor_listen": f"{monitor_address(i, net)}:8443",
        }
        for i, priority in ((1, priorities[0]), (2, priorities[1]))
    ]
    doc: dict[str, Any] = {
        "nodes": nodes,
        "cluster": {
            "id": 77,
            "auth_key_file": tmp / "authkey",
            "interval": INTERVAL,
            "deadtime": 0.6,
            "initdead": 2.0,
            **cluster,
            # Relative: each copy's own end of the cable, beside it.
            "links": [udp_link("eth1", GROUP, 6694), serial_link("tty")],
        },
        "vips": [vip(f"{VIP}/24", "eth0")],
        "monitor": {
            "tls_cert": tmp / "monitor.crt",
            "tls_key": tmp / "monitor.key",
            "users_file": tmp / "users",
        },
    }
    return to_toml(doc | dict(sections or {}))


def monitor_address(i: int, net: int) -> str:
    """Director `i`'s monitor address on management network 10.79.`net`.0/24."""
    return f"10.79.{net}.{i}"


def free_net() -> int:
    """A 10.79.N.0/24 no address of the root namespace is in (tests may run side by side)."""
    used = sh("ip", "-o", "-4", "addr", "show").stdout
    for _ in range(100):
        net = random.randrange(100, 250)
        if f" 10.79.{net}." not in used:
            return net
    raise AssertionError("no free 10.79.N.0/24 for the management network")


def config_of(d: Any) -> dict[str, Any]:
    """The agent's status `config` ({} when it does not answer)."""
    status = d.status() or {}
    return dict(status.get("config") or {})


@pytest.fixture
def pair_file_lab_factory(
    lab_factory: Callable[..., Lab], bridge_factory: Callable[..., Bridge], tmp_path: Path
) -> Callable[..., Lab]:
    """make(sections, **cluster): the lab, its directors started on one pair file."""

    def make(sections: Mapping[str, Any] | None = None, **cluster: object) -> Lab:
        lab = lab_factory()
        hapair("gen-cert", str(tmp_path / "monitor.crt"), str(tmp_path / "monitor.key"))
        for (user, password), role in ((ADMIN, "admin"), (VIEWER, "viewer")):
            users = str(tmp_path / "users")
            done = hapair("passwd", "-f", users, user, "--role", role, stdin=password + "\n")
            assert done.returncode == 0, done
        mgmt = bridge_factory("mgmt", root=True)
        lab.net = free_net()
        mgmt.ip("addr", "add", f"{monitor_address(254, lab.net)}/24", "dev", mgmt.name)
        text = pair_text(lab, sections=sections, **cluster)
        for i, d in enumerate(lab.dirs, 1):
            mgmt.attach(d.ns, "eth2", f"{monitor_address(i, lab.net)}/24")
            folder = tmp_path / f"d{i}"
            (folder / "state").mkdir(parents=True)
            (folder / "tty").symlink_to(tmp_path / f"tty{i}")
            d.config = folder / "hapair.toml"
            d.config.write_text(text)
            d.node = d.name
        return started(lab)

    return make
