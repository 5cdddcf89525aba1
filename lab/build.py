"""The lab itself: builds the namespaces and bridges, starts and kills the directors, takes
it all down."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.config import DirectorFiles, director_config, write_authkey
from lab.provision import monitor_login
from lab.roles import real_server_network
from lab.shell import (
    LabError,
    existing_namespaces,
    ip_batch,
    log_tail,
    say,
    serial_cable,
    sh,
    status_of,
    wait_for,
)
from lab.topology import (
    BRIDGES,
    DIRECTORS,
    HOSTS,
    PREFIXLEN,
    PYTHON,
    REALS,
    SLOWDOWN,
    TOPOLOGY,
    all_namespaces,
    host_networks,
    mgmt_link,
    mgmt_root_address,
    ns_name,
)


@dataclass
class Lab:
    mode: str
    dir: Path
    password: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    bridges: list[str] = field(default_factory=list)  # the networks in this mode
    generation: int = 0  # of wire(): bridge port names stay unique across rebuilds
    built: bool = False  # by this Lab: only then may down() take it away
    t0: float = field(default_factory=time.monotonic)

    def step(self, text: str) -> None:
        say(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    # building

    def spawn(self, key: str, host: str | None, *cmd: str) -> subprocess.Popen[bytes]:
        """A background process (its own session: it outlives `up`) logging to <key>.log."""
        argv = list(cmd) if host is None else ["ip", "netns", "exec", ns_name(host), *cmd]
        with open(self.dir / f"{key}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=os.environ | {"HAPAIR_LOG": "INFO"},
            )
        self.procs[key] = proc
        return proc

    def wait_ready(self, key: str, timeout: float) -> None:
        proc, log = self.procs[key], self.dir / f"{key}.log"

        def ready() -> bool:
            if proc.poll() is not None:
                raise LabError(f"{key} exited {proc.returncode}:\n{log_tail(log)}")
            return "ready" in log.read_text(errors="replace")

        wait_for(f"{key} ready", ready, timeout)

    def build(self) -> None:
        if existing_namespaces() & set(all_namespaces()):
            raise LabError("a lab is already up: run 'scripts/lab down' first")
        self.built = True
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        write_authkey(self.dir / "authkey")
        self.spawn("socat", None, *serial_cable(self.dir / "tty-lvs1", self.dir / "tty-lvs2"))
        self.save()
        self.bridges = [b for b in BRIDGES if b != "private" or self.mode == "nat"]
        self.wire(["client", "ops", *REALS, *DIRECTORS], bridges=True)
        interfaces = dict(TOPOLOGY["interfaces"])
        for d in DIRECTORS:
            files = DirectorFiles.lab(d, self.dir)
            files.state_dir.mkdir(exist_ok=True)
            serial = str(self.dir / f"tty-{d}")
            files.config.write_text(director_config(d, self.mode, files, interfaces, serial))
        # One certificate and login for both monitors.
        self.password, _ = monitor_login(DirectorFiles.lab(DIRECTORS[0], self.dir), "hapair-lab")
        wait_for("the serial cable (socat)", lambda: (self.dir / "tty-lvs2").exists(), 10)

    def wire(self, hosts: list[str], bridges: bool = False) -> None:
        """Create `hosts` (fresh namespaces) on their networks, with `ip -batch`: one `ip`
        per namespace, not one per change. `bridges`: make the bridges first."""
        self.generation += 1
        gen = self.generation
        root = [f"netns add {ns_name(BRIDGES[b])}" for b in (self.bridges if bridges else [])]
        root += [f"netns add {ns_name(h)}" for h in hosts]
        for d in (h for h in hosts if h in DIRECTORS):
            link, there = mgmt_link(d), ns_name(d)
            root += [
                f"link add {link} type veth peer name {TOPOLOGY['interfaces']['management']}"
                f" netns {there}",
                f"addr add {mgmt_root_address(d)}/{PREFIXLEN} dev {link}",
                f"link set {link} up",
            ]
        ip_batch(root)
        inside: dict[str, list[str]] = {h: ["link set lo up"] for h in hosts}
        for network in self.bridges:
            batch = ["link set lo up", "link add br0 type bridge", "link set br0 up"]
            batch = batch if bridges else []
            for h in hosts:
                if (ifname := self.interface(h, network)) is None:
                    continue
                port = f"{h}-{gen}"
                batch += [
                    f"link add {port} type veth peer name {ifname} netns {ns_name(h)}",
                    f"link set {port} master br0 up",
                ]
                inside[h] += [
                    f"addr add {HOSTS[h][network]}/{PREFIXLEN} dev {ifname}",
                    f"link set {ifname} up",
                ]
            ip_batch(batch, ns_name(BRIDGES[network]))
        mgmt = TOPOLOGY["interfaces"]["management"]
        for h in hosts:
            if h in DIRECTORS:
                inside[h] += [
                    f"addr add {HOSTS[h]['management']}/{PREFIXLEN} dev {mgmt}",
                    f"link set {mgmt} up",
                ]
            ip_batch(inside[h], ns_name(h))
            if h in REALS:
                real_server_network(h, self.mode, ns_name(h))

    def interface(self, host: str, network: str) -> str | None:
        """`host`'s interface on `network`, or None if it is not on it in this mode."""
        if network not in self.bridges or network not in host_networks(host, self.mode):
            return None
        if HOSTS[host]["role"] == "real":
            return "eth0"  # its only network
        return str(TOPOLOGY["interfaces"][network])

    def macs(self) -> dict[str, str]:
        """MAC -> director, of the directors' interfaces on the VIP's network."""
        found = {}
        for d in DIRECTORS:
            if ns_name(d) in existing_namespaces():
                out = sh("ip", "-n", ns_name(d), "-o", "link", "show", "eth0").stdout
                found[out.split("link/ether ")[1].split()[0]] = d
        return found

    def start_agent(self, d: str) -> None:
        self.spawn(d, d, PYTHON, "-m", "hapair", "run", "-c", str(self.dir / f"{d}.toml"))

    def agent_alive(self, d: str) -> bool:
        proc = self.procs.get(d)
        if proc is not None and proc.poll() is not None:
            tail = log_tail(self.dir / f"{d}.log")
            raise LabError(f"the {d} agent exited {proc.returncode}:\n{tail}")
        return True

    def start(self) -> None:
        """Real servers, alert sinks, both agents; back once the pair is steady."""
        alerts = str(self.dir / "alerts.jsonl")
        self.spawn("servers", "ops", PYTHON, "-m", "lab", "_serve", alerts)
        for d in DIRECTORS:
            self.start_agent(d)
        self.save()
        self.wait_ready("servers", 60)
        self.step("real servers up (HTTP :80, SMTP :25, echo :7), alert sinks up on ops")
        self.wait_steady()

    def kill(self, d: str) -> tuple[float, float]:
        """Director `d` dies at once: its agent SIGKILLed, then every link of the node down
        and the node deleted. Returns (wall time of the kill, s until every link was down).

        The kernel goes on forwarding for the VIP as long as eth0 is up, so `ip -batch`
        runs in the node beforehand and reads its lines only after the kill (an `ip`
        started after it took up to ~1.5 s in the busy guest, while the dead node still
        served the client)."""
        links = ["eth0", "eth1", "mgmt0"] + (["eth2"] if self.mode == "nat" else [])
        proc = self.procs[d]
        down = subprocess.Popen(
            ["ip", "-n", ns_name(d), "-o", "-batch", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert down.stdin is not None and down.stdout is not None and down.stderr is not None
        try:
            down.stdin.write("link show lo\n")
            down.stdin.flush()
            if not down.stdout.readline():  # it runs, in the node's namespace
                raise LabError(f"ip -batch in {d}: {down.stderr.read().strip()}")
            killed = time.time()
            proc.kill()
            down.stdin.write("".join(f"link set {ifname} down\n" for ifname in links))
            down.stdin.close()
            if down.wait(60 * SLOWDOWN) != 0:
                raise LabError(f"ip -batch in {d}: {down.stderr.read().strip()}")
            dark = time.time() - killed
        finally:
            if down.poll() is None:
                down.kill()
            down.wait()
            down.stdout.close()
            down.stderr.close()
        proc.wait()
        sh("ip", "netns", "del", ns_name(d))
        sh("ip", "link", "del", mgmt_link(d), check=False)
        return killed, dark

    def wait_steady(self) -> dict[str, Any]:
        def steady() -> dict[str, Any] | None:
            for d in DIRECTORS:
                self.agent_alive(d)
            s1, s2 = (status_of(d, self.dir) for d in DIRECTORS)
            if not s1 or not s2 or (s1["state"], s2["state"]) != ("MASTER", "BACKUP"):
                return None
            if not s2["peer"]["alive"] or not all(lk["alive"] for lk in s2["peer"]["links"]):
                return None
            return s1

        s1: dict[str, Any] = wait_for(
            "lvs1 MASTER and lvs2 BACKUP, hearing each other", steady, 60, 0.3
        )
        return s1

    # keeping track, for `down` from another process

    def save(self) -> None:
        state: dict[str, Any] = {"mode": self.mode, "socat": None}
        if "socat" in self.procs:
            state["socat"] = self.procs["socat"].pid
        (self.dir / "state.json").write_text(json.dumps(state))

    # tearing down

    def down(self) -> None:
        """Take down what this Lab built (not a lab that was up before it: build() refused)."""
        if not self.built:
            return
        down(self.dir)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)


def down(lab: Path, quiet: bool = True) -> list[str]:
    """Kill every process in the lab's namespaces and the lab's socat, delete the namespaces
    and the management links, remove the lab directory. Idempotent; returns what it did."""
    done: list[str] = []
    present = [n for n in all_namespaces() if n in existing_namespaces()]
    pids: set[int] = set()
    for name in present:
        out = sh("ip", "netns", "pids", name, check=False).stdout
        pids |= {int(p) for p in out.split()}
    with contextlib.suppress(OSError, ValueError):
        socat = json.loads((lab / "state.json").read_text())["socat"]
        cmdline = Path(f"/proc/{socat}/cmdline").read_bytes()
        if cmdline.startswith(b"socat\0") and str(lab).encode() in cmdline:
            pids.add(int(socat))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10 * SLOWDOWN
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if _running(p)}
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        done.append(f"killed {len(pids)} process(es) that ignored SIGTERM")
    for name in present:
        sh("ip", "netns", "del", name, check=False)
    if present:
        done.append(f"deleted namespaces {' '.join(present)}")
    links = sh("ip", "-o", "link", "show", check=False).stdout
    for d in DIRECTORS:
        if f" {mgmt_link(d)}@" in links or f" {mgmt_link(d)}:" in links:
            sh("ip", "link", "del", mgmt_link(d), check=False)
            done.append(f"deleted link {mgmt_link(d)}")
    if lab.exists():
        shutil.rmtree(lab, ignore_errors=True)
        done.append(f"removed {lab}")
    return done


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def leftovers(lab: Path) -> list[str]:
    """What of a lab still exists (empty after a clean `down`)."""
    left = [n for n in all_namespaces() if n in existing_namespaces()]
    links = sh("ip", "-o", "link", "show", check=False).stdout
    left += [mgmt_link(d) for d in DIRECTORS if f" {mgmt_link(d)}@" in links]
    if lab.exists():
        left.append(str(lab))
    return left
