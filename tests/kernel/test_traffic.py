"""Real traffic through a director pair in the guest kernel, in DR and in NAT:

- fresh HTTP requests to the VIP spread over three real servers as wrr and the weights say;
- 200 long-lived TCP connections opened through the MASTER are listed by the BACKUP's
  `ipvsadm -Lnc` (the kernel's sync daemon), the MASTER dies (its namespace is deleted:
  links, kernel and all), and every connection goes on talking to the same real server
  through the new MASTER;
- the dead node comes back as a fresh machine (a new namespace, the same config) with
  `preempt = true`: it learns the connections before it takes the VIPs back, and the
  handback breaks none of them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pair
import pytest
from ipvsadm import ipvs_table
from pair import SLOWDOWN, VIP, Director, Lab, started, wait_for
from topology import Bridge, Netns

from lab.config import service, vip
from lab.traffic import Holder, Servers, request_spread

pytestmark = pytest.mark.kernel

CONNECTIONS = 200
WEIGHTS = {"rs1": 3, "rs2": 2, "rs3": 1}
GATEWAY = "10.88.0.254"  # NAT: the real servers' route back, a VIP of its own


def config(mode: str) -> dict[str, Any]:
    """The pair's services (web: wrr by WEIGHTS, echo: rr), connection sync and, in NAT,
    the real servers' gateway: top-level sections for the pair's director config."""

    def svc(name: str, port: int, scheduler: str, weights: dict[str, int]) -> dict[str, Any]:
        reals = [{"address": address(mode, rs), "weight": w} for rs, w in weights.items()]
        return service(name, VIP, port, mode, reals, scheduler)

    gateway = {"vips": [vip(f"{GATEWAY}/24", "eth2")]} if mode == "nat" else {}
    return gateway | {
        "sync": {"interface": "eth1", "sync_id": 77, "warmup": f"{20 * SLOWDOWN}s"},
        "sysctl": {"ip_forward": mode == "nat", "sync_threshold": [3, 10]},
        "services": [
            svc("web", 80, "wrr", WEIGHTS),
            svc("echo", 7, "rr", dict.fromkeys(WEIGHTS, 1)),
        ],
    }


def address(mode: str, name: str) -> str:
    return f"10.{77 if mode == 'dr' else 88}.0.2{name[-1]}"


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


def wire(
    lab: Lab, d: Director, mode: str, private: Bridge | None, netns_factory: Callable[[str], Netns]
) -> None:
    """(Re)build director `d` as a fresh machine on the lab's networks."""
    ns = netns_factory(d.name)
    index = d.name[-1]
    lab.public.attach(ns, "eth0", f"10.77.0.{index}/24")
    lab.heartbeat.attach(ns, "eth1", f"10.78.0.{index}/24")
    if private is not None:
        private.attach(ns, "eth2", f"10.88.0.{index}/24")
    d.ns = ns


