"""The VIP adapter and the link watch in real namespaces: addresses checked with `ip -o addr`,
announcements checked where users feel them, in a client's neighbour cache on the same
bridge, and interface changes seen through netlink events.

The adapters run inside the namespaces (`NsPython` from test_links: one Python process per
namespace executing the snippets sent to it in one event loop).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
from test_links import NsPython, ns_python  # noqa: F401  (ns_python is a fixture)
from topology import Bridge, Netns

pytestmark = pytest.mark.netns

VIP4 = "10.78.0.100/24"
VIP6 = "fd00:78::100/64"
BOGUS_MAC = "02:00:00:00:00:99"


def _mac(ns: Netns, ifname: str = "eth0") -> str:
    match = re.search(r"link/ether (\S+)", ns.ip("-o", "link", "show", ifname).stdout)
    assert match, f"no MAC on {ns.name}/{ifname}"
    return match.group(1)


def _addresses(ns: Netns, ifname: str = "eth0") -> str:
    return ns.ip("-o", "addr", "show", "dev", ifname).stdout


def _neigh_mac(client: Netns, ip: str, timeout: float = 3.0, want: str | None = None) -> str | None:
    """The client's neighbour-cache MAC for `ip` (waiting up to `timeout` for `want`)."""
    deadline = time.monotonic() + timeout
    while True:
        out = client.ip("neigh", "show", ip.split("/")[0], "dev", "eth0").stdout
        match = re.search(r"lladdr (\S+)", out)
        found = match.group(1) if match else None
        if found == want or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


Lan = Callable[..., tuple[list[Netns], Netns]]
Adapter = Callable[[Netns], NsPython]


@pytest.fixture
def lan(netns_factory: Callable[[str], Netns], bridge_factory: Callable[..., Bridge]) -> Lan:
    """`make(directors, arp_accept=True)`: directors .1, .2 ... and a client .50 on one
    bridge; with `arp_accept` the client also learns addresses it has no entry for yet
    from gratuitous ARP."""

    def make(directors: int, arp_accept: bool = True) -> tuple[list[Netns], Netns]:
        switch = bridge_factory()
        found = []
        for i in range(1, directors + 1):
            director = netns_factory(f"d{i}")
            switch.attach(director, "eth0", f"10.78.0.{i}/24")
            director.ip("addr", "add", f"fd00:78::{i}/64", "dev", "eth0", "nodad")
            found.append(director)
        client = netns_factory("client")
        client.run("sysctl", "-qw", f"net.ipv4.conf.all.arp_accept={int(arp_accept)}")
        switch.attach(client, "eth0", "10.78.0.50/24")
        client.ip("addr", "add", "fd00:78::50/64", "dev", "eth0", "nodad")
        return found, client

    return make


@pytest.fixture
def adapter(
    netns_factory: Callable[[str], Netns],  # set up first: its namespaces outlive the processes
    ns_python: Callable[[Netns | None], NsPython],  # noqa: F811
) -> Adapter:
    """`start(ns)`: a Python process in `ns` holding the VIP adapter as `vips` (and
    `Vip`, `announce`)."""

    def start(ns: Netns) -> NsPython:
        py = ns_python(ns)
        py(
            """
            from hapair.config.model import Vip
            from hapair.vip import VipAddresses, announce
            vips = VipAddresses()
            """
        )
        return py

    return start


def _vip(address: str) -> str:
    return f"Vip(address={address!r}, interface='eth0', garp_interval=0.05)"


def test_add_is_visible_and_announce_fills_the_client_arp_cache(lan: Lan, adapter: Adapter) -> None:
    (director,), client = lan(1)
    py = adapter(director)
    assert _neigh_mac(client, VIP4, timeout=0) is None

    assert py(f"result = await vips.add({_vip(VIP4)})") is True
    assert f"inet {VIP4} " in _addresses(director)
    assert py(f"result = await vips.add({_vip(VIP4)})") is False  # idempotent
    assert _addresses(director).count(VIP4) == 1
    assert py(f"result = await vips.held({_vip(VIP4)})") is True

    assert py(f"result = await announce({_vip(VIP4)}, 3, 0.05)") == 3
    assert _neigh_mac(client, VIP4, want=_mac(director)) == _mac(director)

    assert py(f"result = await vips.remove({_vip(VIP4)})") is True
    assert VIP4 not in _addresses(director)
    assert py(f"result = await vips.remove({_vip(VIP4)})") is False
    assert py(f"result = await vips.held({_vip(VIP4)})") is False


