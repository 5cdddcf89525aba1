"""Notify scripts ([alerts.scripts]): run one at a time, in the order asked, each within
`timeout`, in a task of their own so the agent's input loop never waits for one.

A command line is split like a shell would (shlex) but no shell runs it; the alert comes
in HAPAIR_* environment variables. On timeout the script's whole process group is killed.
Output goes where the agent's goes (its log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)

OnDone = Callable[[bool], None]  # called with True when the script exited 0


async def run_script(command: str, env: dict[str, str], timeout: float) -> tuple[bool, str]:
    """Runs one script to its end or its timeout: (exited 0, what happened)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return False, f"cannot split the command line: {exc}"
    if not argv:
        return False, "empty command"
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
    except OSError as exc:
        return False, f"cannot start: {exc}"
    try:
        async with asyncio.timeout(timeout):
            code = await proc.wait()
    except BaseException as exc:  # timed out or cancelled: kill it and all it started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            return False, f"no exit within {timeout:g}s, killed"
        raise
    if code == 0:
        return True, "exit 0"
    return False, f"killed by signal {-code}" if code < 0 else f"exit {code}"


class ScriptRunner:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._queue: asyncio.Queue[tuple[str, dict[str, str], OnDone | None]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.unfinished = 0  # submitted and not yet done

    def submit(self, command: str, env: dict[str, str], on_done: OnDone | None = None) -> None:
        """Queue `command`; it runs after every one submitted before it has finished."""
        self._queue.put_nowait((command, env, on_done))
        self.unfinished += 1
        if self._worker is None:
            self._worker = asyncio.create_task(self._run_queue(), name="notify scripts")

    async def _run_queue(self) -> None:
        while True:
            command, env, on_done = await self._queue.get()
            try:
                ok, outcome = await run_script(command, env, self.timeout)
                (log.info if ok else log.error)("notify script %r: %s", command, outcome)
                if on_done is not None:
                    on_done(ok)
            finally:
                self.unfinished -= 1

    async def close(self) -> None:
        """Stops at once: a running script is killed, queued ones are dropped."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
