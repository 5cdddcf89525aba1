"""Own-health checks ([[track]]): can this node serve? A failing one puts it in FAULT.

Each check runs on its own interval with a timeout and rise/fall hysteresis and
reports verdict changes through a callback. It never raises into the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hapair.config import Config
from hapair.config.checks import IcmpTrack, InterfaceTrack, ScriptTrack, TcpTrack, Track
from hapair.core.hysteresis import RiseFall
from hapair.probes import OWN_FAULT, own_fault

log = logging.getLogger(__name__)

OnVerdict = Callable[[str, bool, str], None]  # (check name, ok, reason)


def describe(track: Track) -> str:
    if isinstance(track, IcmpTrack):
        return f"icmp {track.target}"
    if isinstance(track, TcpTrack):
        return f"tcp {track.target}"
    if isinstance(track, InterfaceTrack):
        return f"interface {track.interface}"
    return f"script {track.command!r}"


async def check_once(track: Track) -> tuple[bool | None, str]:
    """One attempt, bounded by the check's timeout: (ok, reason); ok is None when the
    attempt failed for a reason of this host's (probes.own_fault), not of the target."""
    try:
        async with asyncio.timeout(track.timeout):
            if isinstance(track, IcmpTrack):
                from icmplib import async_ping

                host = await async_ping(
                    str(track.target), count=1, timeout=track.timeout, privileged=True
                )
                return host.is_alive, "echo reply" if host.is_alive else "no echo reply"
            if isinstance(track, TcpTrack):
                assert track.target.port is not None
                _, writer = await asyncio.open_connection(
                    str(track.target.address), track.target.port
                )
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return True, "connected"
            if isinstance(track, ScriptTrack):
                proc = await asyncio.create_subprocess_shell(
                    track.command,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                try:
                    code = await proc.wait()
                except asyncio.CancelledError:
                    proc.kill()
                    raise
                return code == 0, f"exit {code}"
            return True, "interface checks come from the link monitor"
    except TimeoutError:
        return False, f"no answer within {track.timeout:g}s"
    except Exception as exc:  # a check must never take the agent down
        reason = str(exc) or type(exc).__name__
        if own_fault(exc):
            return None, f"{reason} ({OWN_FAULT})"
        return False, reason


async def run_check(track: Track, on_verdict: OnVerdict) -> None:
    """Runs forever: one attempt per interval, verdict changes to `on_verdict`."""
    name = describe(track)
    verdict = RiseFall(track.rise, track.fall, up=True)  # trusted until proven failing
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        ok, reason = await check_once(track)
        if ok is None:
            log.warning("check %s: %s", name, reason)
        elif verdict.observe(ok):
            on_verdict(name, ok, reason)
        await asyncio.sleep(max(0.0, track.interval - (loop.time() - started)))


def start_checks(cfg: Config, on_verdict: OnVerdict) -> list[asyncio.Task[None]]:
    """A task for each [[track]] check, and one that watches the VIP and `interface`
    checks' interfaces (an interface check's verdict is its link state)."""
    tasks = [
        asyncio.create_task(run_check(track, on_verdict))
        for track in cfg.track
        if not isinstance(track, InterfaceTrack)
    ]
    ifnames = {v.interface for v in cfg.vips} | {
        t.interface for t in cfg.track if isinstance(t, InterfaceTrack)
    }
    if ifnames:
        tasks.append(asyncio.create_task(_watch_interfaces(ifnames, on_verdict)))
    return tasks


async def _watch_interfaces(ifnames: set[str], on_verdict: OnVerdict) -> None:
    from hapair.interfaces import watch_interfaces

    async for change in watch_interfaces(ifnames):
        on_verdict(f"interface {change.ifname}", change.up, "up" if change.up else "down")
