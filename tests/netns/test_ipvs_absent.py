"""On a kernel without IPVS (this host's): opening the IPVS driver fails once, clearly, and
the agent goes on judging its services by the probes."""

from __future__ import annotations

import asyncio
import errno
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pair import VIP, Lab, started, wait_for
from topology import Netns

from hapair.ipvs.driver import IpvsDriver, IpvsError
from lab.config import service

pytestmark = pytest.mark.netns


def test_a_kernel_without_ipvs_is_named_at_open(netns_factory: Callable[[str], Netns]) -> None:
    if Path("/proc/net/ip_vs").exists():
        pytest.skip("this kernel has IPVS")
    ns = netns_factory("noipvs")

    async def scenario() -> None:
        with IpvsDriver(ns.name) as ipvs:
            await ipvs.dump()

    with pytest.raises(IpvsError) as e:
        asyncio.run(scenario())
    assert str(e.value) == f"netns {ns.name}: the kernel has no IPVS (modprobe ip_vs?)"
    assert e.value.errno == errno.ENOENT


def test_a_missing_namespace_is_named(netns_factory: Callable[[str], Netns]) -> None:
    name = netns_factory("gone").name + "-nope"

    async def scenario() -> None:
        with IpvsDriver(name):
            pass

    with pytest.raises(IpvsError, match=f"netns {name}: opening a netlink socket: No such file"):
        asyncio.run(scenario())
    assert not Path(f"/run/netns/{name}").exists()


PROBE = {"type": "tcp", "interval": "200ms", "timeout": "200ms", "rise": 1, "fall": 1}
WEB = service("web", VIP, 80, forward="dr", real_servers=["10.77.0.10", "10.77.0.11"], probe=PROBE)
SERVICE = {"services": [WEB | {"quorum": 2}]}


def test_without_ipvs_the_services_health_and_quorum_still_follow_the_probes(
    lab_factory: Callable[..., Lab],
) -> None:
    """A VIP-only pair on a kernel without IPVS: the status once said "2 of 2 healthy"
    beside a server marked down, and quorum alerts never fired."""
    if Path("/proc/net/ip_vs").exists():
        pytest.skip("this kernel has IPVS")
    lab = lab_factory(SERVICE)
    web = subprocess.Popen(
        ["ip", "netns", "exec", lab.client.name, sys.executable, "-m", "http.server", "80"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lab.extra.append(web.kill)
    started(lab)
    dir1 = lab.dirs[0]

    def web_service() -> dict[str, Any]:
        status = dir1.status() or {}
        return dict(next(s for s in status.get("services", []) if s["name"] == "web"))

    wait_for(lambda: [rs["healthy"] for rs in web_service()["real_servers"]] == [True, False], 10)
    service = web_service()
    assert (service["healthy"], service["quorum_ok"]) == (1, False), service
    recent = (dir1.status() or {})["alerts"]["recent"]
    assert any(a["event"] == "quorum_lost" and a["subject"] == "web" for a in recent), recent
