"""The reaper: a small process forked when the agent starts that takes the agent's VIPs off
their interfaces if the agent dies without shutting down (SIGKILL, a crash, the OOM killer),
so that a dead agent's VIPs are not still answering ARP when the peer takes them over.

It owns that one removal and nothing else: it never adds a VIP and decides nothing. The agent
tells it over a pipe the configured VIPs (a JSON line, at start and after each reload) and
"done" on a clean stop; the pipe closing without "done" means the agent is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from hapair.config.model import Vip

# Imported before the fork, so that the reaper has nothing to import when the agent dies.
from hapair.vip import VipAddresses, VipError

log = logging.getLogger("hapair.reaper")

DONE = b"done"
EXIT_WAIT = 2.0  # seconds a clean stop waits for the reaper to be gone


class Reaper:
    """The agent's end of the pipe: `Reaper.start(vips)` forks the reaper, `tell(vips)` after
    a reload, `done()` on a clean stop."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd: int | None = fd

    @classmethod
    def start(cls, vips: Iterable[Vip], realtime_priority: int = 0) -> Reaper:
        """Fork the reaper: before the event loop and before any thread exists."""
        # Both ends are close-on-exec: probe and notify scripts never hold the pipe open.
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        agent = os.getpid()  # not getppid() in the child: the agent may be dead by then
        pid = os.fork()
        if pid == 0:  # the reaper; it never returns into the agent's code
            code = 1
            try:
                os.close(write_end)
                code = _serve(read_end, agent, realtime_priority)
            except BaseException:
                with contextlib.suppress(BaseException):
                    log.exception("hapair reaper: failed")
            finally:
                os._exit(code)
        os.close(read_end)
        os.set_blocking(write_end, False)  # a stuck reaper must not stall the agent
        reaper = cls(pid, write_end)
        reaper.tell(vips)
        return reaper

    def tell(self, vips: Iterable[Vip]) -> None:
        """The VIPs to remove should the agent die: at start and after every reload."""
        self._send(json.dumps([[str(v.address), v.interface] for v in vips]).encode())

    def done(self) -> None:
        """A clean stop: the reaper exits touching nothing; wait (briefly) until it has."""
        if self._fd is None:
            return
        self._send(DONE)
        os.close(self._fd)
        self._fd = None
        deadline = time.monotonic() + EXIT_WAIT
        while time.monotonic() < deadline:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.01)

    def _send(self, line: bytes) -> None:
        if self._fd is None:
            return
        try:
            written = os.write(self._fd, line + b"\n")
        except OSError as exc:  # EPIPE: the reaper is gone; EAGAIN: it stopped reading
            why = exc.strerror or str(exc)
        else:
            if written == len(line) + 1:
                return
            why = "the pipe is full"
        log.error(
            "the reaper (pid %d) cannot be told (%s): if this agent is killed, its VIPs stay "
            "on their interfaces until it is started again",
            self.pid,
            why,
        )


# --- the reaper process ---------------------------------------------------------------------


def _serve(fd: int, agent: int, realtime_priority: int) -> int:
    """Wait for "done" or the end of the pipe; at the end, remove the last VIPs told."""
    # It lives exactly as long as the agent: a Ctrl-C or hangup of the agent's terminal is
    # not for it, nor is the SIGTERM that systemd sends to what is left of a unit whose main
    # process died (that would cut the removal short). Only SIGKILL ends it early.
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # standard error stays: it is where the agent logs
    os.closerange(3, fd)
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text("hapair-reaper")
    if realtime_priority > 0:  # it races the peer's deadtime, as the heartbeats do
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime_priority))
    logging.getLogger("hapair.vip").setLevel(logging.WARNING)  # one line of its own instead

    vips: list[Vip] = []
    pending = b""
    while chunk := os.read(fd, 4096):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line == DONE:
                return 0
            with contextlib.suppress(ValueError, TypeError):  # a mangled line: keep the last
                vips = [Vip(address=a, interface=i) for a, i in json.loads(line)]
    removed = asyncio.run(_remove(vips))
    log.warning(
        "hapair reaper: agent pid %d died without shutting down; %s",
        agent,
        "removed " + ", ".join(f"VIP {v.address} from {v.interface}" for v in removed)
        if removed
        else "none of its VIPs was on its interface",
    )
    return 0


async def _remove(vips: list[Vip]) -> list[Vip]:
    removed = []
    async with VipAddresses() as addresses:
        for vip in vips:
            try:
                if await addresses.remove(vip):
                    removed.append(vip)
            except (VipError, OSError) as exc:
                log.error("hapair reaper: %s", exc)
    return removed
