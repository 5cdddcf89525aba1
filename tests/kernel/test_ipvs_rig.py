"""IPVS in the guest kernel: per-namespace tables written with pyroute2, sync daemons, FLUSH
and ZERO through hapair.ipvs.driver; every result is read back with ipvsadm (an
independent reader), not only with our own code."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable
from ipaddress import ip_address

import pytest
from ipvsadm import ipvs_daemons, ipvs_table
from pyroute2 import AsyncIPVS, IPVSDest, IPVSService
from topology import Netns

from hapair.ipvs import wire
from hapair.ipvs.driver import IpvsDriver, IpvsError, SyncDaemon, SyncState
from hapair.ipvs.genl import GenlSocket
from hapair.ipvs.table import ServiceKey

pytestmark = pytest.mark.kernel

VIP = "10.50.0.10"
REAL = "10.50.0.21"
DR = 3


def our_service(port: int = 80) -> IPVSService:
    return IPVSService(addr=VIP, port=port, protocol=socket.IPPROTO_TCP, sched_name="wlc")


async def add_service(ns: Netns, port: int = 80) -> None:
    async with AsyncIPVS(netns=ns.name, flags=0) as ipvs:
        await ipvs.setup_endpoint()
        await ipvs.service("add", service=our_service(port))
        real = IPVSDest(addr=REAL, port=port, weight=3, fwd_method=DR)
        await ipvs.dest("add", service=our_service(port), dest=real)


@pytest.fixture
def director(netns_factory: Callable[[str], Netns]) -> Netns:
    """A namespace with eth1 (10.50.1.1/24, up) towards a peer namespace."""
    ns, peer = netns_factory("dir"), netns_factory("peer")
    ns.veth("eth1", peer, "eth1")
    ns.ip("addr", "add", "10.50.1.1/24", "dev", "eth1")
    return ns


def test_service_and_destination_are_per_namespace(
    director: Netns, netns_factory: Callable[[str], Netns]
) -> None:
    other = netns_factory("other")
    asyncio.run(add_service(director))

    assert ipvs_table(director) == {f"TCP {VIP}:80 wlc": [(f"{REAL}:80", "Route", 3)]}
    assert ipvs_table(other) == {}


def test_sync_daemons_start_list_refuse_twice_and_stop(director: Netns) -> None:
    def scenario() -> None:
        with IpvsDriver(director.name) as ipvs:
            ipvs.start_daemon(SyncDaemon(SyncState.MASTER, "eth1", 51))
            assert any(
                line.startswith("master sync daemon (mcast=eth1, syncid=51")
                for line in ipvs_daemons(director)
            ), ipvs_daemons(director)
            [master] = ipvs.list_daemons()
            assert (master.state, master.ifname, master.sync_id) == (SyncState.MASTER, "eth1", 51)

            ipvs.start_daemon(SyncDaemon(SyncState.BACKUP, "eth1", 51))
            shown = ipvs_daemons(director)
            assert len(shown) == 2 and shown[1].startswith(
                "backup sync daemon (mcast=eth1, syncid=51"
            ), shown
            assert {(d.state, d.ifname, d.sync_id) for d in ipvs.list_daemons()} == {
                (SyncState.MASTER, "eth1", 51),
                (SyncState.BACKUP, "eth1", 51),
            }

            with pytest.raises(IpvsError) as refused:
                ipvs.start_daemon(SyncDaemon(SyncState.MASTER, "eth1", 52))
            assert refused.value.errno == errno.EEXIST
            assert str(refused.value) == (
                f"netns {director.name}: starting master sync daemon on eth1: File exists"
            )

            ipvs.stop_daemon(SyncState.MASTER)
            ipvs.stop_daemon(SyncState.BACKUP)
            assert ipvs_daemons(director) == []
            assert ipvs.list_daemons() == []

    scenario()


def test_daemon_options_reach_the_kernel(director: Netns) -> None:
    def scenario() -> None:
        with IpvsDriver(director.name) as ipvs:
            group = ip_address("239.1.2.3")
            ipvs.start_daemon(SyncDaemon(SyncState.MASTER, "eth1", 7, 1200, group, 8849, 2))
            [master] = ipvs.list_daemons()
            ipvs.stop_daemon(SyncState.MASTER)
        assert (master.maxlen, str(master.group), master.port, master.ttl) == (
            1200,
            "239.1.2.3",
            8849,
            2,
        )

    scenario()
    shown = ipvs_daemons(director)
    assert shown == [], shown


def test_a_daemon_stopped_right_after_its_start_is_stopped(director: Netns) -> None:
    """Start and stop in one send, so the stop may come before the new sync thread ever
    ran: then the kernel's DEL_DAEMON fails with EINTR, for which netlink sends no answer
    at all. The write must still return, and the daemon be gone (ipvsadm)."""
    sock = GenlSocket.open(director.name)
    try:
        for sync_id in range(1, 11):
            start = wire.daemon_payload(SyncDaemon(SyncState.MASTER, "eth1", sync_id))
            stop = wire.daemon_state_payload(SyncState.MASTER)
            began = time.monotonic()
            refusals = sock.write([(wire.NEW_DAEMON, start), (wire.DEL_DAEMON, stop)])
            assert time.monotonic() - began < 10, "a write that waited for an answer"
            assert refusals == [None, None]
            assert ipvs_daemons(director) == []
    finally:
        sock.close()


def test_flush_empties_only_this_namespace(
    director: Netns, netns_factory: Callable[[str], Netns]
) -> None:
    other = netns_factory("other")

    async def scenario() -> None:
        await add_service(director, 80)
        await add_service(director, 443)
        await add_service(other, 80)
        assert len(ipvs_table(director)) == 2
        with IpvsDriver(director.name) as ipvs:
            ipvs.zero(ServiceKey("tcp", ip_address(VIP), 80))
            ipvs.zero()
            ipvs.flush()

    asyncio.run(scenario())
    assert ipvs_table(director) == {}
    assert ipvs_table(other) == {f"TCP {VIP}:80 wlc": [(f"{REAL}:80", "Route", 3)]}


def test_zero_of_an_unknown_service_is_a_clear_error(director: Netns) -> None:
    def scenario() -> None:
        with IpvsDriver(director.name) as ipvs:
            ipvs.zero(ServiceKey("tcp", ip_address(VIP), 8080))

    refusal = rf"zeroing the counters of TCP {VIP}:8080: No such process \(no such service\)$"
    with pytest.raises(IpvsError, match=refusal) as e:
        scenario()
    assert e.value.errno == errno.ESRCH


def test_a_missing_namespace_is_not_created(director: Netns) -> None:
    def scenario() -> None:
        with IpvsDriver(director.name + "-nope") as ipvs:
            ipvs.list_daemons()

    with pytest.raises(IpvsError, match="-nope: opening a netlink socket: No such file") as e:
        scenario()
    assert e.value.errno == errno.ENOENT
    assert director.name + "-nope" not in director.run("ip", "netns", "list").stdout
