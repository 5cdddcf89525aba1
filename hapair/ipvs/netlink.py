"""IPVS generic-netlink requests that pyroute2 0.9.7 lacks: sync daemons, FLUSH and ZERO.

It owns the wire format and one request/answer cycle per call, in one network namespace;
it keeps no state and decides nothing (services and destinations: pyroute2's AsyncIPVS).
"""

from __future__ import annotations

import errno as errno_codes
import os
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from pyroute2.ipvs import IPVSService
from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import AsyncGenericNetlinkSocket
from pyroute2.netlink.generic.ipvs import ipvsmsg

GENL_FAMILY = "IPVS"
GENL_VERSION = 1

CMD_NEW_DAEMON = 9
CMD_DEL_DAEMON = 10
CMD_GET_DAEMON = 11
CMD_ZERO = 16
CMD_FLUSH = 17

NO_IPVS = "the kernel has no IPVS (modprobe ip_vs?)"


class SyncState(IntEnum):
    MASTER = 1
    BACKUP = 2


class IpvsError(Exception):
    """A request the kernel refused; `errno` is the kernel's code."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class DaemonInfo:
    state: SyncState
    ifname: str
    sync_id: int
    maxlen: int | None = None
    group: IPv4Address | IPv6Address | None = None
    port: int | None = None
    ttl: int | None = None


class IpvsCmdMsg(genlmsg):  # type: ignore[misc]
    # Defined on genlmsg, not on pyroute2's ipvsmsg: a subclass of ipvsmsg silently reuses
    # the parent's compiled attribute table once the parent was used in the process.
    prefix = "IPVS_CMD_ATTR_"
    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "service"),
        ("IPVS_CMD_ATTR_DEST", "hex"),
        ("IPVS_CMD_ATTR_DAEMON", "daemon"),
    )

    service = ipvsmsg.service

    class daemon(nla):  # type: ignore[misc]  # named by the "daemon" attribute type above
        prefix = "IPVS_DAEMON_ATTR_"
        nla_map = (
            ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
            ("IPVS_DAEMON_ATTR_STATE", "uint32"),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),
            ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
            ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP", "ip4addr"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP6", "ip6addr"),
            ("IPVS_DAEMON_ATTR_MCAST_PORT", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_TTL", "uint8"),
        )


class _Socket(AsyncGenericNetlinkSocket):  # type: ignore[misc]
    async def setup_endpoint(self) -> None:
        if getattr(self.local, "transport", None) is not None:
            return
        await super().setup_endpoint()
        await self.bind(GENL_FAMILY, IpvsCmdMsg)


class IpvsNetlink:
    """IPVS requests in one network namespace (None: the caller's), as an async context.

    `async with IpvsNetlink("ns1") as ipvs: await ipvs.start_daemon(SyncState.MASTER, ...)`
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock: Any = None

    async def __aenter__(self) -> IpvsNetlink:
        try:
            # flags=0: never create a missing namespace (pyroute2's default O_CREAT would).
            self._sock = _Socket(netns=self.netns, flags=0)
            await self._sock.setup_endpoint()
        except NetlinkError as e:
            self._close()
            if e.code == errno_codes.ENOENT:  # no generic-netlink family "IPVS"
                raise IpvsError(f"{self._where()}{NO_IPVS}", e.code) from e
            raise IpvsError(f"{self._where()}binding to IPVS: {_reason(e)}", e.code) from e
        except OSError as e:  # ENOENT: no such namespace
            self._close()
            raise IpvsError(
                f"{self._where()}opening a netlink socket: {e.strerror}", e.errno
            ) from e
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def start_daemon(
        self,
        state: SyncState,
        ifname: str,
        sync_id: int,
        *,
        maxlen: int | None = None,
        group: str | IPv4Address | IPv6Address | None = None,
        port: int | None = None,
        ttl: int | None = None,
    ) -> None:
        attrs: list[tuple[str, Any]] = [
            ("IPVS_DAEMON_ATTR_STATE", int(state)),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", ifname),
            ("IPVS_DAEMON_ATTR_SYNC_ID", sync_id),
        ]
        if maxlen is not None:
            attrs.append(("IPVS_DAEMON_ATTR_SYNC_MAXLEN", maxlen))
        if group is not None:
            addr = ip_address(group)
            kind = "MCAST_GROUP" if addr.version == 4 else "MCAST_GROUP6"
            attrs.append((f"IPVS_DAEMON_ATTR_{kind}", str(addr)))
        if port is not None:
            attrs.append(("IPVS_DAEMON_ATTR_MCAST_PORT", port))
        if ttl is not None:
            attrs.append(("IPVS_DAEMON_ATTR_MCAST_TTL", ttl))
        what = f"starting {state.name.lower()} sync daemon on {ifname}"
        await self._request(CMD_NEW_DAEMON, [("IPVS_CMD_ATTR_DAEMON", {"attrs": attrs})], what)

    async def stop_daemon(self, state: SyncState) -> None:
        daemon = {"attrs": [("IPVS_DAEMON_ATTR_STATE", int(state))]}
        what = f"stopping {state.name.lower()} sync daemon"
        await self._request(CMD_DEL_DAEMON, [("IPVS_CMD_ATTR_DAEMON", daemon)], what)

    async def list_daemons(self) -> list[DaemonInfo]:
        answers = await self._request(CMD_GET_DAEMON, [], "listing sync daemons", dump=True)
        return [_daemon_info(d) for m in answers if (d := m.get_attr("IPVS_CMD_ATTR_DAEMON"))]

    async def flush(self) -> None:
        """Delete every virtual service of this namespace (IPVS has no per-service flush)."""
        await self._request(CMD_FLUSH, [], "flushing the IPVS table")

    async def zero(self, service: IPVSService | None = None) -> None:
        """Zero the counters of one service, or of all services when `service` is None."""
        attrs = [] if service is None else [("IPVS_CMD_ATTR_SERVICE", service.dump_key())]
        await self._request(CMD_ZERO, attrs, "zeroing IPVS counters")

    async def _request(
        self, cmd: int, attrs: list[tuple[str, Any]], what: str, *, dump: bool = False
    ) -> list[Any]:
        msg = IpvsCmdMsg()
        msg["cmd"] = cmd
        msg["version"] = GENL_VERSION
        msg["attrs"] = attrs
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        try:
            answers = await self._sock.nlm_request(msg, msg_type=self._sock.prid, msg_flags=flags)
            return [m async for m in answers]
        except NetlinkError as e:
            raise IpvsError(f"{self._where()}{what}: {_reason(e)}", e.code) from e

    def _where(self) -> str:
        return f"netns {self.netns}: " if self.netns else ""


def _reason(e: NetlinkError) -> str:
    code = e.code
    return os.strerror(code) if code in errno_codes.errorcode else str(e)


def _daemon_info(attr: Any) -> DaemonInfo:
    def get(name: str) -> Any:
        return attr.get_attr(f"IPVS_DAEMON_ATTR_{name}")

    group = get("MCAST_GROUP6") or get("MCAST_GROUP")
    return DaemonInfo(
        state=SyncState(get("STATE")),
        ifname=get("MCAST_IFN"),
        sync_id=get("SYNC_ID"),
        maxlen=get("SYNC_MAXLEN"),
        group=ip_address(group) if group else None,
        port=get("MCAST_PORT"),
        ttl=get("MCAST_TTL"),
    )
