"""The IPVS generic-netlink wire format, both ways, as pure functions: no socket, no state
beyond caches of what was already decoded.

Requests are packed with struct (pyroute2's message objects cost ~0.6 ms each); answers
are decoded in the kernel's own attribute layout where it has one (linux/ip_vs.h,
net/netfilter/ipvs/ip_vs_ctl.c). Nothing here decides anything.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from hapair.ipvs.table import Dest, DestKey, IPAddress, Service, ServiceKey

# Netlink and generic netlink (linux/netlink.h, linux/genetlink.h).
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
_NLM_F_ACK_TLVS = 0x200
_NLMSGERR_ATTR_MSG = 1
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
HDR = struct.Struct("=IHHII")  # nlmsghdr
_GENL = struct.Struct("=BBH")  # genlmsghdr
_NLA = struct.Struct("=HH")
_ANSWER_AT = HDR.size + _GENL.size  # where an answer's payload starts

# IPVS (linux/ip_vs.h).
_IPVS_VERSION = 1
NEW_SERVICE, SET_SERVICE, DEL_SERVICE, GET_SERVICE = 1, 2, 3, 4
NEW_DEST, SET_DEST, DEL_DEST, GET_DEST = 5, 6, 7, 8
NEW_DAEMON, DEL_DAEMON, GET_DAEMON, ZERO, FLUSH = 9, 10, 11, 16, 17
_CMD_SERVICE, _CMD_DEST, _CMD_DAEMON = 1, 2, 3
_SVC_AF, _SVC_PROTOCOL, _SVC_ADDR, _SVC_PORT, _SVC_FWMARK = 1, 2, 3, 4, 5
_SVC_SCHED, _SVC_FLAGS, _SVC_TIMEOUT, _SVC_NETMASK = 6, 7, 8, 9
_SVC_STATS, _SVC_STATS64 = 10, 12
_DEST_ADDR, _DEST_PORT, _DEST_FWD, _DEST_WEIGHT, _DEST_UTH, _DEST_LTH = 1, 2, 3, 4, 5, 6
_DEST_ACTIVE, _DEST_INACTIVE, _DEST_AF, _DEST_TUN_TYPE, _DEST_TUN_PORT = 7, 8, 11, 13, 14
_DAEMON_STATE, _DAEMON_IFN, _DAEMON_SYNC_ID, _DAEMON_MAXLEN = 1, 2, 3, 4
_DAEMON_GROUP, _DAEMON_GROUP6, _DAEMON_PORT, _DAEMON_TTL = 5, 6, 7, 8

_F_PERSISTENT, _F_ONEPACKET = 0x1, 0x4
_F_SCHED = (0x8, 0x10, 0x20)  # IP_VS_SVC_F_SCHED1..3: meaning depends on the scheduler
_SCHED_FLAG_NAMES = {  # the names ipvsadm -b uses
    "sh": ("sh-fallback", "sh-port", "flag-3"),
    "mh": ("mh-fallback", "mh-port", "flag-3"),
}
_GENERIC_FLAG_NAMES = ("flag-1", "flag-2", "flag-3")

_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
_PROTOCOL_NAMES = {v: k for k, v in _PROTOCOLS.items()}
# Kernel codes IP_VS_CONN_F_MASQ/LOCALNODE/TUNNEL/DROUTE/BYPASS; hapair writes nat/tun/dr.
_FORWARDS = {"nat": 0, "local": 1, "tun": 2, "dr": 3, "bypass": 4}
_FORWARD_NAMES = {v: k for k, v in _FORWARDS.items()}
_AF: dict[int, int] = {4: socket.AF_INET, 6: socket.AF_INET6}
_FAMILY = {v: k for k, v in _AF.items()}
_TUNNELS = {"ipip": 0, "gue": 1, "gre": 2}
_TUNNEL_NAMES = {v: k for k, v in _TUNNELS.items()}


class SyncState(IntEnum):
    MASTER = 1
    BACKUP = 2


@dataclass(frozen=True)
class DaemonInfo:
    state: SyncState
    ifname: str
    sync_id: int
    maxlen: int | None = None
    group: IPv4Address | IPv6Address | None = None
    port: int | None = None
    ttl: int | None = None


class KernelError(Exception):
    """The kernel refused a request: `code` is its errno, `reason` strerror and its text."""

    def __init__(self, code: int, text: str | None) -> None:
        self.code = code
        reason = os.strerror(code)
        self.reason = f"{reason} ({text})" if text else reason
        super().__init__(self.reason)


# --- netlink messages ----------------------------------------------------------------------


def message(msg_type: int, flags: int, seq: int, cmd: int, payload: bytes) -> bytes:
    """One generic-netlink request."""
    size = _ANSWER_AT + len(payload)
    return HDR.pack(size, msg_type, flags, seq, 0) + _GENL.pack(cmd, _IPVS_VERSION, 0) + payload


@dataclass(frozen=True, slots=True)
class Answer:
    seq: int
    kind: int  # NLMSG_ERROR, NLMSG_DONE, or the family's id
    flags: int
    payload: bytes  # after the genl header; empty for ERROR and DONE
    error: KernelError | None = None  # ERROR with a code other than 0, DONE with one


def answers(data: bytes) -> Iterator[Answer]:
    """The messages of one datagram from the kernel; a truncated tail is ignored."""
    offset = 0
    while offset + HDR.size <= len(data):
        size, kind, flags, seq, _ = HDR.unpack_from(data, offset)
        if size < HDR.size or offset + size > len(data):
            return
        if kind in (NLMSG_ERROR, NLMSG_DONE):
            yield Answer(seq, kind, flags, b"", _error_of(data, offset, size, kind, flags))
        else:
            yield Answer(seq, kind, flags, data[offset + _ANSWER_AT : offset + size])
        offset += (size + 3) & ~3


def uniform(data: bytes, seq: int) -> list[bytes] | None:
    """The payloads of `data` when it holds only dump answers to `seq`, all of one size (a
    destination dump: one datagram of ten costs one call); else None."""
    if len(data) < HDR.size:
        return None
    size, kind, _, _, _ = HDR.unpack_from(data)
    if kind <= NLMSG_DONE or size <= _ANSWER_AT or len(data) % size:
        return None
    header = (size, kind, NLM_F_MULTI, seq)
    found = [r[5] for r in _uniform_layout(size).iter_unpack(data) if r[:4] == header]
    return found if len(found) * size == len(data) else None


@functools.lru_cache(maxsize=64)
def _uniform_layout(size: int) -> struct.Struct:
    # nlmsghdr, genlmsghdr (skipped), then the payload
    return struct.Struct(f"=IHHII4x{size - _ANSWER_AT}s")


def _error_of(data: bytes, offset: int, size: int, kind: int, flags: int) -> KernelError | None:
    if size < HDR.size + 4:
        return None
    code = -struct.unpack_from("=i", data, offset + HDR.size)[0]
    if code == 0:
        return None
    text = None
    if kind == NLMSG_ERROR and flags & _NLM_F_ACK_TLVS:
        # error, then our header (capped ack: no payload), then the extended-ack attributes
        tlvs = attrs(data[offset + HDR.size + 4 + HDR.size : offset + size])
        if _NLMSGERR_ATTR_MSG in tlvs:
            text = tlvs[_NLMSGERR_ATTR_MSG].split(b"\0", 1)[0].decode(errors="replace")
    return KernelError(code, text)


def family_request() -> bytes:
    """The payload of CTRL_CMD_GETFAMILY for IPVS."""
    return attr(CTRL_ATTR_FAMILY_NAME, b"IPVS\0")


def family_id(payload: bytes) -> int:
    return _get_u16(attrs(payload), CTRL_ATTR_FAMILY_ID)


# --- the model -> attributes ---------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def service_attr(key: ServiceKey) -> bytes:
    """The service's key, as the one attribute that names it in a request."""
    return attr(_CMD_SERVICE, _key_attrs(key))


