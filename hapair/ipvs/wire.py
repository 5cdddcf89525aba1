"""IPVS's generic-netlink requests and answers (netlink.py frames them), both ways, as pure
functions: no socket, no state beyond caches of what was already decoded.

Requests are packed with struct (pyroute2's message objects cost ~0.6 ms each); answers
are decoded in the kernel's own attribute layout where it has one (linux/ip_vs.h,
net/netfilter/ipvs/ip_vs_ctl.c). Nothing here decides anything.
"""

from __future__ import annotations

import functools
import socket
import struct
import sys
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from hapair.ipvs import netlink as nl
from hapair.ipvs.table import Dest, DestKey, IPAddress, ServiceKey, VirtualService

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
class SyncDaemon:
    state: SyncState
    ifname: str
    sync_id: int
    maxlen: int | None = None
    group: IPv4Address | IPv6Address | None = None
    port: int | None = None
    ttl: int | None = None


# --- the model -> attributes ---------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def service_attr(key: ServiceKey) -> bytes:
    """The service's key, as the one attribute that names it in a request."""
    return nl.attr(_CMD_SERVICE, _key_attrs(key))


def service_payload(service: VirtualService) -> bytes:
    """NEW_SERVICE or SET_SERVICE: the key and the settings (not the destinations)."""
    return nl.attr(_CMD_SERVICE, _key_attrs(service.key) + _settings_attrs(service))


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
        nested += nl.attr(_DEST_TUN_TYPE, bytes([tunnel])) + nl.attr(
            _DEST_TUN_PORT, nl.be16(dest.tunnel_port)
        )
    return service_attr(key) + nl.attr(_CMD_DEST, nested)


def dest_key_payload(key: ServiceKey, dest_key: DestKey) -> bytes:
    """DEL_DEST."""
    return service_attr(key) + nl.attr(_CMD_DEST, _dest_key_attrs(dest_key))


def daemon_payload(daemon: SyncDaemon) -> bytes:
    """NEW_DAEMON (the kernel wants state, interface and sync id; the rest is optional)."""
    nested = (
        nl.attr(_DAEMON_STATE, nl.u32(daemon.state))
        + nl.attr(_DAEMON_IFN, daemon.ifname.encode() + b"\0")
        + nl.attr(_DAEMON_SYNC_ID, nl.u32(daemon.sync_id))
    )
    if daemon.maxlen is not None:
        nested += nl.attr(_DAEMON_MAXLEN, nl.u16(daemon.maxlen))
    if (group := daemon.group) is not None:
        nested += nl.attr(_DAEMON_GROUP if group.version == 4 else _DAEMON_GROUP6, group.packed)
    if daemon.port is not None:
        nested += nl.attr(_DAEMON_PORT, nl.u16(daemon.port))  # host order, as ipvsadm sends it
    if daemon.ttl is not None:
        nested += nl.attr(_DAEMON_TTL, bytes([daemon.ttl]))
    return nl.attr(_CMD_DAEMON, nested)


def daemon_state_payload(state: SyncState) -> bytes:
    """DEL_DAEMON."""
    return nl.attr(_CMD_DAEMON, nl.attr(_DAEMON_STATE, nl.u32(state)))


@functools.lru_cache(maxsize=4096)
def _key_attrs(key: ServiceKey) -> bytes:
    af = _AF.get(key.family)
    if af is None:
        raise ValueError(f"family must be 4 or 6, not {key.family}")
    out = nl.attr(_SVC_AF, nl.u16(af))
    if key.protocol == "fwmark":
        return out + nl.attr(_SVC_FWMARK, nl.u32(key.fwmark))
    protocol = _PROTOCOLS.get(key.protocol)
    if protocol is None:
        raise ValueError(f"unknown protocol {key.protocol!r}")
    if key.address is None or key.address.version != key.family:
        raise ValueError(f"needs an IPv{key.family} address")
    return (
        out
        + nl.attr(_SVC_PROTOCOL, nl.u16(protocol))
        + nl.attr(_SVC_ADDR, key.address.packed)
        + nl.attr(_SVC_PORT, nl.be16(key.port))
    )


