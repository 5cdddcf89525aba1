"""Which VIPs to take in which order, and which a reload takes away. Pure.

The election decides whether this node holds the VIPs; this decides the order in which
a takeover adds them, and what a new config removes.
"""

from __future__ import annotations

from collections.abc import Iterable

from hapair.config.model import Service, Vip


def takeover_order(vips: Iterable[Vip], services: Iterable[Service]) -> list[Vip]:
    """The VIPs no service listens on (a NAT gateway of the real servers) first, then the
    services' own: a client sent to a service before the real servers learnt their
    gateway's new MAC would lose the first reply (a SYN-ACK is sent again only after 1 s).
    Otherwise in the config's order."""
    served = {s.address for s in services if s.address is not None}
    return sorted(vips, key=lambda v: v.address.ip in served)


def leaving(running: Iterable[Vip], new: Iterable[Vip]) -> list[Vip]:
    """The running VIPs that the new config no longer has (address and interface)."""
    kept = {(v.address, v.interface) for v in new}
    return [v for v in running if (v.address, v.interface) not in kept]
