"""The agent's inputs, as they wait in its one queue: small frozen events.

Everything that may change this node's HA state arrives as one of these, and the agent
handles them one at a time, in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from hapair.control import Request


@dataclass(frozen=True, slots=True)
class Received:
    """A datagram or a frame from a heartbeat link (not yet checked)."""

    link: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Tick:
    """The core's next deadline has come."""


@dataclass(frozen=True, slots=True)
class Checked:
    """An own-health check's verdict changed."""

    check: str
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Asked:
    """A checked control request, and where its answer goes."""

    request: Request
    reply: asyncio.Future[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class WarmedUp:
    """The warm-up `task` has learnt enough of the MASTER's connections."""

    task: asyncio.Task[None]
    reason: str


@dataclass(frozen=True, slots=True)
class Pet:
    """Time to tell systemd's watchdog this loop of inputs is alive (systemd.py)."""


@dataclass(frozen=True, slots=True)
class Reload:
    """SIGHUP."""


@dataclass(frozen=True, slots=True)
class Stop:
    """SIGTERM or SIGINT."""


Input = Received | Tick | Checked | Asked | WarmedUp | Pet | Reload | Stop
