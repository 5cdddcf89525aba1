"""IpvsDriver against the guest kernel's IPVS: every form written through the driver is read
back with ipvsadm (the independent reader) and with dump(); rules written by ipvsadm are
dumped faithfully; edits happen in place; refusals name what they are about."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from ipaddress import ip_address

import pytest
from pair import wait_for
from topology import Netns

from hapair.ipvs.driver import IpvsDriver, IpvsError
from hapair.ipvs.table import Dest, DestKey, ServiceKey, Table, VirtualService

pytestmark = pytest.mark.kernel

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf")


def svc(
    proto: str, addr: str, port: int, flags: Iterable[str] = (), **kw: object
) -> VirtualService:
    a = ip_address(addr)
    key = ServiceKey(proto, a, port, family=a.version)
    return VirtualService(key, flags=frozenset(flags), **kw)  # type: ignore[arg-type]


def fwm(mark: int, family: int = 4, **kw: object) -> VirtualService:
    return VirtualService(ServiceKey("fwmark", fwmark=mark, family=family), **kw)  # type: ignore[arg-type]


def dest(addr: str, port: int, **kw: object) -> Dest:
    return Dest(DestKey(ip_address(addr), port), **kw)  # type: ignore[arg-type]


def with_dests(service: VirtualService, *dests: Dest) -> VirtualService:
    service.dests.update({d.key: d for d in dests})
    return service


def sh_web() -> VirtualService:
    """A service with every setting (sh and its flags, persistence, netmask) and three
    destinations, one of each forwarding method."""
    return with_dests(
        svc(
            "tcp",
            "10.0.0.100",
            80,
            scheduler="sh",
            persistence=300,
            netmask=24,
            flags={"sh-fallback", "sh-port"},
        ),
        dest("10.0.0.1", 80, weight=3, forward="dr", upper_threshold=100, lower_threshold=10),
        dest("10.0.0.2", 8080, weight=0, forward="nat"),
        dest("10.0.0.3", 80, weight=2, forward="tun"),
    )


def mh_dns(*flags: str) -> VirtualService:
    """An IPv6 UDP service on mh with persistence and a netmask, and one NAT destination."""
    return with_dests(
        svc("udp", "2001:db8::1", 53, scheduler="mh", persistence=60, netmask=64, flags=flags),
        dest("2001:db8::2", 53, forward="nat"),
    )


def listing(ns: Netns, *options: str) -> list[str]:
    """`ipvsadm -Ln [options]` without its 3 header lines, whitespace squeezed."""
    lines = ns.run("ipvsadm", "-Ln", *options).stdout.splitlines()[3:]
    return [" ".join(line.split()) for line in lines]


def dest_row(ns: Netns, address: str, *options: str) -> list[str]:
    """The fields after "-> address" of the one destination row with that address."""
    rows = [line.split()[2:] for line in listing(ns, *options) if line.startswith(f"-> {address}")]
    assert len(rows) == 1, (address, listing(ns, *options))
    return rows[0]


def write(ns: Netns, table: Table) -> None:
    with IpvsDriver(ns.name) as ipvs:
        for service in table.values():
            ipvs.add_service(service)
            for d in service.dests.values():
                ipvs.add_dest(service.key, d)


async def dump(ns: Netns) -> Table:
    with IpvsDriver(ns.name) as ipvs:
        return await ipvs.dump()


@pytest.fixture
def ns(netns_factory: Callable[[str], Netns]) -> Netns:
    return netns_factory("drv")


def test_every_form_reaches_the_kernel_and_dumps_back(ns: Netns) -> None:
    services = [
        with_dests(
            sh_web(),
            dest("10.0.0.4", 80, forward="tun", tunnel="gue", tunnel_port=6080),
            dest("10.0.0.6", 80, forward="tun", tunnel="gre"),
        ),
        mh_dns("mh-fallback", "mh-port"),
        with_dests(
            svc("sctp", "10.0.0.100", 9, scheduler="rr"), dest("10.0.0.9", 9, forward="nat")
        ),
        svc("udp", "10.0.0.100", 5060, scheduler="rr", flags={"ops"}),
        svc("tcp", "2001:db8::1", 443, scheduler="wlc", netmask=128),
        with_dests(fwm(5, scheduler="wrr"), dest("10.0.0.5", 0, weight=4)),
        with_dests(
            fwm(6, 6, scheduler="lblc", persistence=360, netmask=128),
            dest("2001:db8::5", 0, lower_threshold=5, upper_threshold=50),
        ),
        *(
            with_dests(svc("tcp", f"10.0.1.{i}", 80, scheduler=s), dest("10.0.2.1", 80))
            for i, s in enumerate(SCHEDULERS, 1)
        ),
    ]
    table = {s.key: s for s in services}
    write(ns, table)

    shown = listing(ns)
    for line in [
        "TCP 10.0.0.100:80 sh (sh-fallback,sh-port) persistent 300 mask 255.255.255.0",
        "-> 10.0.0.1:80 Route 3 0 0",
        "-> 10.0.0.2:8080 Masq 0 0 0",
        "-> 10.0.0.3:80 Tunnel 2 0 0",
        "UDP [2001:db8::1]:53 mh (mh-fallback,mh-port) persistent 60 mask 64",
        "-> [2001:db8::2]:53 Masq 1 0 0",
        "SCTP 10.0.0.100:9 rr",
        "-> 10.0.0.9:9 Masq 1 0 0",
        "UDP 10.0.0.100:5060 rr ops",
        "TCP [2001:db8::1]:443 wlc",
        "FWM 5 wrr",
        "-> 10.0.0.5:0 Route 4 0 0",
        "FWM 6 IPv6 lblc persistent 360",
        "-> [2001:db8::5]:0 Route 1 0 0",
        *(f"TCP 10.0.1.{i}:80 {s}" for i, s in enumerate(SCHEDULERS, 1)),
    ]:
        assert line in shown, (line, shown)
    assert len([line for line in shown if not line.startswith("->")]) == len(table)
    assert dest_row(ns, "10.0.0.1:80", "--thresholds")[:2] == ["100", "10"]
    assert dest_row(ns, "[2001:db8::5]:0", "--thresholds")[:2] == ["50", "5"]
    assert dest_row(ns, "10.0.0.2:8080", "--thresholds")[:2] == ["0", "0"]

    def tunnel(address: str) -> list[str]:  # ipvsadm shows "Tunnel gue:6080:-c ..."
        return dest_row(ns, address, "--tun-info")[1].lower().split(":")

    assert tunnel("10.0.0.3:80")[0] == "ipip"
    assert tunnel("10.0.0.4:80")[:2] == ["gue", "6080"]
    assert tunnel("10.0.0.6:80")[0] == "gre"

    assert asyncio.run(dump(ns)) == table


def test_rules_written_by_ipvsadm_dump_faithfully(ns: Netns) -> None:
    for cmd in [
        "-A -t 10.0.0.100:80 -s sh -b sh-fallback,sh-port -p 300 -M 255.255.255.0",
        "-a -t 10.0.0.100:80 -r 10.0.0.1:80 -g -w 3 -x 100 -y 10",
        "-a -t 10.0.0.100:80 -r 10.0.0.2:8080 -m -w 0",
        "-a -t 10.0.0.100:80 -r 10.0.0.3:80 -i -w 2",
        "-A -u [2001:db8::1]:53 -s mh -b mh-port -p 60 -M 64",
        "-a -u [2001:db8::1]:53 -r [2001:db8::2]:53 -m",
        "-A -u 10.0.0.100:53 -s rr -o",
        "-A --sctp-service 10.0.0.100:9 -s nq -b flag-3",
        "-A -t 10.0.0.101:80",
        "-A -f 5 -s wrr",
        "-a -f 5 -r 10.0.0.5 -g",
        "-A -f 6 -6 -s lblc -p",
        "-a -f 6 -6 -r [2001:db8::5]:0 -g -x 7",
    ]:
        ns.run("ipvsadm", *cmd.split())

    expected = [
        sh_web(),
        mh_dns("mh-port"),
        svc("udp", "10.0.0.100", 53, scheduler="rr", flags={"ops"}),
        svc("sctp", "10.0.0.100", 9, scheduler="nq", flags={"flag-3"}),
        svc("tcp", "10.0.0.101", 80, scheduler="wlc"),
        with_dests(fwm(5, scheduler="wrr"), dest("10.0.0.5", 0)),
        with_dests(
            fwm(6, 6, scheduler="lblc", persistence=360, netmask=128),
            dest("2001:db8::5", 0, upper_threshold=7),
        ),
    ]
    assert asyncio.run(dump(ns)) == {s.key: s for s in expected}


def test_edits_change_settings_in_place(ns: Netns) -> None:
    web = with_dests(
        svc("tcp", "10.0.0.100", 80, scheduler="wlc"),
        dest("10.0.0.1", 80, weight=1, forward="dr"),
        dest("10.0.0.2", 80, weight=1, forward="dr"),
    )
    write(ns, {web.key: web})
    edited = svc(
        "tcp", "10.0.0.100", 80, scheduler="sh", persistence=120, netmask=16, flags={"sh-port"}
    )
    moved = dest("10.0.0.1", 80, weight=7, forward="nat", upper_threshold=9, lower_threshold=2)

    async def edit() -> Table:
        with IpvsDriver(ns.name) as ipvs:
            ipvs.edit_service(edited)
            ipvs.edit_dest(web.key, moved)
            ipvs.delete_dest(web.key, DestKey(ip_address("10.0.0.2"), 80))
            return await ipvs.dump()

    table = asyncio.run(edit())
    assert listing(ns) == [
        "TCP 10.0.0.100:80 sh (sh-port) persistent 120 mask 255.255.0.0",
        "-> 10.0.0.1:80 Masq 7 0 0",
    ]
    assert dest_row(ns, "10.0.0.1:80", "--thresholds")[:2] == ["9", "2"]
    assert table == {web.key: with_dests(edited, moved)}

    with IpvsDriver(ns.name) as ipvs:
        ipvs.edit_service(svc("tcp", "10.0.0.100", 80, scheduler="rr"))
        ipvs.delete_service(web.key)
        ipvs.add_service(svc("tcp", "10.0.0.100", 80, scheduler="rr"))
    assert listing(ns) == ["TCP 10.0.0.100:80 rr"]


def test_a_repeated_dump_sees_every_change_and_a_partial_dump_reads_only_its_keys(
    ns: Netns,
) -> None:
    web = with_dests(svc("tcp", "10.0.0.100", 80), dest("10.0.0.1", 80, weight=1))
    dns = with_dests(svc("udp", "10.0.0.100", 53), dest("10.0.0.1", 53, weight=1))
    gone = svc("tcp", "10.0.0.100", 81).key
    write(ns, {web.key: web, dns.key: dns})

    async def scenario() -> tuple[Table, Table, Table]:
        with IpvsDriver(ns.name) as ipvs:
            first = await ipvs.dump()
            # Changed behind the driver's back, between two dumps of one open driver.
            ns.run("ipvsadm", "-e", "-t", "10.0.0.100:80", "-r", "10.0.0.1:80", "-w", "5")
            ns.run("ipvsadm", "-a", "-t", "10.0.0.100:80", "-r", "10.0.0.2:80", "-w", "2")
            ns.run("ipvsadm", "-E", "-u", "10.0.0.100:53", "-s", "rr", "-p", "60")
            ns.run("ipvsadm", "-d", "-u", "10.0.0.100:53", "-r", "10.0.0.1:53")
            second = await ipvs.dump()
            partial = await ipvs.dump([web.key, gone])
            return first, second, partial

    first, second, partial = asyncio.run(scenario())
    assert first == {web.key: web, dns.key: dns}
    changed = with_dests(
        svc("tcp", "10.0.0.100", 80), dest("10.0.0.1", 80, weight=5), dest("10.0.0.2", 80, weight=2)
    )
    # Services and destination sets are parsed once per description: each change shows.
    dns_now = svc("udp", "10.0.0.100", 53, scheduler="rr", persistence=60)
    assert second == {web.key: changed, dns.key: dns_now}
    assert partial == {web.key: changed}


def test_edit_dest_keeps_its_connections_and_counters(
    netns_factory: Callable[[str], Netns],
) -> None:
    director, client = netns_factory("dir"), netns_factory("cli")
    director.veth("eth0", client, "eth0")
    director.ip("addr", "add", "10.61.0.1/24", "dev", "eth0")
    client.ip("addr", "add", "10.61.0.2/24", "dev", "eth0")
    web = svc("tcp", "10.61.0.1", 80, scheduler="wlc")
    real = dest("10.61.0.50", 80, weight=1, forward="dr")  # nobody: the SYN is only scheduled
    write(director, {web.key: with_dests(web, real)})

    # A non-blocking connect sends one SYN; IPVS schedules it and makes a connection entry.
    syn = (
        "import socket, time\n"
        "s = socket.socket(); s.setblocking(False)\n"
        "s.connect_ex(('10.61.0.1', 80)); time.sleep(0.3)\n"
    )
    client.run(sys.executable, "-c", syn)

    def conns() -> int:
        return int(dest_row(director, "10.61.0.50:80", "--stats")[0])

    def entries() -> list[str]:
        lines = director.run("ipvsadm", "-Lnc").stdout.splitlines()
        return [line for line in lines if "10.61.0.2:" in line and "10.61.0.50:80" in line]

    assert len(entries()) == 1, entries()
    # The kernel folds its per-CPU counters into --stats every 2 s (the estimator).
    wait_for(lambda: conns() == 1, 1)

    with IpvsDriver(director.name) as ipvs:
        ipvs.edit_dest(web.key, dest("10.61.0.50", 80, weight=5))
    assert dest_row(director, "10.61.0.50:80")[:2] == ["Route", "5"]
    active, inactive = map(int, dest_row(director, "10.61.0.50:80")[2:4])
    assert active + inactive == 1
    assert conns() == 1 and len(entries()) == 1
    read = asyncio.run(dump(director))[web.key].dests[real.key]
    assert (read.active_conns, read.inactive_conns) == (active, inactive)  # as ipvsadm shows


def test_refusals_name_the_service_or_destination(ns: Netns) -> None:
    web = svc("tcp", "10.0.0.100", 80, scheduler="wlc")
    six = svc("udp", "2001:db8::1", 53, scheduler="rr")
    write(ns, {web.key: with_dests(web, dest("10.0.0.1", 80))})

    def attempt(change: Callable[[IpvsDriver], object]) -> IpvsError:
        with IpvsDriver(ns.name) as ipvs, pytest.raises(IpvsError) as e:
            change(ipvs)
        return e.value

    where = f"netns {ns.name}: "
    cases: list[tuple[Callable[[IpvsDriver], object], str]] = [
        (lambda d: d.add_service(web), "adding TCP 10.0.0.100:80: File exists"),
        (
            lambda d: d.add_service(svc("tcp", "10.0.0.100", 81, scheduler="foo")),
            "adding TCP 10.0.0.100:81: No such file or directory (scheduler 'foo' not loaded?)",
        ),
        (
            lambda d: d.edit_service(six),
            "editing UDP [2001:db8::1]:53: No such process (no such service)",
        ),
        (
            lambda d: d.delete_service(fwm(9).key),
            "deleting FWM 9: No such process (no such service)",
        ),
        (
            lambda d: d.add_dest(web.key, dest("10.0.0.1", 80)),
            "adding destination 10.0.0.1:80 to TCP 10.0.0.100:80: File exists",
        ),
        (
            lambda d: d.add_dest(six.key, dest("2001:db8::2", 53)),
            "adding destination [2001:db8::2]:53 to UDP [2001:db8::1]:53: No such process"
            " (no such service)",
        ),
        (
            lambda d: d.edit_dest(web.key, dest("10.0.0.9", 80)),
            "editing destination 10.0.0.9:80 of TCP 10.0.0.100:80: No such file or directory"
            " (no such destination)",
        ),
        (
            lambda d: d.delete_dest(web.key, DestKey(ip_address("10.0.0.9"), 80)),
            "deleting destination 10.0.0.9:80 from TCP 10.0.0.100:80: No such file or directory"
            " (no such destination)",
        ),
        (
            lambda d: d.add_dest(web.key, dest("10.0.0.7", 80, forward="proxy")),
            "adding destination 10.0.0.7:80 to TCP 10.0.0.100:80: unknown forwarding method"
            " 'proxy'",
        ),
    ]
    for change, message in cases:
        assert str(attempt(change)) == where + message
    assert listing(ns) == ["TCP 10.0.0.100:80 wlc", "-> 10.0.0.1:80 Route 1 0 0"]
