"""The IPVS wire codec on the host: requests byte for byte as linux/ip_vs.h lays them out,
answers built here the way net/netfilter/ipvs/ip_vs_ctl.c fills them (spelled out with
struct in this file, not with the codec), and the pipelined write against this kernel's
own generic netlink (its controller family: IPVS itself exists only in the guest)."""

from __future__ import annotations

import errno
import socket
import struct
import sys
from ipaddress import ip_address

import pytest

from hapair.ipvs import answers, wire
from hapair.ipvs import netlink as nl
from hapair.ipvs.genl import BATCH, GenlSocket
from hapair.ipvs.table import Dest, DestKey, ServiceKey, VirtualService

pytestmark = pytest.mark.unit

VIP = ip_address("10.0.0.100")
VIP6 = ip_address("2001:db8::1")


def nla(kind: int, value: bytes) -> bytes:
    """One netlink attribute: length, type, value, padding to 4 bytes."""
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def u8(v: int) -> bytes:
    return struct.pack("=B", v)


def u16(v: int) -> bytes:
    return struct.pack("=H", v)


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def be16(v: int) -> bytes:
    return struct.pack(">H", v)


STATS = nla(10, nla(1, u32(7)) + nla(2, u32(70)))  # IPVS_SVC_ATTR_STATS, two counters
STATS64 = nla(12, nla(1, struct.pack("=Q", 7)))


def kernel_service(
    *,
    sched: str = "wlc",
    flags: int = 0x2,
    timeout: int = 0,
    netmask: bytes = b"\xff\xff\xff\xff",
    stats: bytes = STATS,
) -> bytes:
    """A GET_SERVICE answer for TCP 10.0.0.100:80 as ip_vs_genl_fill_service writes it."""
    inner = (
        nla(1, u16(socket.AF_INET))
        + nla(2, u16(socket.IPPROTO_TCP))
        + nla(3, VIP.packed + b"\0" * 12)  # union nf_inet_addr: 16 bytes
        + nla(4, be16(80))
        + nla(6, sched.encode() + b"\0")
        + nla(7, struct.pack("=II", flags, 0xFFFFFFFF))
        + nla(8, u32(timeout))
        + nla(9, netmask)
        + stats
        + STATS64
    )
    return nla(1, inner)


def kernel_dest(address: str, port: int, weight: int, *, modern: bool = True) -> bytes:
    """A GET_DEST answer as ip_vs_genl_fill_dest writes it: Linux 5.3+ (tunnel attributes
    and the address family) or older (neither)."""
    addr = ip_address(address)
    inner = nla(1, addr.packed + b"\0" * (16 - len(addr.packed))) + nla(2, be16(port))
    inner += nla(3, u32(3)) + nla(4, u32(weight))  # direct routing
    if modern:
        inner += nla(13, u8(0)) + nla(14, be16(0)) + nla(15, u16(0))
    inner += nla(5, u32(100)) + nla(6, u32(10)) + nla(7, u32(4)) + nla(8, u32(9))
    inner += nla(9, u32(0))  # persistent connections
    if modern:
        inner += nla(11, u16(socket.AF_INET6 if addr.version == 6 else socket.AF_INET))
    inner += nla(10, nla(1, u32(weight * 11)))  # statistics: differ from dump to dump
    return nla(2, inner)


def test_a_service_request_is_laid_out_as_ip_vs_h_says() -> None:
    service = VirtualService(
        ServiceKey("tcp", VIP, 80), "sh", persistence=300, netmask=24,
        flags=frozenset({"sh-port", "ops"}),
    )  # fmt: skip
    expected = nla(
        1,
        nla(1, u16(socket.AF_INET))
        + nla(2, u16(socket.IPPROTO_TCP))
        + nla(3, VIP.packed)
        + nla(4, be16(80))
        + nla(6, b"sh\0")
        + nla(7, struct.pack("=II", 0x1 | 0x4 | 0x10, 0xFFFFFFFF))  # persistent, ops, sched2
        + nla(8, u32(300))
        + nla(9, bytes([255, 255, 255, 0])),  # an IPv4 mask in network order
    )
    assert wire.service_payload(service) == expected


def test_fwmark_and_ipv6_keys_and_an_ipv6_prefix_in_host_order() -> None:
    six = VirtualService(ServiceKey("fwmark", fwmark=9, family=6), "rr", netmask=64)
    assert wire.service_payload(six) == nla(
        1,
        nla(1, u16(socket.AF_INET6)) + nla(5, u32(9)) + nla(6, b"rr\0")
        + nla(7, struct.pack("=II", 0, 0xFFFFFFFF)) + nla(8, u32(0))
        + nla(9, (64).to_bytes(4, sys.byteorder)),
    )  # fmt: skip
    udp6 = ServiceKey("udp", VIP6, 53, family=6)
    assert wire.service_attr(udp6) == nla(
        1,
        nla(1, u16(socket.AF_INET6)) + nla(2, u16(socket.IPPROTO_UDP)) + nla(3, VIP6.packed)
        + nla(4, be16(53)),
    )  # fmt: skip