def test_vip_moves_and_the_client_arp_entry_follows(lan: Lan, adapter: Adapter) -> None:
    """The client is as shipped (arp_accept=0) and talked to the VIP before: it has an
    entry, which gratuitous ARP updates without arp_accept."""
    (first, second), client = lan(2, arp_accept=False)
    p1, p2 = adapter(first), adapter(second)
    client.ip("neigh", "replace", "10.78.0.100", "lladdr", BOGUS_MAC, "dev", "eth0", "nud", "stale")

    p1(f"await vips.add({_vip(VIP4)}); result = await announce({_vip(VIP4)})")
    assert _neigh_mac(client, VIP4, want=_mac(first)) == _mac(first)

    # Takeover at once (no pause): a gratuitous ARP overrides the entry even inside the
    # neighbour table's 1 s locktime, which only holds off ordinary replies.
    p1(f"await vips.remove({_vip(VIP4)})")
    p2(f"await vips.add({_vip(VIP4)}); result = await announce({_vip(VIP4)}, 1)")
    assert _neigh_mac(client, VIP4, want=_mac(second)) == _mac(second)
    assert VIP4 not in _addresses(first)
    assert f"inet {VIP4} " in _addresses(second)


def test_ipv6_vip_with_unsolicited_neighbour_advertisement(lan: Lan, adapter: Adapter) -> None:
    """A Linux client updates an existing entry from an unsolicited NA (override flag); it
    creates none for an address it never talked to unless it is a router with
    accept_untracked_na (RFC 9131), so the client here holds a stale entry, as a client
    that talked to the previous master would."""
    (director,), client = lan(1)
    py = adapter(director)
    client.ip("-6", "neigh", "replace", "fd00:78::100", "lladdr", BOGUS_MAC, "dev", "eth0",
              "nud", "stale")  # fmt: skip

    assert py(f"result = await vips.add({_vip(VIP6)})") is True
    out = _addresses(director)
    assert f"inet6 {VIP6} " in out and "tentative" not in out.split(VIP6)[1].split("\n")[0]
    assert py(f"result = await announce({_vip(VIP6)}, 2)") == 2
    assert _neigh_mac(client, VIP6, want=_mac(director)) == _mac(director)
    assert py(f"result = await vips.remove({_vip(VIP6)})") is True
    assert VIP6 not in _addresses(director)


def test_announcements_on_the_wire_dissected(
    lan: Lan,
    adapter: Adapter,
    ns_python: Callable[[Netns | None], NsPython],  # noqa: F811
) -> None:
    """Every frame the client's interface receives while the director announces both VIPs,
    taken apart by scapy: a gratuitous ARP request (RFC 5227 announcement) and the reply
    form, both broadcast with sender and target IP the VIP; an unsolicited NA to all nodes
    from the VIP, hop limit 255, override set, solicited not, the director's MAC in the
    target link-layer option, and a checksum scapy computes the same."""
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import ARP, Ether

    (director,), client = lan(1)
    py, capture = adapter(director), ns_python(client)
    capture(
        """
        import socket
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
        cap.bind(("eth0", 0))
        cap.setblocking(False)
        """
    )
    py(f"await vips.add({_vip(VIP4)}); await vips.add({_vip(VIP6)})")
    capture("while True:\n    try: cap.recv(4096)\n    except BlockingIOError: break")  # DAD etc.
    assert py(f"result = await announce({_vip(VIP4)}, 2, 0.01, arp_reply=True)") == 2
    assert py(f"result = await announce({_vip(VIP6)}, 2, 0.01)") == 2
    time.sleep(0.2)
    frames = capture(
        """
        result = []
        while True:
            try: result.append(cap.recv(4096).hex())
            except BlockingIOError: break
        """
    )
    mac = _mac(director)
    packets = [Ether(bytes.fromhex(f)) for f in frames]
    ours = [p for p in packets if p.src == mac]
    arps = [p for p in ours if ARP in p]
    nas = [p for p in ours if ICMPv6ND_NA in p]
    assert len(arps) == 4 and len(nas) == 2, [p.summary() for p in ours]
    vip4, vip6 = VIP4.split("/")[0], VIP6.split("/")[0]
    assert [(p[ARP].op, p[ARP].hwdst) for p in arps] == [
        (1, "00:00:00:00:00:00"), (2, mac), (1, "00:00:00:00:00:00"), (2, mac)
    ]  # fmt: skip
    for p in arps:
        assert p.dst == "ff:ff:ff:ff:ff:ff"
        assert (p[ARP].hwsrc, p[ARP].psrc, p[ARP].pdst) == (mac, vip4, vip4)
        assert (p[ARP].hwtype, p[ARP].ptype, p[ARP].hwlen, p[ARP].plen) == (1, 0x0800, 6, 4)
    for p in nas:
        ip6, na = p[IPv6], p[ICMPv6ND_NA]
        assert (p.dst, ip6.dst, ip6.src, ip6.hlim) == ("33:33:00:00:00:01", "ff02::1", vip6, 255)
        assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, vip6)
        assert p[ICMPv6NDOptDstLLAddr].lladdr == mac
        sent = na.cksum
        del na.cksum
        assert IPv6(bytes(ip6))[ICMPv6ND_NA].cksum == sent


