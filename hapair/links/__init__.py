"""Heartbeat links: thin adapters that move opaque payloads between the two directors.

A link owns its socket or serial port, counts its errors and recovers by itself; it never
decodes, authenticates or judges a payload (that is the core's codec and detector).
"""

from __future__ import annotations

from collections.abc import Callable

OnDatagram = Callable[[bytes], None]


class LinkError(Exception):
    """A link cannot start: its interface or device is missing or misconfigured."""


__all__ = ["LinkError", "OnDatagram"]