def test_values_ipvs_cannot_hold_are_refused_before_the_wire() -> None:
    key = ServiceKey("tcp", VIP, 80)
    with pytest.raises(ValueError, match="flag 'sh-port' does not apply to scheduler 'wlc'"):
        wire.service_payload(VirtualService(key, "wlc", flags=frozenset({"sh-port"})))
    with pytest.raises(ValueError, match="netmask /33 out of range"):
        wire.service_payload(VirtualService(key, "wlc", netmask=33))
    with pytest.raises(ValueError, match="needs an IPv6 address"):
        wire.service_attr(ServiceKey("tcp", VIP, 80, family=6))
    with pytest.raises(ValueError, match="unknown forwarding method 'proxy'"):
        wire.dest_payload(key, Dest(DestKey(VIP, 80), forward="proxy"))
    with pytest.raises(struct.error):
        wire.dest_payload(key, Dest(DestKey(VIP, 80), weight=1 << 32))


def test_a_destination_request_carries_its_tunnel_only_when_tunnelled() -> None:
    key = ServiceKey("tcp", VIP, 80)
    real = DestKey(ip_address("10.0.0.1"), 8080)
    dest_attrs = nla(1, real.address.packed) + nla(2, be16(8080)) + nla(11, u16(socket.AF_INET))
    settings = nla(3, u32(0)) + nla(4, u32(5)) + nla(5, u32(0)) + nla(6, u32(0))
    assert wire.dest_payload(key, Dest(real, weight=5, forward="nat")) == (
        wire.service_attr(key) + nla(2, dest_attrs + settings)
    )
    tunnelled = wire.dest_payload(key, Dest(real, forward="tun", tunnel="gue", tunnel_port=6080))
    assert tunnelled.endswith(nla(13, u8(1)) + nla(14, be16(6080)))
    assert wire.dest_key_payload(key, real) == wire.service_attr(key) + nla(2, dest_attrs)


def test_a_service_answer_is_read_and_its_statistics_ignored() -> None:
    reader = answers.ServiceReader()
    first = reader.read(kernel_service(sched="mh", flags=0x2 | 0x1 | 0x8, timeout=60))
    assert first == VirtualService(
        ServiceKey("tcp", VIP, 80), "mh", persistence=60, netmask=32,
        flags=frozenset({"mh-fallback"}),
    )  # fmt: skip
    other_stats = nla(10, nla(1, u32(8)) + nla(2, u32(80)))
    again = reader.read(
        kernel_service(sched="mh", flags=0x2 | 0x1 | 0x8, timeout=60, stats=other_stats)
    )
    assert again == first and again is not first  # a fresh object: callers fill its dests
    changed = reader.read(kernel_service(sched="mh", flags=0x2, timeout=60, stats=other_stats))
    assert changed is not None and (changed.persistence, changed.flags) == (0, frozenset())
    assert reader.read(nla(2, b"")) is None  # an answer without a service


def test_a_non_contiguous_mask_reads_as_no_prefix() -> None:
    service = answers.ServiceReader().read(kernel_service(netmask=bytes([255, 0, 255, 0])))
    assert service is not None and service.netmask == -1


def read(reader: answers.DestReader, answers: list[bytes]) -> dict[DestKey, Dest]:
    dests: dict[DestKey, Dest] = {}
    reader.read(answers, 4, dests)
    return dests


def test_destinations_in_both_kernel_layouts_read_alike() -> None:
    modern = [kernel_dest("10.0.0.1", 80, 3), kernel_dest("10.0.0.2", 80, 4)]
    old = [
        kernel_dest("10.0.0.1", 80, 3, modern=False),
        kernel_dest("10.0.0.2", 80, 4, modern=False),
    ]
    expected = {
        d.key: d
        for d in (
            Dest(DestKey(ip_address(a), 80), w, "dr", 100, 10, active_conns=4, inactive_conns=9)
            for a, w in (("10.0.0.1", 3), ("10.0.0.2", 4))
        )
    }
    assert read(answers.DestReader(), modern) == expected
    assert read(answers.DestReader(), old) == expected  # no family attribute: the service's
    assert [answers.dest_of(p, 4) for p in modern] == list(expected.values())


def test_a_destination_set_seen_before_is_a_copy_and_a_change_shows() -> None:
    reader = answers.DestReader()
    said = [kernel_dest("10.0.0.1", 80, 3), kernel_dest("2001:db8::2", 80, 1)]
    first = read(reader, said)
    again = read(reader, said)
    assert again == first
    again.clear()  # the caller's dict: the reader's stays whole
    assert read(reader, said) == first
    heavier = read(reader, [kernel_dest("10.0.0.1", 80, 5), said[1]])
    assert [d.weight for d in heavier.values()] == [5, 1]
    assert list(first)[1] == DestKey(ip_address("2001:db8::2"), 80)