def service_payload(service: Service) -> bytes:
    """NEW_SERVICE or SET_SERVICE: the key and the settings (not the destinations)."""
    return attr(_CMD_SERVICE, _key_attrs(service.key) + _settings_attrs(service))


def dest_payload(key: ServiceKey, dest: Dest) -> bytes:
    """NEW_DEST or SET_DEST."""
    forward = _FORWARDS.get(dest.forward)
    if forward is None:
        raise ValueError(f"unknown forwarding method {dest.forward!r}")
    nested = _dest_key_attrs(dest.key) + _DEST_SETTINGS.pack(
        8, _DEST_FWD, forward,
        8, _DEST_WEIGHT, dest.weight,
        8, _DEST_UTH, dest.upper_threshold,
        8, _DEST_LTH, dest.lower_threshold,
    )  # fmt: skip
    if dest.forward == "tun":  # kernels before 5.3 know no tunnel types: ipip only
        tunnel = _TUNNELS.get(dest.tunnel)
        if tunnel is None:
            raise ValueError(f"unknown tunnel type {dest.tunnel!r}")
        nested += attr(_DEST_TUN_TYPE, bytes([tunnel])) + attr(
            _DEST_TUN_PORT, _be16(dest.tunnel_port)
        )
    return service_attr(key) + attr(_CMD_DEST, nested)


