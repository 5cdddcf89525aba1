"""Heartbeat links: thin adapters that move opaque payloads between the two directors.

A link owns its socket or serial port, counts its errors and recovers by itself; it never
decodes, authenticates or judges a payload (that is the core's codec and detector).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from hapair.config import Config
    from hapair.links.serial import SerialHeartbeatLink
    from hapair.links.udp import UdpHeartbeatLink

    Link: TypeAlias = SerialHeartbeatLink | UdpHeartbeatLink

OnDatagram = Callable[[bytes], None]
log = logging.getLogger("hapair")


class LinkError(Exception):
    """A link cannot start: its interface or device is missing or misconfigured."""


async def open_links(cfg: Config, received: Callable[[str, bytes], None]) -> dict[str, Link]:
    """The config's links by name, each started; one that cannot start yet is said and
    retries by itself, so the others carry the heartbeats meanwhile."""
    from hapair.config.model import SerialLink
    from hapair.core.node import link_names
    from hapair.links.udp import UdpHeartbeatLink

    links: dict[str, Link] = {}
    for name, spec in zip(link_names(cfg), cfg.cluster.links, strict=True):
        on = partial(received, name)
        if isinstance(spec, SerialLink):
            from hapair.links.serial import SerialHeartbeatLink  # pyserial only if needed

            links[name] = SerialHeartbeatLink(spec, on)
        else:
            links[name] = UdpHeartbeatLink(spec, on)
    for link in links.values():
        try:
            await link.start()
        except LinkError as exc:
            log.error("%s; the link stays down until it can be opened", exc)
    return links


__all__ = ["LinkError", "OnDatagram", "open_links"]
