"""On a kernel without IPVS (this host's), opening the IPVS driver fails once, clearly."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from topology import Netns

from hapair.ipvs.driver import IpvsDriver, IpvsError

pytestmark = pytest.mark.netns


def test_a_kernel_without_ipvs_is_named_at_open(netns_factory: Callable[[str], Netns]) -> None:
    if Path("/proc/net/ip_vs").exists():
        pytest.skip("this kernel has IPVS")
    ns = netns_factory("noipvs")

    async def scenario() -> None:
        async with IpvsDriver(ns.name) as ipvs:
            await ipvs.dump()

    with pytest.raises(IpvsError) as e:
        asyncio.run(scenario())
    assert str(e.value) == f"netns {ns.name}: the kernel has no IPVS (modprobe ip_vs?)"
    assert e.value.errno == errno.ENOENT


def test_a_missing_namespace_is_named(netns_factory: Callable[[str], Netns]) -> None:
    name = netns_factory("gone").name + "-nope"

    async def scenario() -> None:
        async with IpvsDriver(name):
            pass

    with pytest.raises(IpvsError, match=f"netns {name}: opening a netlink socket: No such file"):
        asyncio.run(scenario())
    assert not Path(f"/run/netns/{name}").exists()
