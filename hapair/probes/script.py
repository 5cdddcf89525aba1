"""Script probe: runs `command` with the shell; up when it exits 0 within the timeout.

Owns the child process: it gets HAPAIR_ADDRESS and HAPAIR_PORT, its output's last line
goes into the reason, and on timeout its whole process group is killed, never left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from ipaddress import IPv4Address, IPv6Address

from hapair.config.checks import ScriptProbe
from hapair.probes import Result, describe_error, one_line

_TAIL = 512  # bytes of output kept for the reason; the rest is read and dropped


async def check(probe: ScriptProbe, address: IPv4Address | IPv6Address, port: int) -> Result:
    started = time.perf_counter()
    label = f"script {probe.command!r}"
    try:
        async with asyncio.timeout(probe.timeout):
            ok, outcome = await _run(probe.command, address, port)
    except TimeoutError:
        ok, outcome = False, f"no exit within {probe.timeout:g}s, killed"
    except Exception as exc:
        ok, outcome = False, describe_error(exc)
    return Result(ok, f"{label}: {outcome}", time.perf_counter() - started)


async def _run(command: str, address: IPv4Address | IPv6Address, port: int) -> tuple[bool, str]:
    env = {**os.environ, "HAPAIR_ADDRESS": str(address), "HAPAIR_PORT": str(port)}
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: a timeout kills the shell's children too
    )
    assert proc.stdout is not None
    try:
        tail, code = await asyncio.gather(_tail(proc.stdout), proc.wait())
    except BaseException:  # timed out or cancelled: the shell or a child still runs
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()  # reap it; a killed process exits at once
        raise
    last = one_line(tail.decode(errors="replace").strip().rpartition("\n")[2])
    if code == 0:
        return True, "exit 0" + (f": {last}" if last else "")
    status = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    return False, status + (f": {last}" if last else "")


async def _tail(stream: asyncio.StreamReader) -> bytes:
    """Read to EOF, keeping only the last _TAIL bytes (a chatty script costs no memory)."""
    tail = b""
    while chunk := await stream.read(4096):
        tail = (tail + chunk)[-_TAIL:]
    return tail