def _settings_attrs(service: VirtualService) -> bytes:
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
        nl.attr(_SVC_SCHED, service.scheduler.encode() + b"\0")
        + nl.attr(_SVC_FLAGS, struct.pack("=II", flags, 0xFFFFFFFF))
        + nl.attr(_SVC_TIMEOUT, nl.u32(service.persistence))
        + nl.attr(_SVC_NETMASK, _netmask_bytes(service.key.family, service.netmask))
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
        nl.attr(_DEST_ADDR, key.address.packed)
        + nl.attr(_DEST_PORT, nl.be16(key.port))
        + nl.attr(_DEST_AF, nl.u16(_AF[key.address.version]))
    )


# --- attributes -> the model ---------------------------------------------------------------


class ServiceReader:
    """Services from the answers to GET_SERVICE, each distinct description decoded once
    (a periodic dump of an unchanged table builds no objects)."""

    def __init__(self) -> None:
        self._known: dict[bytes, VirtualService] = {}
        self._stats_size = 0  # of a service's statistics, the tail of its description

    def read(self, payload: bytes) -> VirtualService | None:
        """The service (without destinations) of one answer; None: the answer has none."""
        inner = nl.attrs(payload).get(_CMD_SERVICE)
        if inner is None:
            return None
        # The statistics (which change with every packet) are the tail, of one size for
        # all services: a known description followed by statistics is found without
        # walking its attributes.
        cut = len(inner) - self._stats_size
        known = None
        at_stats = self._stats_size and 0 < cut <= len(inner) - 4
        if at_stats and nl.NLA.unpack_from(inner, cut)[1] & 0x3FFF == _SVC_STATS:
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
    nested = nl.attrs(payload).get(_CMD_DAEMON)
    if nested is None:
        return None
    a = nl.attrs(nested)
    raw = a.get(_DAEMON_GROUP6) or a.get(_DAEMON_GROUP)
    group: IPAddress | None = None
    if raw is not None:
        group = IPv4Address(raw[:4]) if len(raw) == 4 else IPv6Address(raw[:16])
    return SyncDaemon(
        state=SyncState(nl.get_u32(a, _DAEMON_STATE)),
        ifname=a.get(_DAEMON_IFN, b"").split(b"\0", 1)[0].decode(errors="replace"),
        sync_id=nl.get_u32(a, _DAEMON_SYNC_ID),
        maxlen=nl.get_u16(a, _DAEMON_MAXLEN) if _DAEMON_MAXLEN in a else None,
        group=group,
        port=nl.get_u16(a, _DAEMON_PORT) if _DAEMON_PORT in a else None,
        ttl=a[_DAEMON_TTL][0] if a.get(_DAEMON_TTL) else None,
    )


def _service_from(a: dict[int, bytes]) -> VirtualService:
    family = _FAMILY.get(nl.get_u16(a, _SVC_AF), 0)
    if _SVC_FWMARK in a:
        key = ServiceKey("fwmark", fwmark=nl.get_u32(a, _SVC_FWMARK), family=family)
    else:
        number = nl.get_u16(a, _SVC_PROTOCOL)
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
    timeout = nl.get_u32(a, _SVC_TIMEOUT)
    return VirtualService(
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
        size, kind = nl.NLA.unpack_from(buf, offset)
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
    family = _FAMILY.get(nl.get_u16(a, _DEST_AF), service_family)
    code = nl.get_u32(a, _DEST_FWD)
    return Dest(
        key=DestKey(
            _address(a[_DEST_ADDR], family),
            int.from_bytes(a[_DEST_PORT][:2], "big"),
        ),
        weight=nl.get_u32(a, _DEST_WEIGHT),
        forward=_FORWARD_NAMES.get(code & 0x7, f"forward-{code & 0x7}"),
        upper_threshold=nl.get_u32(a, _DEST_UTH),
        lower_threshold=nl.get_u32(a, _DEST_LTH),
        tunnel=_TUNNEL_NAMES.get(a[_DEST_TUN_TYPE][0], "?") if _DEST_TUN_TYPE in a else "ipip",
        tunnel_port=int.from_bytes(a[_DEST_TUN_PORT][:2], "big") if _DEST_TUN_PORT in a else 0,
        active_conns=nl.get_u32(a, _DEST_ACTIVE),
        inactive_conns=nl.get_u32(a, _DEST_INACTIVE),
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
    outer = nl.attrs(payload)
    if _CMD_DEST not in outer:
        return None
    return _dest_from(nl.attrs(outer[_CMD_DEST]), service_family)


def _address(raw: bytes, family: int) -> IPAddress:
    return IPv4Address(raw[:4]) if family == 4 else IPv6Address(raw[:16])