def test_remove_stale_takes_off_a_vip_left_by_a_previous_run(lan: Lan, adapter: Adapter) -> None:
    (director,), _ = lan(1)
    director.ip("addr", "add", VIP4, "dev", "eth0")
    director.ip("addr", "add", "10.78.0.101/32", "dev", "eth0")  # stale, with another prefix
    py = adapter(director)
    removed = py(
        f"""
        stale = [{_vip(VIP4)}, {_vip("10.78.0.101/24")}, {_vip("10.78.0.102/24")},
                 Vip(address="10.78.0.103/24", interface="nosuch0")]
        result = [str(v.address) for v in await vips.remove_stale(stale)]
        """
    )
    assert removed == [VIP4, "10.78.0.101/24"]
    out = _addresses(director)
    assert "10.78.0.100" not in out and "10.78.0.101" not in out
    assert "inet 10.78.0.1/24" in out  # the director's own address is untouched


def test_add_on_a_missing_interface_names_the_vip(
    netns_factory: Callable[[str], Netns], adapter: Adapter
) -> None:
    py = adapter(netns_factory("d"))
    with pytest.raises(AssertionError, match=r"VipError: VIP 10\.78\.0\.100/24 on eth0: interface"):
        py(f"await vips.add({_vip(VIP4)})")
    assert py(f"result = await announce({_vip(VIP4)}, 2, 0)") == 0  # logged, not raised


def _watch(py: NsPython, ifnames: set[str]) -> None:
    """Start watch_interfaces(ifnames) in the driver; what it yields goes to `seen`."""
    py(
        f"""
        from hapair.interfaces import watch_interfaces
        seen = []
        async def collect():
            async for ifname, up in watch_interfaces({sorted(ifnames)!r}):
                seen.append([ifname, up])
        watcher = asyncio.create_task(collect())
        """
    )


def test_link_watch_sees_down_and_up(
    netns_factory: Callable[[str], Netns],
    ns_python: Callable[[Netns | None], NsPython],  # noqa: F811
) -> None:
    a, b = netns_factory("a"), netns_factory("b")
    a.veth("v0", b, "v1")
    py = ns_python(a)
    _watch(py, {"v0", "lo", "missing0"})

    def seen_after(count: int, timeout: float = 5.0) -> list[list[object]]:
        deadline = time.monotonic() + timeout
        while (seen := py("result = seen"))[count:] == [] and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(seen[count:])

    assert sorted(seen_after(0)) == [["lo", True], ["missing0", False], ["v0", True]]
    a.ip("link", "set", "v0", "down")
    assert seen_after(3) == [["v0", False]]
    a.ip("link", "set", "v0", "up")
    assert seen_after(4) == [["v0", True]]
    b.ip("link", "set", "v1", "down")  # carrier lost: administratively up is not enough
    assert seen_after(5) == [["v0", False]]
    b.ip("link", "set", "v1", "up")
    assert seen_after(6) == [["v0", True]]
    a.ip("link", "del", "v0")
    assert seen_after(7) == [["v0", False]]
    py("watcher.cancel()")


def test_link_watch_recovers_from_a_netlink_overflow(
    netns_factory: Callable[[str], Netns],
    ns_python: Callable[[Netns | None], NsPython],  # noqa: F811
) -> None:
    """Thousands of link changes while the watcher's loop is busy overflow its netlink
    socket (ENOBUFS); it reads every link again and goes on seeing changes (a watch that
    died would leave a VIP interface going down without FAULT)."""
    a, b = netns_factory("a"), netns_factory("b")
    a.veth("v0", b, "v1")
    py = ns_python(a)
    _watch(py, {"v0"})
    py("await asyncio.sleep(0.3)")
    flips = "".join(f"link set v0 {'down' if i % 2 == 0 else 'up'}\n" for i in range(4000))
    batch = subprocess.Popen(["ip", "-n", a.name, "-batch", "-"], stdin=subprocess.PIPE, text=True)
    assert batch.stdin is not None
    writer = threading.Thread(target=lambda: (batch.stdin.write(flips), batch.stdin.close()))
    writer.start()
    py("import time\ntime.sleep(3)")  # the watcher's loop busy while the changes pile up
    writer.join(30)
    assert batch.wait(60) == 0
    a.ip("link", "set", "v0", "down")
    deadline = time.monotonic() + 5
    while py("result = seen[-1:]") != [["v0", False]] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert py("result = watcher.done()") is False, py("result = repr(watcher.exception())")
    assert py("result = seen[-1:]") == [["v0", False]]
    a.ip("link", "set", "v0", "up")
    deadline = time.monotonic() + 5
    while py("result = seen[-1:]") != [["v0", True]] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert py("result = seen[-1:]") == [["v0", True]]
    py("watcher.cancel()")
