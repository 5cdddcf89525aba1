"""IPVS's generic-netlink answers decoded into the model (wire.py makes the requests), as
pure functions and readers: no socket, no state beyond caches of what was already decoded.

Answers are decoded in the kernel's own attribute layout where it has one
(net/netfilter/ipvs/ip_vs_ctl.c); one that is not IPVS's raises `BadAnswer`.
"""

from __future__ import annotations

import struct
import sys
from ipaddress import IPv4Address, IPv6Address

from hapair.ipvs import netlink as nl
from hapair.ipvs.table import Dest, DestKey, IPAddress, ServiceKey, VirtualService
from hapair.ipvs.wire import (
    CMD_DAEMON,
    CMD_DEST,
    CMD_SERVICE,
    DAEMON_GROUP,
    DAEMON_GROUP6,
    DAEMON_IFN,
    DAEMON_MAXLEN,
    DAEMON_PORT,
    DAEMON_STATE,
    DAEMON_SYNC_ID,
    DAEMON_TTL,
    DEST_ACTIVE,
    DEST_ADDR,
    DEST_AF,
    DEST_FWD,
    DEST_INACTIVE,
    DEST_LTH,
    DEST_PORT,
    DEST_TUN_PORT,
    DEST_TUN_TYPE,
    DEST_UTH,
    DEST_WEIGHT,
    F_ONEPACKET,
    F_PERSISTENT,
    F_SCHED,
    FAMILY,
    FORWARD_NAMES,
    GENERIC_FLAG_NAMES,
    PROTOCOL_NAMES,
    SCHED_FLAG_NAMES,
    SVC_ADDR,
    SVC_AF,
    SVC_FLAGS,
    SVC_FWMARK,
    SVC_NETMASK,
    SVC_PORT,
    SVC_PROTOCOL,
    SVC_SCHED,
    SVC_STATS,
    SVC_STATS64,
    SVC_TIMEOUT,
    TUNNEL_NAMES,
    SyncDaemon,
    SyncState,
)


class BadAnswer(ValueError):
    """An answer that no IPVS of Linux sends (a state it has no name for)."""


class ServiceReader:
    """Services from the answers to GET_SERVICE, each distinct description decoded once
    (a periodic dump of an unchanged table builds no objects)."""

    def __init__(self) -> None:
        self._known: dict[bytes, VirtualService] = {}
        self._stats_size = 0  # of a service's statistics, the tail of its description

    def read(self, payload: bytes) -> VirtualService | None:
        """The service (without destinations) of one answer; None: the answer has none."""
        inner = nl.attrs(payload).get(CMD_SERVICE)
        if inner is None:
            return None
        # The statistics (which change with every packet) are the tail, of one size for
        # all services: a known description followed by statistics is found without
        # walking its attributes.
        cut = len(inner) - self._stats_size
        known = None
        at_stats = self._stats_size and 0 < cut <= len(inner) - 4
        if at_stats and nl.NLA.unpack_from(inner, cut)[1] & 0x3FFF == SVC_STATS:
            known = self._known.get(inner[:cut])
        if known is None:
            cut = _stats_offset(inner)
            self._stats_size = len(inner) - cut
            if len(self._known) > _PARSED_MAX:
                self._known.clear()
            known = self._known[inner[:cut]] = _service_from(nl.attrs(inner[:cut]))
        return VirtualService(
            known.key, known.scheduler, known.persistence, known.netmask, known.flags
        )


class DestReader:
    """A service's destinations from the answers to GET_DEST: a set of answers seen before
    (statistics excluded) costs one tuple and one dict copy; a destination in the kernel's
    usual layout is unpacked with one struct call."""

    def __init__(self) -> None:
        self._known: dict[bytes, Dest] = {}
        self._known_sets: dict[tuple[bytes, ...], dict[DestKey, Dest]] = {}

    def read(self, answers: list[bytes], service_family: int, dests: dict[DestKey, Dest]) -> None:
        """Adds the destinations of `answers` to `dests`."""
        described = tuple([payload[:_DEST_CACHED] for payload in answers])
        known_set = self._known_sets.get(described)
        if known_set is not None:
            dests.update(known_set)
            return
        known = self._known
        in_layout = True
        for payload in answers:
            dest = known.get(payload[:_DEST_CACHED])
            if dest is None:
                dest = _dest_in_layout(payload, service_family)
                if dest is not None:  # the bytes of the key describe all of it
                    if len(known) > _PARSED_MAX:
                        known.clear()
                    known[payload[:_DEST_CACHED]] = dest
                else:
                    in_layout = False
                    dest = dest_of(payload, service_family)
                    if dest is None:
                        continue
            dests[dest.key] = dest
        if in_layout:
            if len(self._known_sets) > _PARSED_MAX // 8:
                self._known_sets.clear()
            self._known_sets[described] = dict(dests)


