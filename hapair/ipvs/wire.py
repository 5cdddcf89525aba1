"""IPVS's generic-netlink requests (netlink.py frames them, answers.py reads what comes
back) and the kernel's numbers both share, as pure functions: no socket, no state beyond
a cache of packed keys.

Requests are packed with struct (pyroute2's message objects cost ~0.6 ms each), in the
layout of linux/ip_vs.h. Nothing here decides anything.
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
from hapair.ipvs.table import Dest, DestKey, ServiceKey, VirtualService

# IPVS (linux/ip_vs.h).
IPVS_VERSION = 1
NEW_SERVICE, SET_SERVICE, DEL_SERVICE, GET_SERVICE = 1, 2, 3, 4
NEW_DEST, SET_DEST, DEL_DEST, GET_DEST = 5, 6, 7, 8
NEW_DAEMON, DEL_DAEMON, GET_DAEMON, ZERO, FLUSH = 9, 10, 11, 16, 17
CMD_SERVICE, CMD_DEST, CMD_DAEMON = 1, 2, 3
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
SVC_STATS, SVC_STATS64 = 10, 12
DEST_ADDR, DEST_PORT, DEST_FWD, DEST_WEIGHT, DEST_UTH, DEST_LTH = 1, 2, 3, 4, 5, 6
DEST_ACTIVE, DEST_INACTIVE, DEST_AF, DEST_TUN_TYPE, DEST_TUN_PORT = 7, 8, 11, 13, 14
DAEMON_STATE, DAEMON_IFN, DAEMON_SYNC_ID, DAEMON_MAXLEN = 1, 2, 3, 4
DAEMON_GROUP, DAEMON_GROUP6, DAEMON_PORT, DAEMON_TTL = 5, 6, 7, 8

F_PERSISTENT, F_ONEPACKET = 0x1, 0x4
F_SCHED = (0x8, 0x10, 0x20)  # IP_VS_SVC_F_SCHED1..3: meaning depends on the scheduler
SCHED_FLAG_NAMES = {  # the names ipvsadm -b uses
    "sh": ("sh-fallback", "sh-port", "flag-3"),
    "mh": ("mh-fallback", "mh-port", "flag-3"),
}
GENERIC_FLAG_NAMES = ("flag-1", "flag-2", "flag-3")

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
# Kernel codes IP_VS_CONN_F_MASQ/LOCALNODE/TUNNEL/DROUTE/BYPASS; hapair writes nat/tun/dr.
FORWARDS = {"nat": 0, "local": 1, "tun": 2, "dr": 3, "bypass": 4}
FORWARD_NAMES = {v: k for k, v in FORWARDS.items()}
_AF: dict[int, int] = {4: socket.AF_INET, 6: socket.AF_INET6}
FAMILY = {v: k for k, v in _AF.items()}
TUNNELS = {"ipip": 0, "gue": 1, "gre": 2}
TUNNEL_NAMES = {v: k for k, v in TUNNELS.items()}


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
    return nl.attr(CMD_SERVICE, _key_attrs(key))


def service_payload(service: VirtualService) -> bytes:
    """NEW_SERVICE or SET_SERVICE: the key and the settings (not the destinations)."""
    return nl.attr(CMD_SERVICE, _key_attrs(service.key) + _settings_attrs(service))


def dest_payload(key: ServiceKey, dest: Dest) -> bytes:
    """NEW_DEST or SET_DEST."""
    forward = FORWARDS.get(dest.forward)
    if forward is None:
        raise ValueError(f"unknown forwarding method {dest.forward!r}")
    nested = _dest_key_attrs(dest.key) + _DEST_SETTINGS.pack(
        8, DEST_FWD, forward,
        8, DEST_WEIGHT, dest.weight,
        8, DEST_UTH, dest.upper_threshold,
        8, DEST_LTH, dest.lower_threshold,
    )  # fmt: skip
    if dest.forward == "tun":  # kernels before 5.3 know no tunnel types: ipip only
        tunnel = TUNNELS.get(dest.tunnel)
        if tunnel is None:
            raise ValueError(f"unknown tunnel type {dest.tunnel!r}")
        nested += nl.attr(DEST_TUN_TYPE, bytes([tunnel])) + nl.attr(
            DEST_TUN_PORT, nl.be16(dest.tunnel_port)
        )
    return service_attr(key) + nl.attr(CMD_DEST, nested)


def dest_key_payload(key: ServiceKey, dest_key: DestKey) -> bytes:
    """DEL_DEST."""
    return service_attr(key) + nl.attr(CMD_DEST, _dest_key_attrs(dest_key))


def daemon_payload(daemon: SyncDaemon) -> bytes:
    """NEW_DAEMON (the kernel wants state, interface and sync id; the rest is optional)."""
    nested = (
        nl.attr(DAEMON_STATE, nl.u32(daemon.state))
        + nl.attr(DAEMON_IFN, daemon.ifname.encode() + b"\0")
        + nl.attr(DAEMON_SYNC_ID, nl.u32(daemon.sync_id))
    )
    if daemon.maxlen is not None:
        nested += nl.attr(DAEMON_MAXLEN, nl.u16(daemon.maxlen))
    if (group := daemon.group) is not None:
        nested += nl.attr(DAEMON_GROUP if group.version == 4 else DAEMON_GROUP6, group.packed)
    if daemon.port is not None:
        nested += nl.attr(DAEMON_PORT, nl.u16(daemon.port))  # host order, as ipvsadm sends it
    if daemon.ttl is not None:
        nested += nl.attr(DAEMON_TTL, bytes([daemon.ttl]))
    return nl.attr(CMD_DAEMON, nested)


def daemon_state_payload(state: SyncState) -> bytes:
    """DEL_DAEMON."""
    return nl.attr(CMD_DAEMON, nl.attr(DAEMON_STATE, nl.u32(state)))


@functools.lru_cache(maxsize=4096)
def _key_attrs(key: ServiceKey) -> bytes:
    af = _AF.get(key.family)
    if af is None:
        raise ValueError(f"family must be 4 or 6, not {key.family}")
    out = nl.attr(SVC_AF, nl.u16(af))
    if key.protocol == "fwmark":
        return out + nl.attr(SVC_FWMARK, nl.u32(key.fwmark))
    protocol = PROTOCOLS.get(key.protocol)
    if protocol is None:
        raise ValueError(f"unknown protocol {key.protocol!r}")
    if key.address is None or key.address.version != key.family:
        raise ValueError(f"needs an IPv{key.family} address")
    return (
        out
        + nl.attr(SVC_PROTOCOL, nl.u16(protocol))
        + nl.attr(SVC_ADDR, key.address.packed)
        + nl.attr(SVC_PORT, nl.be16(key.port))
    )


def _settings_attrs(service: VirtualService) -> bytes:
    flags = F_PERSISTENT if service.persistence > 0 else 0
    names = SCHED_FLAG_NAMES.get(service.scheduler, GENERIC_FLAG_NAMES)
    for name in service.flags:
        if name == "ops":
            flags |= F_ONEPACKET
        elif name in names:
            flags |= F_SCHED[names.index(name)]
        else:
            raise ValueError(f"flag {name!r} does not apply to scheduler {service.scheduler!r}")
    return (
        nl.attr(SVC_SCHED, service.scheduler.encode() + b"\0")
        + nl.attr(SVC_FLAGS, struct.pack("=II", flags, 0xFFFFFFFF))
        + nl.attr(SVC_TIMEOUT, nl.u32(service.persistence))
        + nl.attr(SVC_NETMASK, _netmask_bytes(service.key.family, service.netmask))
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
        nl.attr(DEST_ADDR, key.address.packed)
        + nl.attr(DEST_PORT, nl.be16(key.port))
        + nl.attr(DEST_AF, nl.u16(_AF[key.address.version]))
    )
