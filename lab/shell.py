"""Small tools of the lab: commands, namespaces, waiting, a director's status."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.topology import PYTHON, SLOWDOWN


class LabError(Exception):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; LabError with what it said when it fails. The
    lab's and the tests' one way to run a command (`timeout` x SLOWDOWN)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * SLOWDOWN)
    if check and proc.returncode != 0:
        said = proc.stderr.strip() or proc.stdout
        raise LabError(f"{' '.join(cmd)!r} exited {proc.returncode}: {said}")
    return proc


@dataclass(frozen=True)
class Netns:
    """A network namespace, by name: commands in it, links out of it."""

    name: str

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def veth(self, ifname: str, peer: Netns, peer_ifname: str) -> None:
        """Connect this namespace to `peer` with a veth pair; both ends up, no address."""
        self.ip(
            "link", "add", ifname, "type", "veth", "peer", "name", peer_ifname, "netns", peer.name
        )
        self.ip("link", "set", ifname, "up")
        peer.ip("link", "set", peer_ifname, "up")


@dataclass
class Bridge:
    """A bridge named `name` inside `netns`, or in the root namespace if `netns` is None."""

    netns: Netns | None
    name: str
    ports: list[str] = field(default_factory=list)

    def attach(self, ns: Netns, ifname: str, cidr: str | None = None) -> str:
        """Add a veth from this bridge into `ns` as `ifname`, up (with `cidr`); return its port."""
        port = f"{self.name[:11]}p{len(self.ports) + 1}"
        self.ports.append(port)
        self.ip("link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns.name)
        self.ip("link", "set", port, "master", self.name, "up")
        if cidr is not None:
            ns.ip("addr", "add", cidr, "dev", ifname)
        ns.ip("link", "set", ifname, "up")
        return port

    def create(self) -> Bridge:
        """Make the bridge, up; no ports yet."""
        self.ip("link", "add", self.name, "type", "bridge")
        self.ip("link", "set", self.name, "up")
        return self

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.netns.ip(*args) if self.netns else sh("ip", *args)


def run_in(where: str | None, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`cmd` on this machine (`where` None) or in network namespace `where`."""
    return (
        sh(*cmd, check=check)
        if where is None
        else sh("ip", "netns", "exec", where, *cmd, check=check)
    )


def agent_command(ns: str, config: Path, python: str = PYTHON) -> list[str]:
    """The command that runs an agent (`hapair run -c config`) in network namespace `ns`."""
    return ["ip", "netns", "exec", ns, python, "-m", "hapair", "run", "-c", str(config)]


def serial_cable(tty1: Path, tty2: Path) -> list[str]:
    """The command that makes the serial heartbeat cable between two directors: a socat
    pty pair, its ends linked at `tty1` and `tty2`."""
    return ["socat", f"pty,raw,echo=0,link={tty1}", f"pty,raw,echo=0,link={tty2}"]


def ip_batch(lines: list[str], ns: str | None = None) -> None:
    """Several `ip` commands in one process (`ip -batch`), in namespace `ns`."""
    if not lines:
        return
    cmd = ["ip", "-batch", "-"] if ns is None else ["ip", "-n", ns, "-batch", "-"]
    proc = subprocess.run(
        cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60 * SLOWDOWN
    )
    if proc.returncode != 0:
        raise LabError(f"ip {'-n ' + ns if ns else ''} -batch: {proc.stderr.strip()}")


def netns_add(name: str) -> None:
    """A new network namespace `name`, its loopback up."""
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")


def stop(proc: subprocess.Popen[Any], timeout: float = 10) -> int:
    """Stop `proc` if it still runs: SIGTERM, SIGKILL after `timeout` s; its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """`predicate()`'s first true value; LabError after `timeout` seconds (x SLOWDOWN)."""
    deadline = time.monotonic() + timeout * SLOWDOWN
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"not within {timeout * SLOWDOWN:.0f} s: {what}")
        time.sleep(step)


def has_ipvs() -> bool:
    if not Path("/proc/net/ip_vs").exists():
        subprocess.run(["modprobe", "-q", "ip_vs"], capture_output=True, check=False)
    return Path("/proc/net/ip_vs").exists()


def existing_namespaces() -> set[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def status_of(director: str, lab: Path) -> dict[str, Any] | None:
    """What `hapair status --json` prints for `director` of the lab in directory `lab`."""
    return status_at(lab / f"{director}.sock")


def status_at(socket: Path) -> dict[str, Any] | None:
    """What `hapair status --json` prints (the same control-socket request, in-process) for
    the agent on control socket `socket`; None when no agent answers there."""
    from hapair import control_client

    try:
        reply = control_client.request(socket, {"cmd": "status"}, timeout=5 * SLOWDOWN)
    except (control_client.NoAgent, OSError):
        return None
    result = reply.get("result") if reply.get("ok") else None
    return result if isinstance(result, dict) else None


def state_of(director: str, lab: Path) -> str | None:
    s = status_of(director, lab)
    return None if s is None else str(s["state"])


def log_tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in text)