def daemon_of(payload: bytes) -> SyncDaemon | None:
    """The sync daemon of one answer to GET_DAEMON."""
    nested = nl.attrs(payload).get(CMD_DAEMON)
    if nested is None:
        return None
    a = nl.attrs(nested)
    raw = a.get(DAEMON_GROUP6) or a.get(DAEMON_GROUP)
    group: IPAddress | None = None
    if raw is not None:
        group = IPv4Address(raw[:4]) if len(raw) == 4 else IPv6Address(raw[:16])
    code = nl.get_u32(a, DAEMON_STATE)
    if code not in SyncState._value2member_map_:
        raise BadAnswer(f"a sync daemon in state {code}, neither master nor backup")
    return SyncDaemon(
        state=SyncState(code),
        ifname=a.get(DAEMON_IFN, b"").split(b"\0", 1)[0].decode(errors="replace"),
        sync_id=nl.get_u32(a, DAEMON_SYNC_ID),
        maxlen=nl.get_u16(a, DAEMON_MAXLEN) if DAEMON_MAXLEN in a else None,
        group=group,
        port=nl.get_u16(a, DAEMON_PORT) if DAEMON_PORT in a else None,
        ttl=a[DAEMON_TTL][0] if a.get(DAEMON_TTL) else None,
    )


def _service_from(a: dict[int, bytes]) -> VirtualService:
    family = FAMILY.get(nl.get_u16(a, SVC_AF), 0)
    if SVC_FWMARK in a:
        key = ServiceKey("fwmark", fwmark=nl.get_u32(a, SVC_FWMARK), family=family)
    else:
        number = nl.get_u16(a, SVC_PROTOCOL)
        key = ServiceKey(
            PROTOCOL_NAMES.get(number, f"proto-{number}"),
            address=_address(a[SVC_ADDR], family),
            port=int.from_bytes(a[SVC_PORT][:2], "big"),
            family=family,
        )
    scheduler = a[SVC_SCHED].split(b"\0", 1)[0].decode()
    bits = struct.unpack_from("=I", a[SVC_FLAGS])[0] if SVC_FLAGS in a else 0
    names = SCHED_FLAG_NAMES.get(scheduler, GENERIC_FLAG_NAMES)
    flags = {name for bit, name in zip(F_SCHED, names, strict=True) if bits & bit}
    if bits & F_ONEPACKET:
        flags.add("ops")
    timeout = nl.get_u32(a, SVC_TIMEOUT)
    return VirtualService(
        key=key,
        scheduler=scheduler,
        persistence=timeout if bits & F_PERSISTENT else 0,
        netmask=_prefix(a.get(SVC_NETMASK), family),
        flags=frozenset(flags),
    )


def _stats_offset(buf: bytes) -> int:
    """Where a service's statistics start (the kernel sends them after its settings)."""
    offset, end = 0, len(buf)
    while offset + 4 <= end:
        size, kind = nl.NLA.unpack_from(buf, offset)
        if size < 4 or kind & 0x3FFF in (SVC_STATS, SVC_STATS64):
            break
        offset += (size + 3) & ~3
    return offset


def _prefix(raw: bytes | None, family: int) -> int:
    if raw is None:
        return 32 if family == 4 else 128
    if family == 6:
        return int.from_bytes(raw[:4], sys.byteorder)
    mask = int.from_bytes(raw[:4], "big")
    ones = bin(mask).count("1")
    # A non-contiguous mask (ipvsadm allows it) has no prefix length: -1 differs from any
    # configured value, so a reconciler rewrites it.
    return ones if mask == (0xFFFFFFFF << (32 - ones)) & 0xFFFFFFFF else -1