@pytest.mark.parametrize("mode", ["dr", "nat"])
def test_spread_sync_failover_and_warm_failback(
    mode: str,
    lab_factory: Callable[..., Lab],
    netns_factory: Callable[[str], Netns],
    bridge_factory: Callable[..., Bridge],
    servers: Servers,
) -> None:
    lab = lab_factory(config(mode), interval=0.5, deadtime=6.0, initdead=12.0)
    dir1, dir2 = lab.dirs
    private = bridge_factory("prv") if mode == "nat" else None
    if private is not None:
        for d in lab.dirs:
            private.attach(d.ns, "eth2", f"10.88.0.{d.name[-1]}/24")
    for name in WEIGHTS:
        rs = netns_factory(name)
        if mode == "dr":  # the VIP on lo, never answered for in ARP
            lab.public.attach(rs, "eth0", f"{address(mode, name)}/24")
            rs.run("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
            rs.run("sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2")
            rs.ip("addr", "add", f"{VIP}/32", "dev", "lo")
        else:  # replies go back through the MASTER
            assert private is not None
            private.attach(rs, "eth0", f"{address(mode, name)}/24")
            rs.ip("route", "add", "default", "via", GATEWAY)
        servers.start(name, rs.name, timeout=30 * SLOWDOWN)
    started(lab)
    watch = lab.watch()  # the client's view of who holds the VIP
    margin = 0.5 * SLOWDOWN
    for d in lab.dirs:
        forward = d.ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
        assert forward == ("1" if mode == "nat" else "0"), d.name  # [sysctl], only as asked
        threshold = d.ns.run("sysctl", "-n", "net.ipv4.vs.sync_threshold").stdout.split()
        assert threshold == ["3", "10"]
        kind = "Masq" if mode == "nat" else "Route"
        assert ipvs_table(d.ns)[f"TCP {VIP}:80 wrr"] == [
            (f"{address(mode, n)}:80", kind, w) for n, w in WEIGHTS.items()
        ]

    # Fresh connections follow wrr and the weights: 3:2:1 in every cycle of six.
    assert request_spread(lab.client.name, f"http://{VIP}/", 60, 120 * SLOWDOWN) == {
        "rs1": 30,
        "rs2": 20,
        "rs3": 10,
    }

    holder = Holder(lab.client.name, VIP, 7, CONNECTIONS, timeout=60 * SLOWDOWN)
    try:
        # The BACKUP's kernel learns the connections from the MASTER's sync daemon.
        wait_for(lambda: synced(dir2.ns) >= CONNECTIONS, 10, step=0.5)

        # A reload under traffic (SIGHUP to both, the config unchanged) breaks nothing.
        hup = time.time()
        for d in lab.dirs:
            d.signal(signal.SIGHUP)
        for d in lab.dirs:
            wait_for(lambda d=d: "reloaded" in d.log.read_text(), 10 * SLOWDOWN)
        talking_since(holder, hup)
        assert lab.masters() == ["dir1"] and lab.holders() == ["dir1"]
        seen = watch.holding(hup, time.time())
        assert seen.dual == 0 and seen.none == 0 and seen.holders == [["dir1"]], seen

        # The MASTER dies: its links first (a dead machine sends nothing: a namespace
        # being torn down briefly answers for its VIPs without IPVS, with resets), then
        # its agent and the whole machine.
        dying = time.time()
        for ifname in ("eth0", "eth1", "eth2") if mode == "nat" else ("eth0", "eth1"):
            dir1.ns.ip("link", "set", ifname, "down")
        assert dir1.proc is not None
        dir1.proc.kill()
        dir1.proc.wait()
        netns_delete(dir1.ns)
        died = time.time()
        wait_for(lambda: dir2.holds_vip(), 10)
        talking_since(holder, died)
        seen = watch.holding(dying, time.time() + 3 * watch.period)
        print(f"{mode}: the client's view of the failover: {seen}")
        assert seen.dual == 0 and seen.holders[-1] == ["dir2"], seen
        assert seen.none < 6.0 + margin, seen

        # It comes back as a fresh machine: it must learn before it preempts.
        wire(lab, dir1, mode, private, netns_factory)
        assert synced(dir1.ns) == 0
        watch.names[dir1.mac()] = "dir1"  # a fresh machine, a fresh MAC
        returned = time.time()
        dir1.start()
        wait_for(lambda: dir1.state() == "BACKUP", 30)
        wait_for(lambda: dir1.state() == "MASTER", 60)
        back = time.time()
        log = dir1.log.read_text()
        learned = int(log.split("preemption allowed: ")[-1].split()[0])
        print(f"{mode}: preempted after learning {learned} connections")
        assert learned >= CONNECTIONS
        wait_for(lambda: dir1.holds_vip() and not dir2.holds_vip(), 10)
        talking_since(holder, back)
        seen = watch.holding(returned, time.time() + 3 * watch.period)
        print(f"{mode}: the client's view of the failback: {seen}")
        assert seen.dual == 0 and seen.none < margin and seen.holders[-1] == ["dir1"], seen
    finally:
        holder.close()


def synced(ns: Netns) -> int:
    """Established connections to the echo service in `ns`'s kernel (`ipvsadm -Lnc`)."""
    rows = ns.run("ipvsadm", "-Lnc").stdout.splitlines()[2:]
    return sum(1 for r in rows if f" {VIP}:7 " in f" {r} " and "ESTABLISHED" in r)


def talking_since(holder: Holder, since: float) -> None:
    took = pair.talking_since(holder, since)
    print(f"all {CONNECTIONS} connections talking again {took:.1f}s later")


def netns_delete(ns: Netns) -> None:
    from lab.shell import sh

    sh("ip", "netns", "del", ns.name)
