"""The virtual IPs on this host: adding and removing them over netlink, and announcing them
with gratuitous ARP (IPv4) or unsolicited neighbour advertisements (IPv6).

Owns every VIP address write and every announcement frame. It must not decide whether
this node should hold a VIP (that is the election) and must not import scapy: frames are
built here by hand and sent through plain sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import socket
import struct
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, IPv6Interface, ip_address

from hapair.config.model import Vip
from hapair.rtnl import IFA_F_NODAD, NetlinkError, Rtnl

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARPHRD_ETHER = 1
SIOCGIFHWADDR = 0x8927
BROADCAST_MAC = b"\xff" * 6
ALL_NODES = "ff02::1"
ND_NEIGHBOR_ADVERT = 136
ND_NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_TARGET_LL_ADDR = 2


class VipError(Exception):
    """A VIP could not be added or removed; the message names the VIP and interface."""


def _where(vip: Vip) -> str:
    return f"VIP {vip.address} on {vip.interface}"


# --- addresses ------------------------------------------------------------------------------


class VipAddresses:
    """Adds, removes and reports VIP addresses through one rtnetlink socket.

    Use in the event loop: `async with VipAddresses() as vips: await vips.add(vip)`.
    Every method is idempotent, and reads the kernel's state rather than remembering its own.
    """

    def __init__(self) -> None:
        self._ipr: Rtnl | None = None

    async def __aenter__(self) -> VipAddresses:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    @property
    def ipr(self) -> Rtnl:
        if self._ipr is not None and self._ipr.spoiled:
            self.close()
        if self._ipr is None:
            self._ipr = Rtnl()
        return self._ipr

    async def _index(self, ifname: str) -> int | None:
        found = [int(m["index"]) for m in await self.ipr.links() if m.get("ifname") == ifname]
        return found[0] if found else None

    async def _prefixes_on(self, vip: Vip, index: int) -> list[int]:
        """Prefix lengths with which the VIP's address is on its interface (usually 0 or 1)."""
        ip = vip.address.ip
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        found = []
        for msg in await self.ipr.addresses(family):
            if msg["index"] != index:
                continue
            text = msg.get("local") or msg.get("address")
            if text is not None and _same_ip(text, ip):
                found.append(int(msg["prefixlen"]))
        return found

    async def held(self, vip: Vip) -> bool:
        """True if the VIP's address is on its interface (with any prefix length)."""
        index = await self._index(vip.interface)
        return index is not None and bool(await self._prefixes_on(vip, index))

    async def add(self, vip: Vip) -> bool:
        """Put the VIP on its interface; False if it was already there. IPv6 skips duplicate
        address detection so the address is usable (and announceable) at once."""
        index = await self._index(vip.interface)
        if index is None:
            raise VipError(f"{_where(vip)}: interface {vip.interface!r} does not exist")
        if vip.address.network.prefixlen in await self._prefixes_on(vip, index):
            return False
        flags = IFA_F_NODAD if isinstance(vip.address, IPv6Interface) else 0
        try:
            await self.ipr.add_address(
                index, str(vip.address.ip), vip.address.network.prefixlen, flags
            )
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise VipError(f"{_where(vip)}: cannot add: {exc.args[-1]}") from exc
        log.info("%s added", _where(vip))
        return True

    async def remove(self, vip: Vip) -> bool:
        """Take the VIP's address off its interface (whatever its prefix); False if absent."""
        index = await self._index(vip.interface)
        if index is None:
            return False
        removed = False
        for prefixlen in await self._prefixes_on(vip, index):
            try:
                await self.ipr.remove_address(index, str(vip.address.ip), prefixlen)
            except NetlinkError as exc:
                if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                    continue  # gone meanwhile
                raise VipError(f"{_where(vip)}: cannot remove: {exc.args[-1]}") from exc
            removed = True
        if removed:
            log.info("%s removed", _where(vip))
        return removed

    async def local_addresses(self) -> dict[IPv4Address | IPv6Address, str]:
        """Every address on this host's interfaces (in this namespace): address -> ifname."""
        names = {int(link["index"]): str(link.get("ifname")) for link in await self.ipr.links()}
        found: dict[IPv4Address | IPv6Address, str] = {}
        for msg in await self.ipr.addresses():
            text = msg.get("local") or msg.get("address")
            with contextlib.suppress(ValueError):
                found.setdefault(ip_address(text), names.get(int(msg["index"]), "?"))
        return found

    async def remove_stale(self, vips: Iterable[Vip]) -> list[Vip]:
        """At agent start: remove every configured VIP found on its interface (left by a
        crashed agent); return those that were removed."""
        return [vip for vip in vips if await self.remove(vip)]


