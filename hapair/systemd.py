"""systemd's notify protocol (sd_notify(3)): one datagram of NAME=value lines to the
AF_UNIX socket named by NOTIFY_SOCKET (a leading '@' is the abstract namespace).

What the agent says and when is the contract's: READY=1 once the control socket listens
and the first heartbeat is out; STATUS= on every state change; WATCHDOG=1 from the agent's
loop of inputs; RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a reload;
STOPPING=1 on SIGTERM. Without NOTIFY_SOCKET every call does nothing. A send that fails
is logged once and never raised: systemd going away must not take the MASTER down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hapair.core.node import HaNode

log = logging.getLogger("hapair")

MAX_STATUS = 200  # characters of STATUS=; systemctl shows one line


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_every = _watchdog_every(env)
        if environ is None:  # the scripts the agent runs are not the service's main process
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        self._sock: socket.socket | None = None
        self._failed = False
        self.ready_sent = False
        self._status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self) -> None:
        self.ready_sent = True
        self.send("READY=1")

    def status(self, text: str) -> None:
        """STATUS=, when it says something new."""
        line = " ".join(text.split())[:MAX_STATUS]  # one line, no newline to split fields
        if line != self._status:
            self._status = line
            self.send(f"STATUS={line}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    @contextlib.contextmanager
    def reloading(self) -> Iterator[None]:
        """RELOADING=1 (with the time, as systemd 253 wants it) before, READY=1 after."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        try:
            yield
        finally:
            self.ready()

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def send(self, message: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("systemd notify to %r failed: %s", self.address, exc)
            self._failed = True
        else:
            self._failed = False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(node: HaNode, held: bool, vips: int) -> str:
    """What `systemctl status` shows: e.g. `MASTER, peer lvs2 BACKUP, 2 VIPs held`."""
    name, hb = node.peer.name, node.peer.heartbeat
    if node.detector.peer_alive:
        seen = f"peer {name} {hb.state if hb else '?'}"
    else:
        seen = f"peer {name} not heard" if name else "no peer heard"
    count = vips if held else 0
    return f"{node.state}, {seen}, {count} VIP{'' if count == 1 else 's'} held"


def _address(value: str) -> str | bytes | None:
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # unset, or a form this agent does not speak (vsock:): say nothing


def _watchdog_every(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1: a quarter of WATCHDOG_USEC (systemd asks for at least
    every half; the inbox may hold a pet back a moment). None: no watchdog for us."""
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 4e6 if usec > 0 else None
