"""The agent's chores on its own host: files that outlive it, its scheduling, its limits.

Each function does one thing to this process or its state directory and says so in the
log when the host refuses; none of them decides anything about the pair.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import socket
import time
from pathlib import Path

from hapair.config import Config, Problem
from hapair.config.checks import InterfaceTrack

log = logging.getLogger("hapair")


_CLONE_NEWNET = 0x40000000


def enter_netns(fd: int) -> None:
    """Move the calling thread into the network namespace open at `fd` (os.setns is
    Python 3.12's)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def read_key(path: Path) -> bytes:
    return path.read_bytes()


def atomic_write(path: Path, text: str, *, keep_owner: bool = False) -> None:
    """Replace `path` with `text` whole: a crash leaves the old file or the new, never a
    part (written beside it, then renamed over it). OSError when the host refuses.
    `keep_owner`: the new file gets the old one's mode and owner, and is on disk (fsync)
    before it replaces the old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    if not keep_owner:
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if old is not None:
            os.fchmod(fd, old.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.fchown(fd, old.st_uid, old.st_gid)
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)


def next_epoch(node: str, state_dir: Path) -> int:
    """An epoch larger than any this node used before: the clock, but never backwards."""
    epoch = time.time_ns()
    path = state_dir / f"{node}.epoch"
    with contextlib.suppress(OSError, ValueError):
        epoch = max(epoch, int(path.read_text()) + 1)
    try:
        atomic_write(path, str(epoch))
    except OSError as exc:
        log.warning("cannot keep the heartbeat epoch in %s (%s); using the clock alone", path, exc)
    return epoch


def settle_heap() -> None:
    """Take what start-up or a reload made out of the cyclic collector's sight, after
    collecting the old config's garbage: a full collection of the state of thousands of
    probe targets stopped the event loop for 40-110 ms on the host, and would for about
    ten times as long in a slow VM, whenever it came. Called when a pause is expected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def raise_file_limit() -> None:
    """The soft limit on open files up to the hard one: probes, the monitor's clients,
    the links and the control socket share it (systemd's soft default is 1,024, and a
    flood of web clients once starved the rest)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("open files stay limited to %d: %s", soft, exc)


def run_realtime(priority: int) -> None:
    """Heartbeats must go out on time on a saturated machine (like Linux-HA heartbeat):
    SCHED_FIFO and memory locked. Children (probe scripts, notify scripts) get the
    normal policy back (SCHED_RESET_ON_FORK)."""
    if priority <= 0:
        return
    try:
        policy = os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0)
        os.sched_setscheduler(0, policy, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        log.warning("running without realtime priority %d: %s", priority, exc)
        return
    import ctypes

    # MCL_ONFAULT (Linux 4.4): lock each page once it is used, rather than fault in every
    # page of every mapped library at once (that made the agent ~15 MB larger).
    mcl_current, mcl_future, mcl_onfault = 1, 2, 4
    libc = ctypes.CDLL(None, use_errno=True)
    locked = libc.mlockall(mcl_current | mcl_future | mcl_onfault) == 0
    if not locked and libc.mlockall(mcl_current | mcl_future) != 0:  # a kernel before 4.4
        log.warning("memory not locked: %s", os.strerror(ctypes.get_errno()))


def missing_interfaces(cfg: Config) -> list[Problem]:
    """The VIP, [[track]] and sync interfaces of `cfg` that this host (its network
    namespace) lacks."""
    named = [(f"vips.{i}.interface", v.interface) for i, v in enumerate(cfg.vips)]
    named += [
        (f"track.{i}.interface", t.interface)
        for i, t in enumerate(cfg.track)
        if isinstance(t, InterfaceTrack)
    ]
    if cfg.sync is not None and cfg.sync.enabled and cfg.sync.interface is not None:
        named.append(("sync.interface", cfg.sync.interface))
    problems = []
    for path, ifname in named:
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            problems.append(Problem(path, f"no interface {ifname!r} on this host"))
    return problems
