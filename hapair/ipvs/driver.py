"""Reads and writes the kernel's IPVS services and destinations in the terms of table.py.

It owns the IPVS generic-netlink wire format for services and destinations (one socket,
packed with struct: pyroute2's message objects cost ~0.6 ms each); it decides nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno as errno_codes
import functools
import itertools
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from hapair.ipvs.netlink import NO_IPVS, IpvsError
from hapair.ipvs.table import Dest, DestKey, IPAddress, Service, ServiceKey, Table

# Netlink and generic netlink (linux/netlink.h, linux/genetlink.h).
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_MULTI, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
_NLM_F_ACK_TLVS = 0x200
_NLMSGERR_ATTR_MSG = 1
_SOL_NETLINK, _NETLINK_CAP_ACK, _NETLINK_EXT_ACK = 270, 10, 11
_GENL_ID_CTRL, _CTRL_CMD_GETFAMILY = 0x10, 3
_CTRL_ATTR_FAMILY_ID, _CTRL_ATTR_FAMILY_NAME = 1, 2
_CLONE_NEWNET = 0x40000000
_NETLINK_GENERIC = 16
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_GENL = struct.Struct("=BBH")  # genlmsghdr
_NLA = struct.Struct("=HH")
_ANSWER_AT = _HDR.size + _GENL.size  # where an answer's payload starts
_RECV_SIZE = 1 << 16  # a dump's datagram is at most 32 KiB
_YIELD_EVERY = 32  # services read between two turns of the event loop

# IPVS (linux/ip_vs.h).
_IPVS_VERSION = 1
_NEW_SERVICE, _SET_SERVICE, _DEL_SERVICE, _GET_SERVICE = 1, 2, 3, 4
_NEW_DEST, _SET_DEST, _DEL_DEST, _GET_DEST = 5, 6, 7, 8
_CMD_SERVICE, _CMD_DEST = 1, 2
_SVC_AF, _SVC_PROTOCOL, _SVC_ADDR, _SVC_PORT, _SVC_FWMARK = 1, 2, 3, 4, 5
_SVC_SCHED, _SVC_FLAGS, _SVC_TIMEOUT, _SVC_NETMASK, _SVC_PE = 6, 7, 8, 9, 11
_SVC_STATS, _SVC_STATS64 = 10, 12
_DEST_ADDR, _DEST_PORT, _DEST_FWD, _DEST_WEIGHT, _DEST_UTH, _DEST_LTH = 1, 2, 3, 4, 5, 6
_DEST_ACTIVE, _DEST_INACTIVE, _DEST_AF, _DEST_TUN_TYPE, _DEST_TUN_PORT = 7, 8, 11, 13, 14

_F_PERSISTENT, _F_HASHED, _F_ONEPACKET = 0x1, 0x2, 0x4
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


class IpvsDriver:
    """The IPVS table of one network namespace (None: the caller's), as an async context.

    `async with IpvsDriver("ns1") as ipvs: table = await ipvs.dump()`. Every method is one
    request on the driver's one socket (dump: one per service more); the kernel answers
    synchronously, so no call waits on anything but the kernel.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock: _GenlSocket | None = None
        # What was parsed, by the bytes that describe it (a service's and a destination's
        # statistics excluded): a periodic dump of an unchanged table builds no objects
        # and loops over no destination (parsing dominated a dump's cost).
        self._parsed: dict[bytes, Dest] = {}
        self._parsed_sets: dict[tuple[bytes, ...], dict[DestKey, Dest]] = {}  # per service
        self._parsed_services: dict[bytes, Service] = {}
        self._stats_size = 0  # of a service's statistics, the tail of its description

    async def __aenter__(self) -> IpvsDriver:
        self._sock = _GenlSocket.open(self.netns, self._where())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def dump(self, keys: Iterable[ServiceKey] | None = None) -> Table:
        """Every service with its destinations, whoever created them; or only those of
        `keys` that exist (a pass that changed a few services re-reads only those)."""
        table: Table = {}
        if keys is None:
            answers = self._request(_GET_SERVICE, "listing services", b"", dump=True)
        else:
            answers = []
            for key in keys:
                with contextlib.suppress(IpvsError):  # no such service: absent from the table
                    answers += self._request(
                        _GET_SERVICE, f"reading {key}", functools.partial(_service_attr, key)
                    )
        for n, payload in enumerate(answers, 1):
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # the caller's event loop runs between services
            service = self._service_of(payload)
            if service is not None:
                self._read_dests(service)
                table[service.key] = service
        return table

    def _service_of(self, payload: bytes) -> Service | None:
        """The service (without destinations) in one answer to GET_SERVICE; parsed once
        per distinct description (its statistics, which follow it, are not part of it)."""
        outer = _attrs(payload)
        inner = outer.get(_CMD_SERVICE)
        if inner is None:
            return None
        # The statistics are the tail, of one size for all services: a known description
        # followed by statistics is that service, found without walking its attributes.
        cut = len(inner) - self._stats_size
        known = None
        if self._stats_size and cut > 0 and _NLA.unpack_from(inner, cut)[1] & 0x3FFF == _SVC_STATS:
            known = self._parsed_services.get(inner[:cut])
        if known is None:
            cut = _stats_offset(inner)
            self._stats_size = len(inner) - cut
            if len(self._parsed_services) > _PARSED_MAX:
                self._parsed_services.clear()
            known = _service_from(_attrs(inner[:cut]))
            self._parsed_services[inner[:cut]] = known
        return Service(known.key, known.scheduler, known.persistence, known.netmask, known.flags)

    def _read_dests(self, service: Service) -> None:
        key = service.key
        what = functools.partial("listing the destinations of {}".format, key)
        answers = self._request(_GET_DEST, what, _service_attr(key), dump=True)
        described = tuple([payload[:_DEST_CACHED] for payload in answers])
        known = self._parsed_sets.get(described)
        if known is not None:  # the same destinations as last time: one copy, no loop
            service.dests.update(known)
            return
        parsed, dests = self._parsed, service.dests
        in_layout = True
        for payload in answers:
            dest = parsed.get(payload[:_DEST_CACHED])
            if dest is None:
                dest = _dest_in_layout(payload, key.family)
                if dest is not None:  # the bytes of the key describe all of it
                    if len(parsed) > _PARSED_MAX:
                        parsed.clear()
                    parsed[payload[:_DEST_CACHED]] = dest
                else:
                    in_layout = False
                    dest = _dest_of(payload, key.family)
                    if dest is None:
                        continue
            dests[dest.key] = dest
        if in_layout:
            if len(self._parsed_sets) > _PARSED_MAX // 8:
                self._parsed_sets.clear()
            self._parsed_sets[described] = dict(dests)

    async def add_service(self, service: Service) -> None:
        """Create the service with its settings; its `dests` are not written (see add_dest)."""
        self._write_service(_NEW_SERVICE, service, "adding")

    async def edit_service(self, service: Service) -> None:
        """Change scheduler, persistence, netmask and flags in place (IPVS "set")."""
        self._write_service(_SET_SERVICE, service, "editing")

    async def delete_service(self, key: ServiceKey) -> None:
        """Delete the service and its destinations."""
        self._request(_DEL_SERVICE, f"deleting {key}", lambda: _service_attr(key))

    async def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self._write_dest(_NEW_DEST, key, dest, lambda: f"adding destination {dest.key} to {key}")

    async def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        """Change weight, forwarding and thresholds in place: connections stay on it."""
        self._write_dest(_SET_DEST, key, dest, lambda: f"editing destination {dest.key} of {key}")

    async def delete_dest(self, key: ServiceKey, dest_key: DestKey) -> None:
        def payload() -> bytes:
            return _service_attr(key) + _attr(_CMD_DEST, _dest_key_attrs(dest_key))

        what = f"deleting destination {dest_key} from {key}"
        self._request(_DEL_DEST, what, payload, enoent=" (no such destination)")

    def _write_service(self, cmd: int, service: Service, verb: str) -> None:
        def payload() -> bytes:
            return _attr(_CMD_SERVICE, _key_attrs(service.key) + _settings_attrs(service))

        # ENOENT: no such scheduler module (or persistence engine).
        hint = f" (scheduler {service.scheduler!r} not loaded?)"
        self._request(cmd, f"{verb} {service.key}", payload, enoent=hint)

    def _write_dest(self, cmd: int, key: ServiceKey, dest: Dest, what: Callable[[], str]) -> None:
        def payload() -> bytes:
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
                nested += _attr(_DEST_TUN_TYPE, bytes([tunnel])) + _attr(
                    _DEST_TUN_PORT, _be16(dest.tunnel_port)
                )
            return _service_attr(key) + _attr(_CMD_DEST, nested)

        enoent = " (no such destination)" if cmd == _SET_DEST else ""  # NEW: no ENOENT
        self._request(cmd, what, payload, enoent=enoent)

    def _request(
        self,
        cmd: int,
        what: str | Callable[[], str],
        payload: bytes | Callable[[], bytes],
        *,
        dump: bool = False,
        enoent: str = "",
    ) -> list[bytes]:
        """One request; any failure becomes IpvsError("<netns>: <what>: <reason>").
        `what` may be a function: it is only needed for the error."""
        try:
            if self._sock is None:
                raise _NotOpen("the driver is not open")
            data = payload if isinstance(payload, bytes) else payload()
            return self._sock.request(cmd, data, dump=dump)
        except _KernelError as e:
            hint = {errno_codes.ESRCH: " (no such service)", errno_codes.ENOENT: enoent}
            raise self._failed(what, f"{e.reason}{hint.get(e.code, '')}", e.code) from e
        except _NotOpen as e:
            raise self._failed(what, e, None) from e
        except (ValueError, struct.error) as e:  # the model holds what IPVS cannot take
            raise self._failed(what, e, errno_codes.EINVAL) from e
        except OSError as e:  # the socket itself (timeout, closed)
            raise self._failed(what, e, e.errno) from e

    def _failed(self, what: str | Callable[[], str], reason: object, code: int | None) -> IpvsError:
        text = what if isinstance(what, str) else what()
        return IpvsError(f"{self._where()}{text}: {reason}", code)

    def _where(self) -> str:
        return f"netns {self.netns}: " if self.netns else ""


# --- the model -> attributes ---------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _service_attr(key: ServiceKey) -> bytes:
    return _attr(_CMD_SERVICE, _key_attrs(key))


@functools.lru_cache(maxsize=4096)
def _key_attrs(key: ServiceKey) -> bytes:
    af = _AF.get(key.family)
    if af is None:
        raise ValueError(f"family must be 4 or 6, not {key.family}")
    out = _attr(_SVC_AF, _u16(af))
    if key.protocol == "fwmark":
        return out + _attr(_SVC_FWMARK, _u32(key.fwmark))
    protocol = _PROTOCOLS.get(key.protocol)
    if protocol is None:
        raise ValueError(f"unknown protocol {key.protocol!r}")
    if key.address is None or key.address.version != key.family:
        raise ValueError(f"needs an IPv{key.family} address")
    return (
        out
        + _attr(_SVC_PROTOCOL, _u16(protocol))
        + _attr(_SVC_ADDR, key.address.packed)
        + _attr(_SVC_PORT, _be16(key.port))
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
        _attr(_SVC_SCHED, service.scheduler.encode() + b"\0")
        + _attr(_SVC_FLAGS, struct.pack("=II", flags, 0xFFFFFFFF))
        + _attr(_SVC_TIMEOUT, _u32(service.persistence))
        + _attr(_SVC_NETMASK, _netmask_bytes(service.key.family, service.netmask))
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
        _attr(_DEST_ADDR, key.address.packed)
        + _attr(_DEST_PORT, _be16(key.port))
        + _attr(_DEST_AF, _u16(_AF[key.address.version]))
    )


# --- attributes -> the model ---------------------------------------------------------------


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
_DEST_LAYOUT = (
    (_DEST_ADDR, 16),
    (2, 2),  # port
    (3, 4),  # forwarding method
    (4, 4),  # weight
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
    "=4x" + "".join(f"4s{_VALUE_FORMATS[size]}" for _, size in _DEST_LAYOUT)
)
_DEST_HEADERS = tuple(_NLA.pack(4 + size, kind) for kind, size in _DEST_LAYOUT)
_DEST_CACHED = _DEST_STRUCT.size
_PARSED_MAX = 200_000
_dest_keys: dict[tuple[bytes, bytes, int], DestKey] = {}  # one object per destination


def _dest_in_layout(payload: bytes, service_family: int) -> Dest | None:
    """The destination of one dump answer in `_DEST_LAYOUT`, unpacked in one call (None:
    another layout, for `_dest_of`)."""
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


def _dest_of(payload: bytes, service_family: int) -> Dest | None:
    """The destination in one answer of a destination dump (None: there is none)."""
    outer = _attrs(payload)
    if _CMD_DEST not in outer:
        return None
    return _dest_from(_attrs(outer[_CMD_DEST]), service_family)


def _address(raw: bytes, family: int) -> IPAddress:
    return IPv4Address(raw[:4]) if family == 4 else IPv6Address(raw[:16])


# --- netlink attributes and the socket -----------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _attrs(buf: bytes, offset: int = 0) -> dict[int, bytes]:
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
    return struct.unpack_from("=H", a[kind])[0] if kind in a else 0


def _get_u32(a: dict[int, bytes], kind: int) -> int:
    return struct.unpack_from("=I", a[kind])[0] if kind in a else 0


class _NotOpen(Exception):
    pass


class _KernelError(Exception):
    def __init__(self, code: int, text: str | None) -> None:
        self.code = code
        reason = os.strerror(code)
        self.reason = f"{reason} ({text})" if text else reason
        super().__init__(self.reason)


class _GenlSocket:
    """A generic-netlink socket bound to the IPVS family: request in, answers out."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq: Iterator[int] = itertools.count(1)
        self.family = 0

    @classmethod
    def open(cls, netns: str | None, where: str) -> _GenlSocket:
        try:
            sock = _netlink_socket(netns)
        except OSError as e:  # ENOENT: no such namespace
            raise IpvsError(f"{where}opening a netlink socket: {e.strerror}", e.errno) from e
        self = cls(sock)
        try:
            sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)  # acks without our request
            sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)  # the kernel's reason text
            sock.settimeout(30)  # the kernel answers at once; this only guards a bug
            answers = self.exchange(
                _GENL_ID_CTRL,
                _CTRL_CMD_GETFAMILY,
                _attr(_CTRL_ATTR_FAMILY_NAME, b"IPVS\0"),
                _NLM_F_REQUEST,
            )
            self.family = _get_u16(_attrs(answers[0]), _CTRL_ATTR_FAMILY_ID)
        except _KernelError as e:
            sock.close()
            if e.code == errno_codes.ENOENT:
                raise IpvsError(f"{where}{NO_IPVS}", e.code) from e
            raise IpvsError(f"{where}looking up IPVS: {e.reason}", e.code) from e
        except (OSError, IndexError) as e:
            sock.close()
            raise IpvsError(f"{where}looking up IPVS: {e}") from e
        return self

    def close(self) -> None:
        self._sock.close()

    def request(self, cmd: int, payload: bytes, *, dump: bool) -> list[bytes]:
        flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else _NLM_F_ACK)
        return self.exchange(self.family, cmd, payload, flags)

    def exchange(self, msg_type: int, cmd: int, payload: bytes, flags: int) -> list[bytes]:
        """Send one message; return the payloads (after the genl header) of the answers."""
        seq = next(self._seq)
        size = _HDR.size + _GENL.size + len(payload)
        self._sock.send(
            _HDR.pack(size, msg_type, flags, seq, 0) + _GENL.pack(cmd, _IPVS_VERSION, 0) + payload
        )
        answers: list[bytes] = []
        while True:
            data = self._sock.recv(_RECV_SIZE)
            if flags & _NLM_F_DUMP == _NLM_F_DUMP and _uniform(data, seq, answers):
                continue  # a datagram of same-sized answers, read in one pass
            offset = 0
            while offset + _HDR.size <= len(data):
                size, kind, mflags, mseq, _ = _HDR.unpack_from(data, offset)
                if size < _HDR.size:
                    break
                if mseq == seq:
                    if kind in (_NLMSG_ERROR, _NLMSG_DONE):
                        _raise_error(data, offset, size, kind, mflags)
                        return answers
                    answers.append(data[offset + _HDR.size + _GENL.size : offset + size])
                    if not mflags & _NLM_F_MULTI and not flags & _NLM_F_ACK:
                        return answers  # a single answer without an ack to follow
                offset += (size + 3) & ~3  # answers to an abandoned request are skipped


def _uniform(data: bytes, seq: int, answers: list[bytes]) -> bool:
    """Adds the payloads of `data` to `answers` when it holds only dump answers to `seq`
    of one size (a dump of destinations: one datagram of ten costs one call); else False,
    and nothing is added."""
    if len(data) < _HDR.size:
        return False
    size, kind, _, _, _ = _HDR.unpack_from(data)
    if kind <= _NLMSG_DONE or size <= _ANSWER_AT or len(data) % size:
        return False
    header = (size, kind, _NLM_F_MULTI, seq)
    found = [r[5] for r in _uniform_layout(size).iter_unpack(data) if r[:4] == header]
    if len(found) * size != len(data):
        return False
    answers += found
    return True


@functools.lru_cache(maxsize=64)
def _uniform_layout(size: int) -> struct.Struct:
    # nlmsghdr, genlmsghdr (skipped), then the payload
    return struct.Struct(f"=IHHII4x{size - _ANSWER_AT}s")


def _raise_error(data: bytes, offset: int, size: int, kind: int, flags: int) -> None:
    if size < _HDR.size + 4:
        return
    code = -struct.unpack_from("=i", data, offset + _HDR.size)[0]
    if code == 0:
        return
    text = None
    if kind == _NLMSG_ERROR and flags & _NLM_F_ACK_TLVS:
        # error, then our header (capped ack: no payload), then the extended-ack attributes
        tlvs = _attrs(data[offset + _HDR.size + 4 + _HDR.size : offset + size])
        if _NLMSGERR_ATTR_MSG in tlvs:
            text = tlvs[_NLMSGERR_ATTR_MSG].split(b"\0", 1)[0].decode(errors="replace")
    raise _KernelError(code, text)


def _netlink_socket(netns: str | None) -> socket.socket:
    """A NETLINK_GENERIC socket in `netns` (a name under /run/netns, or a path), which must
    exist: it is entered by a helper thread, so the caller's thread never changes namespace."""

    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC)

    if netns is None:
        return make()
    path = netns if "/" in netns else f"/run/netns/{netns}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    result: dict[str, Any] = {}

    def enter_and_make() -> None:
        try:
            _setns(fd)
            result["sock"] = make()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    try:
        thread = threading.Thread(target=enter_and_make, name="ipvs-netns")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in result:
        raise result["error"]
    sock: socket.socket = result["sock"]
    return sock


def _setns(fd: int) -> None:
    # os.setns exists only from Python 3.12 on.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


__all__ = ["IpvsDriver", "IpvsError"]
