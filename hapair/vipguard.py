"""The VIP guard: a small process of its own, started with the agent, that takes the
agent's VIPs off their interfaces if the agent dies without shutting down (SIGKILL, a
crash, the OOM killer), so that a dead agent's VIPs are not still answering ARP when the
peer takes them over.

It owns that one removal and nothing else: it never adds a VIP and decides nothing. The
agent tells it over a pipe the configured VIPs (a JSON line, at start and after each
reload) and "done" on a clean stop; the pipe closing without "done" means the agent is
gone. It is exec'd, not forked (a fork would hold a copy of the agent's heap), runs this
file on a few standard modules (what the guard needs is imported at the top; the agent's
side imports its own inside its functions), and removes the addresses with iproute2's
`ip`, spawned directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

TYPE_CHECKING = False  # not typing's: the guard does not import typing
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterable

    from hapair.config.model import Vip

DONE = b"done"
EXIT_WAIT = 2.0  # seconds a clean stop waits for the guard to be gone
PRIORITY = {"ERROR": 3, "WARNING": 4, "INFO": 6}  # syslog's, as hapair/logs.py gives them


class VipGuard:
    """The agent's end of the pipe: `VipGuard.start(vips)` starts the guard, `tell(vips)`
    after a reload, `done()` on a clean stop."""

    def __init__(self, proc: subprocess.Popen[bytes], fd: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._fd: int | None = fd

    @classmethod
    def start(
        cls, vips: Iterable[Vip], realtime_priority: int = 0, style: str = "text", node: str = ""
    ) -> VipGuard:
        """Start the guard: a Python of its own (no site packages) running this file, in a
        session of its own; it shares the agent's standard error, where it logs in the
        agent's `style` (hapair/logs.py)."""
        import subprocess

        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    os.path.abspath(__file__),
                    str(read_end),
                    str(os.getpid()),
                    str(realtime_priority),
                    _ip_command(),
                    style,
                    node,
                ],
                pass_fds=(read_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        os.set_blocking(write_end, False)  # a stuck guard must not stall the agent
        guard = cls(proc, write_end)
        guard.tell(vips)
        return guard

    def tell(self, vips: Iterable[Vip]) -> None:
        """The VIPs to remove should the agent die: at start and after every reload."""
        self._send(json.dumps([[str(v.address), v.interface] for v in vips]).encode())

    def done(self) -> None:
        """A clean stop: the guard exits touching nothing; wait (briefly) until it has."""
        import subprocess

        if self._fd is None:
            return
        self._send(DONE)
        os.close(self._fd)
        self._fd = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(EXIT_WAIT)

    def _send(self, line: bytes) -> None:
        if self._fd is None:
            return
        try:
            written = os.write(self._fd, line + b"\n")
        except OSError as exc:  # EPIPE: the guard is gone; EAGAIN: it stopped reading
            why = exc.strerror or str(exc)
        else:
            if written == len(line) + 1:
                return
            why = "the pipe is full"
        import logging

        logging.getLogger("hapair").error(
            "the VIP guard (pid %d) cannot be told (%s): if this agent is killed, its VIPs "
            "stay on their interfaces until it is started again",
            self.pid,
            why,
        )


def _ip_command() -> str:
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin", *os.get_exec_path()):
        path = os.path.join(folder, "ip")
        if os.access(path, os.X_OK):
            return path
    import logging

    logging.getLogger("hapair").error(
        "no `ip` command (iproute2): a killed agent's VIPs stay until it starts again"
    )
    return "/usr/sbin/ip"


# --- the guard process ----------------------------------------------------------------------


class Guard:
    """The guard's side: what it was told, and what it says."""

    def __init__(self, agent: int, ip: str, style: str = "text", node: str = "") -> None:
        self.agent, self.ip, self.style, self.node = agent, ip, style, node
        self.vips: list[tuple[str, str]] = []

    def say(self, level: str, message: str) -> None:
        """One line on standard error, as the agent's log has it (hapair/logs.py)."""
        now = time.time()
        if self.style == "journal":
            line = f"<{PRIORITY.get(level, 6)}>{message}"
        elif self.style == "json":
            entry = {"time": round(now, 3), "level": level.lower(), "event": "vip_guard"}
            entry |= {"node": self.node, "message": message, "fields": {}}
            line = json.dumps(entry, ensure_ascii=False)
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            line = f"{stamp},{int(now % 1 * 1000):03d} {level} {message}"
        os.write(2, (" ".join(line.splitlines()) + "\n").encode(errors="replace"))

    def serve(self, fd: int, realtime_priority: int) -> int:
        """Wait for "done" or the end of the pipe; at the end, remove the last VIPs told."""
        # It lives exactly as long as the agent: a Ctrl-C or hangup of the agent's terminal
        # is not for it, nor is the SIGTERM that systemd sends to what is left of a unit
        # whose main process died (that would cut the removal short). Only SIGKILL ends it.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
            comm.write("hapair-vipguard")
        if realtime_priority > 0:  # it races the peer's deadtime, as the heartbeats do
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime_priority))
        pending = b""
        while chunk := os.read(fd, 4096):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line == DONE:
                    return 0
                with contextlib.suppress(ValueError, TypeError):  # mangled: keep the last
                    self.vips = [(str(a), str(i)) for a, i in json.loads(line)]
        removed = [f"VIP {a} from {i}" for a, i in self.vips if self.remove(a, i)]
        self.say(
            "WARNING",
            f"hapair vipguard: agent pid {self.agent} died without shutting down; "
            + (
                "removed " + ", ".join(removed)
                if removed
                else "none of its VIPs was on its interface"
            ),
        )
        return 0

    def remove(self, address: str, ifname: str) -> bool:
        """`ip address del`; True when the address was there and is gone."""
        read_end, write_end = os.pipe()
        try:
            pid = os.posix_spawn(
                self.ip,
                [self.ip, "address", "del", address, "dev", ifname],
                {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_end, 2),
                ],
            )
        except OSError as exc:
            self.say("ERROR", f"hapair vipguard: {address} on {ifname}: {exc}")
            return False
        finally:
            os.close(write_end)
        error = b""
        while chunk := os.read(read_end, 4096):
            error += chunk[: 4096 - len(error)]
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            return True
        text = error.decode(errors="replace").strip()
        if "Cannot assign requested address" not in text and "Cannot find device" not in text:
            self.say("ERROR", f"hapair vipguard: removing {address} from {ifname}: {text}")
        return False


def main(argv: list[str]) -> int:
    fd, agent, realtime_priority, ip, style, node = argv
    guard = Guard(int(agent), ip, style, node)
    try:
        return guard.serve(int(fd), int(realtime_priority))
    except BaseException as exc:
        guard.say("ERROR", f"hapair vipguard: failed: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