def dest_key_payload(key: ServiceKey, dest_key: DestKey) -> bytes:
    """DEL_DEST."""
    return service_attr(key) + attr(_CMD_DEST, _dest_key_attrs(dest_key))


def daemon_payload(
    state: SyncState,
    ifname: str,
    sync_id: int,
    *,
    maxlen: int | None = None,
    group: IPAddress | None = None,
    port: int | None = None,
    ttl: int | None = None,
) -> bytes:
    """NEW_DAEMON (the kernel wants state, interface and sync id; the rest is optional)."""
    nested = (
        attr(_DAEMON_STATE, _u32(state))
        + attr(_DAEMON_IFN, ifname.encode() + b"\0")
        + attr(_DAEMON_SYNC_ID, _u32(sync_id))
    )
    if maxlen is not None:
        nested += attr(_DAEMON_MAXLEN, _u16(maxlen))
    if group is not None:
        nested += attr(_DAEMON_GROUP if group.version == 4 else _DAEMON_GROUP6, group.packed)
    if port is not None:
        nested += attr(_DAEMON_PORT, _u16(port))  # host order, as ipvsadm sends it
    if ttl is not None:
        nested += attr(_DAEMON_TTL, bytes([ttl]))
    return attr(_CMD_DAEMON, nested)


def daemon_state_payload(state: SyncState) -> bytes:
    """DEL_DAEMON."""
    return attr(_CMD_DAEMON, attr(_DAEMON_STATE, _u32(state)))


@functools.lru_cache(maxsize=4096)
def _key_attrs(key: ServiceKey) -> bytes:
    af = _AF.get(key.family)
    if af is None:
        raise ValueError(f"family must be 4 or 6, not {key.family}")
    out = attr(_SVC_AF, _u16(af))
    if key.protocol == "fwmark":
        return out + attr(_SVC_FWMARK, _u32(key.fwmark))
    protocol = _PROTOCOLS.get(key.protocol)
    if protocol is None:
        raise ValueError(f"unknown protocol {key.protocol!r}")
    if key.address is None or key.address.version != key.family:
        raise ValueError(f"needs an IPv{key.family} address")
    return (
        out
        + attr(_SVC_PROTOCOL, _u16(protocol))
        + attr(_SVC_ADDR, key.address.packed)
        + attr(_SVC_PORT, _be16(key.port))
    )


def _settings_attrs(service: Service) -> bytes:
    flags = _F_PERSISTENT if service.persistence > 0 else 0
    names = _SCHED_FLAG_NAMES.get(service.scheduler, _GENERIC_FLAG_NAMES)
    for name in service.flags:
        if name == "ops":
            flags |= _F_ONEPACKET
        elif name in names:
            flags |= _F_SCHED[names.index(name)]
        else:
            raise ValueError(f"flag {name!r} does not apply to scheduler {service.scheduler!r}")
    return (
        attr(_SVC_SCHED, service.scheduler.encode() + b"\0")
        + attr(_SVC_FLAGS, struct.pack("=II", flags, 0xFFFFFFFF))
        + attr(_SVC_TIMEOUT, _u32(service.persistence))
        + attr(_SVC_NETMASK, _netmask_bytes(service.key.family, service.netmask))
    )


def _netmask_bytes(family: int, prefix: int) -> bytes:
    # The kernel keeps the 4 bytes it was given: an IPv4 mask in network order, an IPv6
    # prefix length as a host-order integer (as ipvsadm sends them).
    limit = 32 if family == 4 else 128
    if not 0 <= prefix <= limit:
        raise ValueError(f"netmask /{prefix} out of range")
    if family == 4:
        return ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF).to_bytes(4, "big")
    return prefix.to_bytes(4, sys.byteorder)


_DEST_SETTINGS = struct.Struct("=HHIHHIHHIHHI")  # forwarding, weight, thresholds


@functools.lru_cache(maxsize=65536)
def _dest_key_attrs(key: DestKey) -> bytes:
    return (
        attr(_DEST_ADDR, key.address.packed)
        + attr(_DEST_PORT, _be16(key.port))
        + attr(_DEST_AF, _u16(_AF[key.address.version]))
    )


