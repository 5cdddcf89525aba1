"""The checker's side: `python -m hapair.checker FD STYLE NODE`, started by the agent.

It runs the prober (probes/prober.py) on the targets the agent sends over the socket FD
and sends back what changed (channel.py). It runs at normal priority, with no memory
locked, and lives only as long as the agent: the end of the socket ends it, and so does
the agent's death (PR_SET_PDEATHSIG), should the checker be stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
from typing import Any, cast

from hapair import logs
from hapair.checker.channel import (
    ALIVE_EVERY,
    MAX_MESSAGE,
    Alive,
    AskResults,
    BadMessage,
    Entry,
    Results,
    Targets,
    Verdicts,
    encode,
    probe_adapter,
    receive,
)
from hapair.probes.prober import Prober

log = logging.getLogger("hapair")

PR_SET_PDEATHSIG = 1


class Checker:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.prober = Prober(self._on_verdict)
        self._changes: list[Entry] = []
        self.taken = 0  # Targets messages taken: the agent waits for a long take
        self._loop = asyncio.get_running_loop()

    def _on_verdict(self, key: Any, ok: bool, reason: str) -> None:
        # Changes in one turn of the loop go in one message (1,000 servers up at once).
        if not self._changes:
            self._loop.call_soon(self._flush)
        last = self.prober.watches[key].last
        self._changes.append((key, ok, reason, last.latency if last is not None else 0.0))

    def _flush(self) -> None:
        changes, self._changes = self._changes, []
        self._write(Verdicts(changes))

    def _write(self, msg: Verdicts | Results | Alive) -> None:
        transport = self.writer.transport
        if transport.get_write_buffer_size() > MAX_MESSAGE:  # the agent stopped reading
            raise SystemExit("hapair checker: the agent reads nothing; exiting")
        self.writer.write(encode(msg))

    def take(self, msg: Targets) -> None:
        from hapair import probes

        probes.preload({t.probe.type for t in msg.targets.values()})
        watches = self.prober.watches
        # A target already running keeps its state: the agent's start verdict is for new ones.
        self.prober.sync(
            {pid: watches[pid].target if pid in watches else t for pid, t in msg.targets.items()}
        )
        self.taken += 1

    def results(self) -> None:
        entries: list[Entry] = [
            (cast(int, pid), w.last.ok, w.last.reason, w.last.latency)
            for pid, w in self.prober.watches.items()
            if w.last is not None
        ]
        self._write(Results(entries))

    def write_alive(self) -> None:
        self._write(Alive(self.taken))

    async def alive(self) -> None:
        while True:
            self.write_alive()
            await asyncio.sleep(ALIVE_EVERY)


async def serve(sock: socket.socket) -> int:
    probe_adapter()  # pydantic imported before the first Alive, not inside the agent's wait
    reader, writer = await asyncio.open_connection(sock=sock)
    checker = Checker(writer)
    beat = asyncio.create_task(checker.alive())
    try:
        while True:
            try:
                msg = await receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                # The agent closed its end (a reset when it left our words unread).
                return 0
            if isinstance(msg, Targets):
                checker.take(msg)
                checker.write_alive()  # at once: the agent waits for this take to end
            elif isinstance(msg, AskResults):
                checker.results()
            else:
                raise BadMessage(f"not a message for the checker: {type(msg).__name__}")
    finally:
        beat.cancel()
        with contextlib.suppress(BaseException):
            await beat
        await checker.prober.close()
        writer.close()


def _run(main: Any) -> int:
    """The checker's loop: asyncio's. HAPAIR_CHECKER_LOOP=uvloop is bench/probes'
    comparison (uvloop installed by hand: it measured no faster, so it is no dependency)."""
    if os.environ.get("HAPAIR_CHECKER_LOOP", "asyncio") == "uvloop":
        uvloop = importlib.import_module("uvloop")
        return int(uvloop.run(main))
    return int(asyncio.run(main))


def main(argv: list[str]) -> int:
    fd, style, node = argv
    # Ctrl-C and a hangup are the agent's to handle; it then closes the socket.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the agent died before the line above
        return 1
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write("hapair-checker")
    with contextlib.suppress(OSError, AttributeError):  # only the agent races a deadline
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    logs.setup(os.environ.get("HAPAIR_LOG", "INFO"), style, node)
    os.set_inheritable(int(fd), False)  # not for the probe scripts it starts
    sock = socket.socket(fileno=int(fd))
    try:
        return _run(serve(sock))
    except BadMessage as exc:
        log.error("hapair checker: a message from the agent that is not ours: %s", exc)
        return 1
