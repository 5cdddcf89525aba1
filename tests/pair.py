"""Two real agents as real processes, in namespaces: the pair a failover test drives.

client, dir1 (priority 150) and dir2 (100) share a public bridge (eth0, the VIP's
network); the directors share a heartbeat bridge (eth1) and a serial cable (a socat
pty pair). Helpers read the kernel and the client: `ip addr` on the directors, the
client's ARP entry for the VIP; `hapair status` only for the state names.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from topology import Bridge, Netns

from hapair import control_client
from lab import shell
from lab.config import director_toml, serial_link, udp_link, vip, write_authkey
from lab.measure import ArpWatch
from lab.topology import SLOWDOWN  # inside the QEMU guest: waits stretch, assertions do not

__all__ = ["lab_factory"]

VIP = "10.77.0.100"
GROUP = "239.0.0.77"
INTERVAL, DEADTIME = 0.1, 0.6
# Generated input against a running pair: the same inputs every run (a failure replays),
# no example database, and no complaint that each example takes a round trip.
AGAINST_A_PAIR = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@dataclass
class Director:
    name: str
    ns: Netns
    priority: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    nofile: int | None = None  # the agent's soft and hard limit on open files, if set
    node: str | None = None  # `run --node`: the entry of a pair file to run as
    options: tuple[str, ...] = ()  # more of `hapair run`'s, e.g. ("--log-format", "json")
    program: str | None = None  # the `hapair` command (default: this checkout's, run by python)

    @property
    def socket(self) -> Path:
        return self.config.with_suffix(".sock")

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log, "ab") as log:
            node = [] if self.node is None else ["--node", self.node]
            self.proc = subprocess.Popen(
                self._command() + node + list(self.options),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if self.nofile is None else self._limit_files,
            )

    def _command(self) -> list[str]:
        if self.program is None:
            return shell.agent_command(self.ns.name, self.config)
        return ["ip", "netns", "exec", self.ns.name, self.program, "run", "-c", str(self.config)]

    def _limit_files(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill_with_guard(self) -> None:
        """SIGKILL the agent and its VIP guard (hapair/vipguard.py) together, as `systemctl
        kill -s KILL` kills a whole unit: nothing removes the VIPs until the agent starts
        again."""
        assert self.proc is not None
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        guards = [c for c in children if Path(f"/proc/{c}/comm").read_text() == "hapair-vipguard\n"]
        assert len(guards) == 1, children
        os.kill(int(guards[0]), signal.SIGKILL)
        self.proc.kill()

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped agent cannot act on SIGTERM
        return shell.stop(self.proc, timeout)

    def status(self) -> dict[str, object] | None:
        """The agent's status over its control socket (what `hapair status --json` prints;
        asked in-process, as starting a CLI per poll is slow in the guest)."""
        try:
            reply = control_client.request(self.socket, {"cmd": "status"}, timeout=5 * SLOWDOWN)
        except control_client.NoAgent:
            return None
        return reply.get("result") if reply.get("ok") else None

    def state(self) -> str | None:
        status = self.status()
        return None if status is None else str(status["state"])

    def holds_vip(self) -> bool:
        return f" {VIP}/" in self.ns.ip("-o", "addr", "show", "dev", "eth0").stdout

    def mac(self) -> str:
        return self.ns.ip("-o", "link", "show", "eth0").stdout.split("link/ether ")[1].split()[0]


@dataclass
class Lab:
    client: Netns
    dirs: list[Director]
    tmp: Path
    public: Bridge  # the VIP's network: real servers attach here
    heartbeat: Bridge  # the heartbeat and connection-sync network
    socat: subprocess.Popen[bytes] | None = None
    extra: list[Callable[[], None]] = field(default_factory=list)  # undone at teardown
    net: int = 0  # tests/pair_file_lab.py: the management network 10.79.`net`.0/24

    def cable(self) -> None:
        """(Re)connect the serial cable between the directors."""
        self.socat = subprocess.Popen(
            shell.serial_cable(self.tmp / "tty1", self.tmp / "tty2"), stderr=subprocess.DEVNULL
        )
        wait_for(lambda: (self.tmp / "tty1").exists() and (self.tmp / "tty2").exists(), 10)

    def cut_cable(self) -> None:
        if self.socat is not None and self.socat.poll() is None:
            self.socat.terminate()
            self.socat.wait(10)

    def client_mac_for_vip(self) -> str | None:
        out = self.client.ip("neigh", "show", VIP).stdout.split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else None

    def masters(self) -> list[str]:
        return [d.name for d in self.dirs if d.state() == "MASTER"]

    def holders(self) -> list[str]:
        return [d.name for d in self.dirs if d.holds_vip()]

    def watch(self) -> Any:
        """The client's view of who holds the VIP (scripts/lab's ArpWatch): who answers its
        ARP requests. `.holding(start, end)` (wall clock) gives the time with two answering
        directors (dual master) and with none (no master)."""
        watch = ArpWatch(self.client.name, "eth0", VIP, {d.mac(): d.name for d in self.dirs})
        self.extra.append(watch.close)
        watch.answered()
        return watch


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.05) -> float:
    """Seconds until `predicate()` held (lab.shell.wait_for: `timeout` x SLOWDOWN); fails
    the test (AssertionError) when it did not."""
    start = time.monotonic()
    try:
        shell.wait_for(repr(predicate), predicate, timeout, step)
    except shell.LabError as exc:
        raise AssertionError(str(exc)) from None
    return time.monotonic() - start


def talking_since(holder: Any, since: float) -> float:
    """Seconds until every held connection (lab.traffic.Holder) answered after `since`,
    each by the server it always had; fails at once on a broken or moved one."""

    def all_talking() -> bool:
        conns = holder.report()
        broken = [c for c in conns if c["error"] or c["moved"]]
        assert not broken, f"{len(broken)} connections broken: {broken[:3]}"
        return all(c["last_ok"] > since for c in conns)

    return wait_for(all_talking, 20, step=0.5)


def write_config(
    path: Path,
    name: str,
    priority: int,
    key: Path,
    tty: Path,
    extra: str | Mapping[str, Any] = "",
    **cluster: object,
) -> None:
    """A director's config; `extra`: more of it (services, sync, tracks), as TOML text
    (appended) or as top-level sections (lab.config.director_toml's `sections`)."""
    path.write_text(
        director_toml(
            name=name,
            priority=priority,
            socket=path.with_suffix(".sock"),
            state_dir=path.parent,
            cluster_id=77,
            auth_key_file=key,
            cluster={"interval": INTERVAL, "deadtime": DEADTIME, "initdead": 2.0, "preempt": True}
            | cluster,
            links=[udp_link("eth1", GROUP, 6694), serial_link(tty)],
            vips=[vip(f"{VIP}/24", "eth0")],
            sections=extra if isinstance(extra, Mapping) else None,
            extra=extra if isinstance(extra, str) else "",
        )
    )


@pytest.fixture
def lab_factory(
    tmp_path: Path,
    netns_factory: Callable[[str], Netns],
    bridge_factory: Callable[..., Bridge],
) -> Iterator[Callable[..., Lab]]:
    labs: list[Lab] = []

    def make(extra: str = "", **cluster: object) -> Lab:
        key = write_authkey(tmp_path / "authkey")
        public, heartbeat = bridge_factory("pub"), bridge_factory("hb")
        client = netns_factory("client")
        public.attach(client, "eth0", "10.77.0.10/24")
        dirs = []
        for i, priority in ((1, 150), (2, 100)):
            ns = netns_factory(f"dir{i}")
            public.attach(ns, "eth0", f"10.77.0.{i}/24")
            heartbeat.attach(ns, "eth1", f"10.78.0.{i}/24")
            config = tmp_path / f"dir{i}.toml"
            write_config(config, f"dir{i}", priority, key, tmp_path / f"tty{i}", extra, **cluster)
            dirs.append(Director(f"dir{i}", ns, priority, config, tmp_path / f"dir{i}.log"))
        lab = Lab(client, dirs, tmp_path, public, heartbeat)
        labs.append(lab)
        lab.cable()
        return lab

    yield make
    for lab in labs:
        codes = [d.stop() for d in lab.dirs]
        lab.cut_cable()
        for undo in lab.extra:
            undo()
        for d in lab.dirs:
            if d.log.exists():
                sys.stdout.write(f"--- {d.name} log ---\n{d.log.read_text()[-3000:]}\n")
        # A clean stop exits 0 (a killed one is None or negative).
        assert all(code in (0, None, -9) for code in codes), codes


def started(lab: Lab) -> Lab:
    for d in lab.dirs:
        d.start()
    wait_for(lambda: lab.masters() == ["dir1"] and lab.dirs[1].state() == "BACKUP", 30)
    assert lab.holders() == ["dir1"]
    lab.client.run("ping", "-c", "1", "-W", "2", VIP)  # now the client has an ARP entry for it
    assert lab.client_mac_for_vip() == lab.dirs[0].mac()
    return lab