# --- attributes -> the model ---------------------------------------------------------------


class ServiceReader:
    """Services from the answers to GET_SERVICE, each distinct description decoded once
    (a periodic dump of an unchanged table builds no objects)."""

    def __init__(self) -> None:
        self._known: dict[bytes, Service] = {}
        self._stats_size = 0  # of a service's statistics, the tail of its description

    def read(self, payload: bytes) -> Service | None:
        """The service (without destinations) of one answer; None: the answer has none."""
        inner = attrs(payload).get(_CMD_SERVICE)
        if inner is None:
            return None
        # The statistics (which change with every packet) are the tail, of one size for
        # all services: a known description followed by statistics is found without
        # walking its attributes.
        cut = len(inner) - self._stats_size
        known = None
        if self._stats_size and cut > 0 and _NLA.unpack_from(inner, cut)[1] & 0x3FFF == _SVC_STATS:
            known = self._known.get(inner[:cut])
        if known is None:
            cut = _stats_offset(inner)
            self._stats_size = len(inner) - cut
            if len(self._known) > _PARSED_MAX:
                self._known.clear()
            known = self._known[inner[:cut]] = _service_from(attrs(inner[:cut]))
        return Service(known.key, known.scheduler, known.persistence, known.netmask, known.flags)


class DestReader:
    """A service's destinations from the answers to GET_DEST: a set of answers seen before
    (statistics excluded) costs one tuple and one dict copy; a destination in the kernel's
    usual layout is unpacked with one struct call."""

    def __init__(self) -> None:
        self._known: dict[bytes, Dest] = {}
        self._known_sets: dict[tuple[bytes, ...], dict[DestKey, Dest]] = {}

    def read(self, answers: list[bytes], service_family: int) -> dict[DestKey, Dest]:
        described = tuple([payload[:_DEST_CACHED] for payload in answers])
        known_set = self._known_sets.get(described)
        if known_set is not None:
            return dict(known_set)
        known, dests = self._known, {}
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
        return dests


def daemon_of(payload: bytes) -> DaemonInfo | None:
    """The sync daemon of one answer to GET_DAEMON."""
    nested = attrs(payload).get(_CMD_DAEMON)
    if nested is None:
        return None
    a = attrs(nested)
    raw = a.get(_DAEMON_GROUP6) or a.get(_DAEMON_GROUP)
    group: IPAddress | None = None
    if raw is not None:
        group = IPv4Address(raw[:4]) if len(raw) == 4 else IPv6Address(raw[:16])
    return DaemonInfo(
        state=SyncState(_get_u32(a, _DAEMON_STATE)),
        ifname=a.get(_DAEMON_IFN, b"").split(b"\0", 1)[0].decode(errors="replace"),
        sync_id=_get_u32(a, _DAEMON_SYNC_ID),
        maxlen=_get_u16(a, _DAEMON_MAXLEN) if _DAEMON_MAXLEN in a else None,
        group=group,
        port=_get_u16(a, _DAEMON_PORT) if _DAEMON_PORT in a else None,
        ttl=a[_DAEMON_TTL][0] if a.get(_DAEMON_TTL) else None,
    )


def _service_from(a: dict[int, bytes]) -> Service:
    family = _FAMILY.get(_get_u16(a, _SVC_AF), 0)
    if _SVC_FWMARK in a:
        key = ServiceKey("fwmark", fwmark=_get_u32(a, _SVC_FWMARK), family=family)
    else:
        number = _get_u16(a, _SVC_PROTOCOL)
        key = ServiceKey(
            _PROTOCOL_NAMES.get(number, f"proto-{number}"),
            address=_address(a[_SVC_ADDR], family),
            port=int.from_bytes(a[_SVC_PORT][:2], "big"),
            family=family,
        )
    scheduler = a[_SVC_SCHED].split(b"\0", 1)[0].decode()
    bits = struct.unpack_from("=I", a[_SVC_FLAGS])[0] if _SVC_FLAGS in a else 0
    names = _SCHED_FLAG_NAMES.get(scheduler, _GENERIC_FLAG_NAMES)
    flags = {name for bit, name in zip(_F_SCHED, names, strict=True) if bits & bit}
    if bits & _F_ONEPACKET:
        flags.add("ops")
    timeout = _get_u32(a, _SVC_TIMEOUT)
    return Service(
        key=key,
        scheduler=scheduler,
        persistence=timeout if bits & _F_PERSISTENT else 0,
        netmask=_prefix(a.get(_SVC_NETMASK), family),
        flags=frozenset(flags),
    )


