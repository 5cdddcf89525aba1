"""Watches named interfaces go up and down through rtnetlink link events.

Owns the meaning of "up" (administratively up and with carrier) and turning kernel events
into changes of that. It must not act on a change (that is the agent's job) nor poll.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any, NamedTuple

from hapair.rtnl import RTMGRP_LINK, NetlinkError, Rtnl

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_RUNNING = 0x40  # the kernel sets it when operstate is UP (or UNKNOWN, e.g. lo)


class InterfaceState(NamedTuple):
    ifname: str
    up: bool


def is_up(msg: Any) -> bool:
    """Administratively up and with carrier: IFF_UP and IFF_RUNNING."""
    flags = int(msg["flags"])
    return bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)


async def watch_interfaces(ifnames: Iterable[str]) -> AsyncIterator[InterfaceState]:
    """Yield the state of every interface in `ifnames` first (a missing one is down), then
    each change. Runs until the consumer stops; a netlink overflow re-reads every state.

        async for ifname, up in watch_interfaces({"eth0", "eth1"}): ...
    """
    names = frozenset(ifnames)
    known: dict[str, bool] = {}
    while True:
        ipr = Rtnl()
        try:
            # Subscribe before the dump, so no change between the two is missed.
            await ipr.bind(groups=RTMGRP_LINK)
            current = dict.fromkeys(names, False)
            by_index: dict[int, str] = {}
            for msg in await ipr.links():
                name = msg.get("ifname")
                if name in names:
                    current[name] = is_up(msg)
                    by_index[int(msg["index"])] = name
            for name in sorted(names):
                if known.get(name) != current[name]:
                    known[name] = current[name]
                    yield InterfaceState(name, current[name])
            idle = 0
            while True:
                got = 0
                async for msg in ipr.get():
                    got += 1
                    for change in _changes(msg, names, known, by_index):
                        yield change
                # A get() that returns at once with nothing (a socket in error) must not
                # become a loop that never yields: a few in a row, and the socket is new.
                idle = 0 if got else idle + 1
                if idle >= 3:
                    raise OSError(errno.EIO, "the netlink socket returns nothing")
                await asyncio.sleep(0)
        except (OSError, NetlinkError) as exc:
            # An overflow (ENOBUFS) comes as an OSError, or as the NetlinkError of an error
            # message pyroute2 queues for a socket error (it is no OSError).
            code = exc.errno if isinstance(exc, OSError) else exc.code
            if code not in (errno.ENOBUFS, errno.EIO, errno.ECONNRESET, errno.ECOMM):
                raise
            log.warning("link watch: %s; reading every link again", os.strerror(code))
            await asyncio.sleep(0.1)
        finally:
            ipr.close()


def _changes(
    msg: Any, names: frozenset[str], known: dict[str, bool], by_index: dict[int, str]
) -> list[InterfaceState]:
    event = msg.get("event")
    if event not in ("RTM_NEWLINK", "RTM_DELLINK"):
        return []
    index = int(msg["index"])
    name = msg.get("ifname")
    states: dict[str, bool] = {}
    previous = by_index.pop(index, None)
    if previous is not None and previous != name:
        states[previous] = False  # renamed away: the name we watch is gone
    if name in names:
        if event == "RTM_NEWLINK":
            by_index[index] = name
            states[name] = is_up(msg)
        else:
            states[name] = False
    changes = []
    for ifname, up in states.items():
        if known.get(ifname) != up:
            known[ifname] = up
            changes.append(InterfaceState(ifname, up))
    return changes
