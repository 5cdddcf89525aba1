"""The agent's side of the checker: starts it (exec'd, not a fork of the agent's heap),
tells it the targets, takes its verdict changes, and starts it again when it dies, hangs
or talks nonsense.

The verdicts live here, not in the checker: while a checker is restarted they stay as
they were (a restart is not a server failure), and the new one starts each probe from
the verdict the agent holds, so no real server leaves IPVS because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hapair.checker.channel import (
    Alive,
    AskResults,
    BadMessage,
    Results,
    Targets,
    Verdicts,
    encode,
    receive,
)
from hapair.core.respawn import Respawn
from hapair.core.shared_probes import Target
from hapair.status import CheckerStatus, LastRestart

log = logging.getLogger("hapair")

HANG = 5.0  # s without a word from the checker: it is hung (or stopped), and replaced
# s a checker has for its first word and for each take of new targets: importing pydantic
# and a probe type's library (aiohttp) takes ~0.3 s on a host and seconds in a slow VM,
# and 100,000 targets take a while too; neither is a hang.
START_LIMIT = 60.0
EXIT_WAIT = 2.0  # s a stopping checker is given before SIGKILL
RESULTS_FRESH = 1.0  # s the latest results stay good for the status

OnVerdict = Callable[[int, bool, str], None]
OnRestart = Callable[[str, float], None]  # why, and the delay before the new start
LastResult = tuple["bool | None", str, float]  # ok, reason, latency in s


class CheckerClient:
    def __init__(self, on_verdict: OnVerdict, on_restart: OnRestart) -> None:
        self.on_verdict = on_verdict
        self.on_restart = on_restart
        self.targets: dict[int, Target] = {}
        self.verdicts: dict[int, bool] = {}
        self.results: dict[int, LastResult] = {}
        self.respawn = Respawn()
        self.pid: int | None = None
        self.state = "stopped"
        self.last_restart: LastRestart | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._results_at = -1e9  # loop time of the latest Results
        self._results_asked: asyncio.Future[None] | None = None
        self._sent = self._taken = 0  # Targets sent to this checker, and taken by it
        self._deadline: asyncio.Timeout | None = None  # of the word awaited from it

    # What the services side calls.

    def sync(self, targets: dict[int, Target]) -> None:
        """Probe exactly these: new ids start from their start verdict, gone ones stop."""
        self.targets = dict(targets)
        self.verdicts = {pid: self.verdicts.get(pid, t.start_up) for pid, t in targets.items()}
        self.results = {pid: r for pid, r in self.results.items() if pid in targets}
        if self._task is None and targets and not self._closing:
            self.state = "starting"
            self._task = asyncio.create_task(self._supervise(), name="checker")
        else:
            self._send_targets()

    async def refresh(self, timeout: float = 1.0) -> None:
        """The latest results, when those held are older than RESULTS_FRESH (the status
        is made from them); after `timeout`, what is held."""
        asked = self.want_results()
        if asked is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(asked)

    def want_results(self) -> asyncio.Future[None] | None:
        """Ask for the latest results if those held are stale; what to await, if anything."""
        if self._writer is None:
            return None
        loop = asyncio.get_running_loop()
        if loop.time() - self._results_at < RESULTS_FRESH:
            return None
        if self._results_asked is None or self._results_asked.done():
            self._results_asked = loop.create_future()
            self._write(AskResults())
        return self._results_asked

    def status(self) -> CheckerStatus:
        return {
            "pid": self.pid,
            "state": self.state,
            "probes": len(self.targets),
            "restarts": self.respawn.count,
            "last_restart": self.last_restart,
        }

    async def close(self) -> None:
        """The checker told to stop (the end of its socket) and gone, SIGKILLed if slow."""
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXIT_WAIT + 1):
                    await asyncio.shield(self._task)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.state = "stopped"

    # The checker's life.

    def _send_targets(self) -> None:
        # To a running checker the start verdicts matter only for new ids; to a new one
        # they are the verdicts held, so it goes on from where the last one was.
        held = self.verdicts
        if self._write(
            Targets({pid: replace(t, start_up=held[pid]) for pid, t in self.targets.items()})
        ):
            self._sent += 1
            if self._deadline is not None:  # the checker is busy with it for a while
                self._deadline.reschedule(asyncio.get_running_loop().time() + START_LIMIT)

    def _write(self, msg: Targets | AskResults) -> bool:
        if self._writer is None or self._writer.is_closing():
            return False
        self._writer.write(encode(msg))
        return True

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                why = await self._run_one()
            except OSError as exc:  # no process, no socket: out of descriptors, memory
                why = f"could not be started: {exc}"
            if self._closing:
                break
            delay = self.respawn.died(loop.time())
            self.last_restart = {"time": round(time.time(), 3), "reason": why}
            self.state = "waiting" if delay else "starting"
            self.on_restart(why, delay)
            if delay:
                await asyncio.sleep(delay)
        self.state = "stopped"

    async def _run_one(self) -> str:
        """One checker, from its start to its end; why it ended."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = _spawn(theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = proc.pid
        why = "ended"
        try:
            reader, writer = await asyncio.open_connection(sock=ours)
            self._writer = writer
            self._sent = self._taken = 0
            self._send_targets()
            why = await self._read(reader)
        finally:
            self._writer = None
            if self._results_asked is not None and not self._results_asked.done():
                self._results_asked.set_result(None)
            ours.close()
            ended = await _end(proc, kill=not self._closing)
            why = f"{why}; {ended}" if why != "ended" else ended
            self.pid = None
        return why

    async def _read(self, reader: asyncio.StreamReader) -> str:
        loop = asyncio.get_running_loop()
        while True:
            taking = self._taken < self._sent  # its first word, or a take, may be long
            try:
                async with asyncio.timeout(START_LIMIT if taking else HANG) as self._deadline:
                    msg = await receive(reader)
            except TimeoutError:
                if self._taken < self._sent:
                    return f"its targets not taken in {START_LIMIT:.0f} s (hung or stopped): killed"
                return f"it said nothing for {HANG:.0f} s (hung or stopped): killed"
            except asyncio.IncompleteReadError:
                return "ended"
            except BadMessage as exc:
                return f"it sent what is not a message ({exc}): killed"
            finally:
                self._deadline = None
            if isinstance(msg, Alive):
                if msg.taken > self._sent:
                    return f"it took {msg.taken} sets of targets of the {self._sent} sent: killed"
                self._taken = msg.taken
                if self._taken == self._sent:
                    self.state = "running"
            elif isinstance(msg, Verdicts):
                self._take_verdicts(msg)
            elif isinstance(msg, Results):
                self.results.update(
                    (pid, (ok, reason, latency))
                    for pid, ok, reason, latency in msg.entries
                    if pid in self.targets
                )
                self._results_at = loop.time()
                if self._results_asked is not None and not self._results_asked.done():
                    self._results_asked.set_result(None)
            else:
                return f"it sent {type(msg).__name__}, which is the agent's: killed"

    def _take_verdicts(self, msg: Verdicts) -> None:
        verdicts, results = self.verdicts, self.results
        for pid, ok, reason, latency in msg.entries:
            if pid not in verdicts or ok is None:
                continue  # a probe that is gone since (or nonsense): nothing to say
            results[pid] = (ok, reason, latency)
            if verdicts[pid] != ok:
                verdicts[pid] = ok
                self.on_verdict(pid, ok, reason)


def _spawn(fd: int) -> subprocess.Popen[bytes]:
    from hapair import logs

    style, node = logs.configured
    # -I only if the agent runs so: a test's PYTHONPATH must reach the checker too.
    python = [sys.executable, "-I"] if sys.flags.isolated else [sys.executable]
    return subprocess.Popen(
        [*python, "-m", "hapair.checker", str(fd), style, node],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


async def _end(proc: subprocess.Popen[Any], kill: bool) -> str:
    """Reap the checker (SIGKILLed first when `kill`, or when it does not exit in time);
    how it ended."""
    if kill and proc.poll() is None:
        proc.kill()
    deadline = time.monotonic() + EXIT_WAIT
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            deadline = float("inf")
        await asyncio.sleep(0.01)
    code = proc.returncode
    if code < 0:
        return f"pid {proc.pid} killed by {signal.Signals(-code).name}"
    return f"pid {proc.pid} exited with status {code}"