def test_sync_daemon_requests_and_answers() -> None:
    group = ip_address("239.1.2.3")
    payload = wire.daemon_payload(
        wire.SyncDaemon(wire.SyncState.MASTER, "eth1", 7, 1200, group, 8849, 2)
    )
    assert payload == nla(
        3,
        nla(1, u32(1)) + nla(2, b"eth1\0") + nla(3, u32(7)) + nla(4, u16(1200))
        + nla(5, group.packed) + nla(7, u16(8849)) + nla(8, u8(2)),
    )  # fmt: skip
    assert wire.daemon_state_payload(wire.SyncState.BACKUP) == nla(3, nla(1, u32(2)))
    # ip_vs_genl_fill_daemon: every field, the group last, in the family it has.
    answer = nla(
        3,
        nla(1, u32(2)) + nla(2, b"eth1\0") + nla(3, u32(7)) + nla(4, u16(1472))
        + nla(7, u16(8848)) + nla(8, u8(1)) + nla(6, ip_address("ff02::51").packed),
    )  # fmt: skip
    assert answers.daemon_of(answer) == wire.SyncDaemon(
        wire.SyncState.BACKUP, "eth1", 7, 1472, ip_address("ff02::51"), 8848, 1
    )
    assert answers.daemon_of(nla(1, b"")) is None
    with pytest.raises(answers.BadAnswer, match="state 3"):
        answers.daemon_of(nla(3, nla(1, u32(3)) + nla(2, b"eth1\0") + nla(3, u32(7))))


def header(size: int, kind: int, flags: int, seq: int) -> bytes:
    return struct.pack("=IHHII", size, kind, flags, seq, 0)


def error_message(seq: int, code: int, text: bytes = b"") -> bytes:
    """NLMSG_ERROR as a socket with NETLINK_CAP_ACK and NETLINK_EXT_ACK gets it."""
    tlvs = nla(1, text + b"\0") if text else b""
    body = struct.pack("=i", -code) + header(20, 0x20, 5, seq) + tlvs
    return header(16 + len(body), nl.NLMSG_ERROR, 0x100 | (0x200 if tlvs else 0), seq) + body


def test_answers_errors_with_the_kernels_text_and_a_truncated_tail() -> None:
    data = (
        error_message(5, 0)
        + error_message(6, errno.EEXIST)
        + error_message(7, errno.EINVAL, b"Attribute failed policy validation")
    )
    found = list(nl.answers(data + header(64, 30, 0, 8)[:12]))
    assert [(a.seq, a.error and a.error.code) for a in found] == [
        (5, None),
        (6, errno.EEXIST),
        (7, errno.EINVAL),
    ]
    assert str(found[2].error) == "Invalid argument (Attribute failed policy validation)"
    assert list(nl.answers(header(8, 30, 0, 1))) == []  # shorter than a header


def test_the_end_of_a_request_is_seen_without_parsing() -> None:
    done = header(20, nl.NLMSG_DONE, nl.NLM_F_MULTI, 4) + struct.pack("=i", 0)
    assert nl.ended(done, 4) and nl.ended(error_message(4, 0), 4)
    assert not nl.ended(done, 5)  # another request's
    assert not nl.ended(error_message(4, errno.EEXIST), 4)  # a refusal: for answers()
    assert not nl.ended(done + done, 4) and not nl.ended(done[:12], 4)


def test_a_datagram_of_same_sized_answers_is_split_at_once() -> None:
    dests = [kernel_dest(f"10.0.0.{n}", 80, n) for n in range(1, 5)]
    data = b"".join(header(20 + len(p), 30, nl.NLM_F_MULTI, 9) + b"\0" * 4 + p for p in dests)
    assert nl.uniform(data, 9) == dests
    assert nl.uniform(data, 8) is None  # another request's
    assert nl.uniform(data + error_message(9, 0), 9) is None  # ends with its DONE


def test_pipelined_writes_tie_each_refusal_to_its_request() -> None:
    """BATCH family lookups in one send on this kernel's controller: the unknown names are
    refused, each at its own place, whatever the place (the last one too)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
    genl = GenlSocket(sock)
    genl.family = nl.GENL_ID_CTRL
    try:
        sock.setsockopt(270, 10, 1)  # NETLINK_CAP_ACK
        sock.setsockopt(270, 11, 1)  # NETLINK_EXT_ACK
        sock.settimeout(5)
        names = [b"nlctrl" if n % 3 else b"nofamily%d" % n for n in range(BATCH)]
        requests = [(nl.CTRL_CMD_GETFAMILY, nla(2, name + b"\0")) for name in names]
        for _ in range(3):  # sequence numbers go on across batches
            refusals = genl.write(requests)
            assert [r is not None for r in refusals] == [n % 3 == 0 for n in range(BATCH)]
            assert {r.code for r in refusals if r is not None} == {errno.ENOENT}
        refused_last = genl.write([requests[1], requests[0]])
        assert [r is None for r in refused_last] == [True, False]
        with pytest.raises(ValueError, match="1 to 64 requests"):
            genl.write(requests * 2)
    finally:
        genl.close()