def _dest_from(a: dict[int, bytes], service_family: int) -> Dest:
    # Older kernels send no address family: the destination then has the service's.
    family = FAMILY.get(nl.get_u16(a, DEST_AF), service_family)
    code = nl.get_u32(a, DEST_FWD)
    return Dest(
        key=DestKey(
            _address(a[DEST_ADDR], family),
            int.from_bytes(a[DEST_PORT][:2], "big"),
        ),
        weight=nl.get_u32(a, DEST_WEIGHT),
        forward=FORWARD_NAMES.get(code & 0x7, f"forward-{code & 0x7}"),
        upper_threshold=nl.get_u32(a, DEST_UTH),
        lower_threshold=nl.get_u32(a, DEST_LTH),
        tunnel=TUNNEL_NAMES.get(a[DEST_TUN_TYPE][0], "?") if DEST_TUN_TYPE in a else "ipip",
        tunnel_port=int.from_bytes(a[DEST_TUN_PORT][:2], "big") if DEST_TUN_PORT in a else 0,
        active_conns=nl.get_u32(a, DEST_ACTIVE),
        inactive_conns=nl.get_u32(a, DEST_INACTIVE),
    )


# A destination as Linux (5.3 and later) sends it: the attributes that describe it and its
# connection counts, in this order, then its statistics (which change with every packet,
# so they are not part of what `_DEST_CACHED` bytes key).
DEST_LAYOUT = (
    (DEST_ADDR, 16),
    (DEST_PORT, 2),
    (DEST_FWD, 4),
    (DEST_WEIGHT, 4),
    (DEST_TUN_TYPE, 1),
    (DEST_TUN_PORT, 2),
    (15, 2),  # tunnel flags
    (DEST_UTH, 4),
    (DEST_LTH, 4),
    (DEST_ACTIVE, 4),
    (DEST_INACTIVE, 4),
    (9, 4),  # persistent connections
    (DEST_AF, 2),
)
_VALUE_FORMATS = {16: "16s", 4: "I", 2: "2s2x", 1: "B3x"}
_DEST_STRUCT = struct.Struct(  # after CMD_DEST's header: (attribute header, value) each
    "=4x" + "".join(f"4s{_VALUE_FORMATS[size]}" for _, size in DEST_LAYOUT)
)
_DEST_HEADERS = tuple(nl.NLA.pack(4 + size, kind) for kind, size in DEST_LAYOUT)
_DEST_CACHED = _DEST_STRUCT.size
_PARSED_MAX = 200_000
_dest_keys: dict[tuple[bytes, bytes, int], DestKey] = {}  # one object per destination


def _dest_in_layout(payload: bytes, service_family: int) -> Dest | None:
    """The destination of one dump answer in `DEST_LAYOUT`, unpacked in one call (None:
    another layout, for `dest_of`)."""
    if len(payload) < _DEST_CACHED:
        return None
    values = _DEST_STRUCT.unpack_from(payload)
    if values[0::2] != _DEST_HEADERS:
        return None
    addr, port, fwd, weight, tun, tun_port, _, uth, lth, active, inactive, _, af = values[1::2]
    family = FAMILY.get(int.from_bytes(af, sys.byteorder), service_family)
    key = _dest_keys.get((addr, port, family))
    if key is None:
        if len(_dest_keys) > _PARSED_MAX:
            _dest_keys.clear()
        key = _dest_keys[addr, port, family] = DestKey(
            _address(addr, family), int.from_bytes(port, "big")
        )
    return Dest(
        key,
        weight,
        FORWARD_NAMES.get(fwd & 0x7, f"forward-{fwd & 0x7}"),
        uth,
        lth,
        TUNNEL_NAMES.get(tun, "?"),
        int.from_bytes(tun_port, "big"),
        active,
        inactive,
    )


def dest_of(payload: bytes, service_family: int) -> Dest | None:
    """The destination in one answer of a destination dump, attribute by attribute (None:
    there is none)."""
    outer = nl.attrs(payload)
    if CMD_DEST not in outer:
        return None
    return _dest_from(nl.attrs(outer[CMD_DEST]), service_family)


def _address(raw: bytes, family: int) -> IPAddress:
    return IPv4Address(raw[:4]) if family == 4 else IPv6Address(raw[:16])