def _same_ip(text: str, ip: IPv4Address | IPv6Address) -> bool:
    try:
        return type(ip)(text) == ip
    except ValueError:
        return False


# --- announcements --------------------------------------------------------------------------


def interface_mac(ifname: str) -> bytes:
    """The interface's Ethernet address, read in this thread's network namespace (unlike
    /sys/class/net, which shows the namespace that mounted sysfs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            raw = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
        except OSError as exc:
            raise OSError(exc.errno, f"{ifname}: {exc.strerror}") from None
    family = struct.unpack_from("H", raw, 16)[0]
    if family != ARPHRD_ETHER:
        raise OSError(errno.EAFNOSUPPORT, f"{ifname} is not an Ethernet interface")
    return raw[18:24]


def garp_frame(mac: bytes, ip: IPv4Address, *, reply: bool = False) -> bytes:
    """The 42-byte gratuitous ARP frame: broadcast, sender and target IP both `ip`.

    The request form is the ARP Announcement of RFC 5227 (target MAC zero); the reply form
    (opcode 2, target MAC = sender MAC) is for old devices that only learn from replies.
    """
    ethernet = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", ARPHRD_ETHER, 0x0800, 6, 4, 2 if reply else 1)
    target_mac = mac if reply else bytes(6)
    return ethernet + arp + mac + ip.packed + target_mac + ip.packed


def send_gratuitous_arp(ifname: str, ip: IPv4Address, *, reply: bool = False) -> None:
    """Send one gratuitous ARP for `ip` out of `ifname`; OSError if the interface is down
    or missing. Protocol 0 on the packet socket: it receives nothing, so never fills up."""
    frame = garp_frame(interface_mac(ifname), ip, reply=reply)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.setblocking(False)
        sock.sendto(frame, (ifname, ETH_P_ARP))


def na_message(mac: bytes, target: IPv6Address) -> bytes:
    """An unsolicited neighbour advertisement (RFC 4861 4.4): override set, solicited not,
    with the target link-layer address option; the kernel fills in the checksum."""
    header = struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, ND_NA_FLAG_OVERRIDE)
    return header + target.packed + struct.pack("!BB", ND_OPT_TARGET_LL_ADDR, 1) + mac


def send_unsolicited_na(ifname: str, ip: IPv6Address) -> None:
    """Send one unsolicited NA for `ip` to all nodes (ff02::1) out of `ifname`."""
    message = na_message(interface_mac(ifname), ip)
    index = socket.if_nametoindex(ifname)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        # Receivers drop neighbour discovery that crossed a router: hop limit must be 255.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        # Source = the VIP itself (added without DAD, so valid at once); otherwise the
        # kernel picks the link-local address, which may still be tentative.
        with contextlib.suppress(OSError):
            sock.bind((str(ip), 0, 0, index))
        sock.sendto(message, (ALL_NODES, 0, 0, index))


def send_announcement(vip: Vip, *, arp_reply: bool = False) -> None:
    """One announcement of `vip`: gratuitous ARP (plus the reply form if asked) or NA."""
    ip = vip.address.ip
    if isinstance(ip, IPv4Address):
        send_gratuitous_arp(vip.interface, ip)
        if arp_reply:
            send_gratuitous_arp(vip.interface, ip, reply=True)
    else:
        send_unsolicited_na(vip.interface, ip)


async def announce(
    vip: Vip,
    repeat: int | None = None,
    interval: float | None = None,
    *,
    arp_reply: bool = False,
) -> int:
    """Announce `vip` `repeat` times (default vip.garp_repeat), `interval` seconds apart
    (default vip.garp_interval). Returns how many were sent; errors are logged, not raised,
    so a takeover never fails because one announcement could not go out."""
    repeat = vip.garp_repeat if repeat is None else repeat
    interval = vip.garp_interval if interval is None else interval
    sent = 0
    for i in range(repeat):
        if i:
            await asyncio.sleep(interval)
        try:
            send_announcement(vip, arp_reply=arp_reply)
        except OSError as exc:
            log.warning("%s: announcement %d/%d not sent: %s", _where(vip), i + 1, repeat, exc)
            continue
        sent += 1
    return sent
