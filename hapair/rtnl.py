"""An rtnetlink socket for links and addresses, built from pyroute2's netlink socket and
its link and address messages, without pyroute2's package init or its IPRoute API.

The package init imports every API pyroute2 has (NDB with sqlite3, IPDB, ss2 with
psutil, nftables, WireGuard, ...): ~200 modules more than the agent needs, 2.4 MB of
the idle agent's heap (measured 2026-12-02, pyroute2 0.9.7). IPRoute itself, with its
request filters, every rtnetlink message type and its mock engine, is 64 modules and
1.4 MB more (measured 2026-12-04): the agent adds, removes and lists addresses, lists
links and follows their events, and that is all this socket speaks.

When pyroute2 is not imported yet, its package module is made without running its
__init__; the first name asked of it that is not a submodule (`from pyroute2 import
IPRoute`, anywhere in the process) runs the __init__ then, so other code sees the whole
package as before.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from typing import Any, ClassVar


def _lean_package() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return  # not installed: the imports below say so
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)

    def complete(name: str) -> object:
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)  # a submodule: the import system loads it
        vars(package).pop("__getattr__", None)
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package


_lean_package()

from pyroute2.netlink import (  # noqa: E402  (after the lean package)
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
)
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.marshal import Marshal  # noqa: E402
from pyroute2.netlink.nlsocket import AsyncNetlinkSocket  # noqa: E402
from pyroute2.netlink.rtnl import (  # noqa: E402
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_VALUES,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402

__all__ = ["IFA_F_NODAD", "RTMGRP_LINK", "NetlinkError", "Rtnl"]

_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
_DUMP = NLM_F_REQUEST | NLM_F_DUMP


class _LinksAndAddresses(Marshal):  # type: ignore[misc]
    """Decodes link and address messages; their `event` is the message type's name."""

    msg_map: ClassVar[dict[int, type]] = {
        RTM_NEWLINK: ifinfmsg,
        RTM_DELLINK: ifinfmsg,
        RTM_GETLINK: ifinfmsg,
        RTM_NEWADDR: ifaddrmsg,
        RTM_DELADDR: ifaddrmsg,
        RTM_GETADDR: ifaddrmsg,
    }

    def fix_message(self, msg: Any) -> None:
        msg["event"] = RTM_VALUES.get(msg["header"]["type"])


class Rtnl(AsyncNetlinkSocket):  # type: ignore[misc]
    """An asyncio rtnetlink socket: `links()`, `addresses()`, `add_address()`,
    `remove_address()`; `bind(groups=RTMGRP_LINK)` then `get()` for link events.
    Errors of the kernel come as NetlinkError (its `code` an errno)."""

    marshal_class = _LinksAndAddresses

    def __init__(self) -> None:
        super().__init__(family=NETLINK_ROUTE)
        self.spoiled = False  # a read was cut short: open another socket

    async def links(self) -> list[Any]:
        """Every link of this network namespace (ifinfmsg)."""
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        return await self._dump(msg, RTM_GETLINK)

    async def addresses(self, family: int = socket.AF_UNSPEC) -> list[Any]:
        """Every address of `family` (all by default) on every link (ifaddrmsg)."""
        msg = ifaddrmsg()
        msg["family"] = family
        return await self._dump(msg, RTM_GETADDR)

    async def add_address(self, index: int, ip: str, prefixlen: int, flags: int = 0) -> None:
        """`ip address add IP/PREFIXLEN dev INDEX` (NetlinkError EEXIST if it is there)."""
        await self._ask(_address(index, ip, prefixlen, flags), RTM_NEWADDR, _CREATE)

    async def remove_address(self, index: int, ip: str, prefixlen: int) -> None:
        """`ip address del IP/PREFIXLEN dev INDEX` (NetlinkError EADDRNOTAVAIL if absent)."""
        await self._ask(_address(index, ip, prefixlen), RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK)

    async def _dump(self, msg: Any, msg_type: int) -> list[Any]:
        """The whole dump, read at once: a dump left halfway makes the socket's next one
        fail (EBUSY), so a socket whose read was cut short is `spoiled`."""
        try:
            return [r async for r in await self.nlm_request(msg, msg_type, _DUMP)]
        except BaseException:
            self.spoiled = True
            raise

    async def _ask(self, msg: Any, msg_type: int, flags: int) -> None:
        async for _ in await self.nlm_request(msg, msg_type, flags):
            pass  # the acknowledgement; an error is raised


def _address(index: int, ip: str, prefixlen: int, flags: int = 0) -> Any:
    """An address message as `ip address` sends it: IPv4 with IFA_LOCAL beside
    IFA_ADDRESS (a point-to-point peer would differ; a VIP has none)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    msg = ifaddrmsg()
    msg["family"] = family
    msg["prefixlen"] = prefixlen
    msg["flags"] = flags
    msg["scope"] = 0
    msg["index"] = index
    msg["attrs"] = [["IFA_ADDRESS", ip]]
    if family == socket.AF_INET:
        msg["attrs"].append(["IFA_LOCAL", ip])
    return msg
