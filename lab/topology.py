"""The lab's topology, described once: hosts, networks, addresses, timing
(`scripts/lab topology` prints it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

IN_GUEST = os.environ.get("HAPAIR_IN_GUEST") == "1"
# Inside the QEMU guest (software emulation) everything runs ~10x slower.
SLOWDOWN = float(os.environ.get("HAPAIR_SLOWDOWN", "10" if IN_GUEST else "1"))
LAB_DIR = Path(os.environ.get("HAPAIR_LAB_DIR", "/run/hapair-lab"))
PYTHON = sys.executable

PREFIX = "lab-"
MODES = ("dr", "nat", "tun")
VIP = "10.60.0.100"
NAT_GATEWAY = "10.62.0.254"  # NAT: the real servers' default route, a second VIP
CLUSTER_ID = 60
GROUP = "239.0.0.60"
HB_PORT = 6694
SMTP_SINK_PORT, PAGER_PORT = 2525, 8080
MONITOR_PORT = 8443
MONITOR_USER = "admin"

PREFIXLEN = 24  # of every host address below

TOPOLOGY: dict[str, Any] = {
    "networks": {
        "public": {"cidr": "10.60.0.0/24", "note": "client, directors' eth0 (the VIP), ops"},
        "heartbeat": {"cidr": "10.61.0.0/24", "note": "directors' eth1: heartbeats, sync"},
        "private": {"cidr": "10.62.0.0/24", "note": "NAT only: real servers, directors' eth2"},
        "management": {
            "cidr": "198.18.0.0/16",
            "note": "a /24 from the lab's host (.1: the root namespace, the Vagrant host) to"
            " each director (.2, mgmt0): its web monitor",
            "from_host": True,
        },
    },
    "vip": VIP,
    "nat_gateway": NAT_GATEWAY,
    "hosts": {
        "client": {"role": "client", "public": "10.60.0.10"},
        "lvs1": {
            "role": "director",
            "priority": 150,
            "public": "10.60.0.1",
            "heartbeat": "10.61.0.1",
            "private": "10.62.0.1",
            "management": "198.18.1.2",
        },
        "lvs2": {
            "role": "director",
            "priority": 100,
            "public": "10.60.0.2",
            "heartbeat": "10.61.0.2",
            "private": "10.62.0.2",
            "management": "198.18.2.2",
        },
        # A real server is on the public network under dr and tun, the private one under nat.
        "rs1": {"role": "real", "public": "10.60.0.21", "private": "10.62.0.21"},
        "rs2": {"role": "real", "public": "10.60.0.22", "private": "10.62.0.22"},
        "rs3": {"role": "real", "public": "10.60.0.23", "private": "10.62.0.23"},
        "ops": {"role": "ops", "public": "10.60.0.50"},
    },
    # name, port, scheduler, probe type
    "services": [("web", 80, "wlc", "http"), ("mail", 25, "rr", "smtp"), ("echo", 7, "rr", "tcp")],
    # The namespace lab's interface names; a provisioned machine finds its own by address.
    "interfaces": {"public": "eth0", "heartbeat": "eth1", "private": "eth2", "management": "mgmt0"},
}
HOSTS: dict[str, dict[str, Any]] = TOPOLOGY["hosts"]
DIRECTORS = [n for n, h in HOSTS.items() if h["role"] == "director"]
REALS = [n for n, h in HOSTS.items() if h["role"] == "real"]
BRIDGES = {"public": "pub", "heartbeat": "hb", "private": "prv"}  # network -> namespace hint


def ns_name(host: str) -> str:
    return PREFIX + host


def all_namespaces() -> list[str]:
    return [ns_name(h) for h in HOSTS] + [ns_name(b) for b in BRIDGES.values()]


def mgmt_link(director: str) -> str:
    return PREFIX + director  # the root-namespace end of the management veth


def mgmt_root_address(director: str) -> str:
    return str(HOSTS[director]["management"]).rsplit(".", 1)[0] + ".1"


def real_address(mode: str, host: str) -> str:
    return str(HOSTS[host]["private" if mode == "nat" else "public"])


def host_networks(host: str, mode: str) -> dict[str, str]:
    """The networks `host` is on in `mode`, {network: its address}: a real server only on the
    private network under nat, only on the public one otherwise; a director on the private
    one under nat only; every host on the others it has an address for."""
    h = HOSTS[host]
    if h["role"] == "real":
        network = "private" if mode == "nat" else "public"
        return {network: str(h[network])}
    nets = [n for n in TOPOLOGY["networks"] if n in h and (n != "private" or mode == "nat")]
    return {n: str(h[n]) for n in nets}


def topology_json(mode: str) -> dict[str, Any]:
    """TOPOLOGY, plus the mode and every host's attachments in it, {host: {network:
    address/prefix}}: what the Vagrantfile gives each VM."""
    attach = {
        host: {n: f"{a}/{PREFIXLEN}" for n, a in host_networks(host, mode).items()}
        for host in HOSTS
    }
    return TOPOLOGY | {"mode": mode, "attach": attach}


def timing() -> dict[str, float]:
    """Heartbeat timing: as a deployment would set it, looser in the emulated guest."""
    if IN_GUEST:
        return {"interval": 0.5, "deadtime": 3.0, "initdead": 6.0, "warmup": 60.0}
    return {"interval": 0.2, "deadtime": 1.0, "initdead": 3.0, "warmup": 10.0}