def _stats_offset(buf: bytes) -> int:
    """Where a service's statistics start (the kernel sends them after its settings)."""
    offset, end = 0, len(buf)
    while offset + 4 <= end:
        size, kind = _NLA.unpack_from(buf, offset)
        if size < 4 or kind & 0x3FFF in (_SVC_STATS, _SVC_STATS64):
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
    family = _FAMILY.get(_get_u16(a, _DEST_AF), service_family)
    code = _get_u32(a, _DEST_FWD)
    return Dest(
        key=DestKey(
            _address(a[_DEST_ADDR], family),
            int.from_bytes(a[_DEST_PORT][:2], "big"),
        ),
        weight=_get_u32(a, _DEST_WEIGHT),
        forward=_FORWARD_NAMES.get(code & 0x7, f"forward-{code & 0x7}"),
        upper_threshold=_get_u32(a, _DEST_UTH),
        lower_threshold=_get_u32(a, _DEST_LTH),
        tunnel=_TUNNEL_NAMES.get(a[_DEST_TUN_TYPE][0], "?") if _DEST_TUN_TYPE in a else "ipip",
        tunnel_port=int.from_bytes(a[_DEST_TUN_PORT][:2], "big") if _DEST_TUN_PORT in a else 0,
        active_conns=_get_u32(a, _DEST_ACTIVE),
        inactive_conns=_get_u32(a, _DEST_INACTIVE),
    )


# A destination as Linux (5.3 and later) sends it: the attributes that describe it and its
# connection counts, in this order, then its statistics (which change with every packet,
# so they are not part of what `_DEST_CACHED` bytes key).
DEST_LAYOUT = (
    (_DEST_ADDR, 16),
    (_DEST_PORT, 2),
    (_DEST_FWD, 4),
    (_DEST_WEIGHT, 4),
    (_DEST_TUN_TYPE, 1),
    (_DEST_TUN_PORT, 2),
    (15, 2),  # tunnel flags
    (_DEST_UTH, 4),
    (_DEST_LTH, 4),
    (_DEST_ACTIVE, 4),
    (_DEST_INACTIVE, 4),
    (9, 4),  # persistent connections
    (_DEST_AF, 2),
)
_VALUE_FORMATS = {16: "16s", 4: "I", 2: "2s2x", 1: "B3x"}
_DEST_STRUCT = struct.Struct(  # after CMD_DEST's header: (attribute header, value) each
    "=4x" + "".join(f"4s{_VALUE_FORMATS[size]}" for _, size in DEST_LAYOUT)
)
_DEST_HEADERS = tuple(_NLA.pack(4 + size, kind) for kind, size in DEST_LAYOUT)
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
    family = _FAMILY.get(int.from_bytes(af, sys.byteorder), service_family)
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
        _FORWARD_NAMES.get(fwd & 0x7, f"forward-{fwd & 0x7}"),
        uth,
        lth,
        _TUNNEL_NAMES.get(tun, "?"),
        int.from_bytes(tun_port, "big"),
        active,
        inactive,
    )


def dest_of(payload: bytes, service_family: int) -> Dest | None:
    """The destination in one answer of a destination dump, attribute by attribute (None:
    there is none)."""
    outer = attrs(payload)
    if _CMD_DEST not in outer:
        return None
    return _dest_from(attrs(outer[_CMD_DEST]), service_family)


def _address(raw: bytes, family: int) -> IPAddress:
    return IPv4Address(raw[:4]) if family == 4 else IPv6Address(raw[:16])


# --- netlink attributes --------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def attrs(buf: bytes, offset: int = 0) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    end = len(buf)
    while offset + 4 <= end:
        size, kind = _NLA.unpack_from(buf, offset)
        if size < 4:
            break
        out[kind & 0x3FFF] = buf[offset + 4 : offset + size]  # without NESTED/BYTEORDER bits
        offset += (size + 3) & ~3
    return out


def _u16(value: int) -> bytes:
    return struct.pack("=H", value)


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _be16(value: int) -> bytes:
    return struct.pack(">H", value)


def _get_u16(a: dict[int, bytes], kind: int) -> int:
    return struct.unpack_from("=H", a[kind])[0] if len(a.get(kind, b"")) >= 2 else 0


def _get_u32(a: dict[int, bytes], kind: int) -> int:
    return struct.unpack_from("=I", a[kind])[0] if len(a.get(kind, b"")) >= 4 else 0
