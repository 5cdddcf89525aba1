"""The lab itself: builds the namespaces and bridges, starts and kills the directors, takes
it all down. The demo's first act (lab/host_act.py) is a Lab too, with namespaces and a
directory of its own."""

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

from lab.config import DirectorFiles, director_config, pair_config, write_authkey
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
    PREFIX,
    PREFIXLEN,
    PYTHON,
    REALS,
    SLOWDOWN,
    TOPOLOGY,
    all_namespaces,
    host_networks,
    mgmt_link,
    mgmt_root_address,
)

MARK = "HAPAIR_LAB_RUN"  # in the environment of every process a Lab with a `mark` starts


@dataclass
class Lab:
    """The lab's hosts in namespaces <prefix><host>, its files in `dir`. Every process it
    starts runs in a session of its own (Ctrl-C reaches the lab's process alone, which takes
    it down, and `up` leaves them running), its output in <key>.log."""

    mode: str
    dir: Path
    prefix: str = PREFIX  # of its namespaces' names
    mark: str = ""  # MARK=mark in the environment of every process it starts, if set
    management: bool = True  # a management veth from the root namespace to each director
    password: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # the last by key
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)  # all of them
    where: dict[str, str | None] = field(default_factory=dict)  # key -> host (None: here)
    bridges: list[str] = field(default_factory=list)  # the networks in this mode
    generation: int = 0  # of wire(): bridge port names stay unique across rebuilds
    built: bool = False  # by this Lab: only then may down() take it away
    t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.bridges = self.bridges or [b for b in BRIDGES if b != "private" or self.mode == "nat"]

    def ns(self, host: str) -> str:
        return self.prefix + host

    def step(self, text: str) -> None:
        say(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    # building

    def spawn(
        self, key: str, host: str | None, *cmd: str, pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        """A background process in `host`'s namespace (None: here) logging to <key>.log
        (`pipe`: its stdout a pipe, its stderr in the log)."""
        argv = list(cmd) if host is None else ["ip", "netns", "exec", self.ns(host), *cmd]
        env = os.environ | {"HAPAIR_LOG": "INFO"} | ({MARK: self.mark} if self.mark else {})
        with open(self.dir / f"{key}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else log,
                stderr=log if pipe else subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.procs[key] = proc
        self.started.append(proc)
        self.where[key] = host
        return proc

    def wait_ready(self, key: str, timeout: float) -> None:
        log = self.dir / f"{key}.log"

        def ready() -> bool:
            return self.alive(key) and "ready" in log.read_text(errors="replace")

        wait_for(f"{key} ready", ready, timeout)

    def build(self) -> None:
        if existing_namespaces() & set(all_namespaces()):
            raise LabError("a lab is already up: run 'scripts/lab down' first")
        self.built = True
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self.lay_out(["client", "ops", *REALS, *DIRECTORS])
        interfaces = dict(TOPOLOGY["interfaces"])
        files = {d: DirectorFiles.lab(d, self.dir) for d in DIRECTORS}
        configs = {d: director_config(d, self.mode, f, interfaces, "tty") for d, f in files.items()}
        text = pair_config(configs, f"written by scripts/lab for the {self.mode} lab")
        for f in files.values():
            f.config.write_text(text)  # the same file on both directors
        # One certificate and login for both monitors.
        self.password, _ = monitor_login(DirectorFiles.lab(DIRECTORS[0], self.dir), "hapair-lab")

    def lay_out(self, hosts: list[str]) -> None:
        """Into the lab's directory: the pair's key and the serial cable (socat); `hosts` on
        fresh bridges."""
        write_authkey(self.dir / "authkey")
        ends = [self.dir / d / "tty" for d in DIRECTORS]  # beside each director's config
        for end in ends:
            end.parent.mkdir(exist_ok=True)
        self.spawn("socat", None, *serial_cable(*ends))
        self.save()
        self.wire(hosts, bridges=True)
        wait_for("the serial cable (socat)", lambda: all(end.exists() for end in ends), 10)

    def wire(self, hosts: list[str], bridges: bool = False) -> None:
        """Create `hosts` (fresh namespaces) on their networks, with `ip -batch`: one `ip`
        per namespace, not one per change. `bridges`: make the bridges first."""
        self.generation += 1
        gen = self.generation
        root = [f"netns add {self.ns(BRIDGES[b])}" for b in (self.bridges if bridges else [])]
        root += [f"netns add {self.ns(h)}" for h in hosts]
        for d in (h for h in hosts if h in DIRECTORS and self.management):
            link, there = mgmt_link(d), self.ns(d)
            root += [
                f"link add {link} type veth peer name {TOPOLOGY['interfaces']['management']}"
                f" netns {there}",
                f"addr add {mgmt_root_address(d)}/{PREFIXLEN} dev {link}",
                f"link set {link} up",
            ]
        ip_batch(root)
        for d in (h for h in hosts if h in DIRECTORS and self.management):
            # Forwarded between the directors' management links only (the input link's
            # flag decides): a config change travels from one monitor to the other.
            sh("sysctl", "-qw", f"net.ipv4.conf.{mgmt_link(d)}.forwarding=1")
        inside: dict[str, list[str]] = {h: ["link set lo up"] for h in hosts}
        for network in self.bridges:
            batch = ["link set lo up", "link add br0 type bridge", "link set br0 up"]
            batch = batch if bridges else []
            for h in hosts:
                if (ifname := self.interface(h, network)) is None:
                    continue
                port = f"{h}-{gen}"
                batch += [
                    f"link add {port} type veth peer name {ifname} netns {self.ns(h)}",
                    f"link set {port} master br0 up",
                ]
                inside[h] += [
                    f"addr add {HOSTS[h][network]}/{PREFIXLEN} dev {ifname}",
                    f"link set {ifname} up",
                ]
            ip_batch(batch, self.ns(BRIDGES[network]))
        mgmt = TOPOLOGY["interfaces"]["management"]
        for h in hosts:
            if h in DIRECTORS and self.management:
                inside[h] += [
                    f"addr add {HOSTS[h]['management']}/{PREFIXLEN} dev {mgmt}",
                    f"link set {mgmt} up",
                    *(
                        f"route add {HOSTS[peer]['management']}/32 via {mgmt_root_address(h)}"
                        for peer in DIRECTORS
                        if peer != h
                    ),
                ]
            ip_batch(inside[h], self.ns(h))
            if h in REALS:
                real_server_network(h, self.mode, self.ns(h))

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
            if self.ns(d) in existing_namespaces():
                out = sh("ip", "-n", self.ns(d), "-o", "link", "show", "eth0").stdout
                found[out.split("link/ether ")[1].split()[0]] = d
        return found

    def start_agent(self, d: str) -> None:
        config = str(DirectorFiles.lab(d, self.dir).config)
        self.spawn(d, d, PYTHON, "-m", "hapair", "run", "-c", config, "--node", d)

    def alive(self, key: str, what: str = "") -> bool:
        """True, unless process `key` has exited: LabError with the end of its log."""
        proc = self.procs.get(key)
        if proc is not None and proc.poll() is not None:
            tail = log_tail(self.dir / f"{key}.log")
            raise LabError(f"{what or key} exited {proc.returncode}:\n{tail}")
        return True

    def agent_alive(self, d: str) -> bool:
        return self.alive(d, f"the {d} agent")

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

    def kill(self, d: str) -> tuple[float, float, float]:
        """Director `d` dies at once: its agent and every other process started in its
        namespace SIGKILLed, then every link of the node down and the node deleted. Returns
        (wall and monotonic time of the kill, s until every link was down).

        The kernel goes on forwarding for the VIP as long as eth0 is up, so `ip -batch`
        runs in the node beforehand and reads its lines only after the kill (an `ip`
        started after it took up to ~1.5 s in the busy guest, while the dead node still
        served the client)."""
        links = [i for n in self.bridges if (i := self.interface(d, n)) is not None]
        links += [TOPOLOGY["interfaces"]["management"]] if self.management else []
        keys = [d] + [k for k, h in self.where.items() if h == d and k != d]
        procs = [self.procs[k] for k in keys]
        down = subprocess.Popen(
            ["ip", "-n", self.ns(d), "-o", "-batch", "-"],
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
            killed, t0 = time.time(), time.monotonic()
            for proc in procs:
                proc.kill()
            down.stdin.write("".join(f"link set {ifname} down\n" for ifname in links))
            down.stdin.close()
            if down.wait(60 * SLOWDOWN) != 0:
                raise LabError(f"ip -batch in {d}: {down.stderr.read().strip()}")
            dark = time.monotonic() - t0
        finally:
            if down.poll() is None:
                down.kill()
            down.wait()
            down.stdout.close()
            down.stderr.close()
        for proc in procs:
            proc.wait(10 * SLOWDOWN)
        sh("ip", "netns", "del", self.ns(d))
        if self.management:
            sh("ip", "link", "del", mgmt_link(d), check=False)
        return killed, t0, dark

    def pair_steady(self, master: str, backup: str) -> dict[str, Any] | None:
        """`master`'s status once it is MASTER and `backup` BACKUP hearing it on every link."""
        for d in (master, backup):
            self.agent_alive(d)
        sm, sb = status_of(master, self.dir), status_of(backup, self.dir)
        if not sm or not sb or (sm["state"], sb["state"]) != ("MASTER", "BACKUP"):
            return None
        if not sb["peer"]["alive"] or not all(lk["alive"] for lk in sb["peer"]["links"]):
            return None
        return sm

    def wait_steady(self, master: str = DIRECTORS[0], backup: str = DIRECTORS[1]) -> dict[str, Any]:
        s: dict[str, Any] = wait_for(
            f"{master} MASTER and {backup} BACKUP, hearing each other",
            lambda: self.pair_steady(master, backup),
            60,
            0.3,
        )
        return s

    # keeping track, for `down` from another process

    def save(self) -> None:
        state: dict[str, Any] = {"mode": self.mode, "socat": None}
        if "socat" in self.procs:
            state["socat"] = self.procs["socat"].pid
        (self.dir / "state.json").write_text(json.dumps(state))

    # tearing down

    def failed(self, what: str, exc: BaseException) -> str:
        """Say that `what` failed, with the end of each director's log; the error's text."""
        say(f"lab: {what}: {exc}")
        for d in DIRECTORS:
            say(f"  --- {d} log (last lines)\n{log_tail(self.dir / f'{d}.log')}")
        return str(exc)

    def keep_logs(self, prefix: str = "") -> None:
        """Copies of the logs in $HAPAIR_LAB_KEEP_LOGS, if set (their names after `prefix`)."""
        keep = os.environ.get("HAPAIR_LAB_KEEP_LOGS")
        if keep and self.dir.exists():
            Path(keep).mkdir(parents=True, exist_ok=True)
            for log in self.dir.glob("*.log"):
                shutil.copy(log, Path(keep) / f"{prefix}{log.name}")

    def down(self) -> list[str]:
        """Take down what this Lab built (not a lab that was up before it: build() refused);
        returns what is left of it (nothing, unless something refused to go)."""
        if not self.built:
            return []
        self.remove()
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        return self.leftovers()

    def remove(self) -> list[str]:
        return down(self.dir)

    def leftovers(self) -> list[str]:
        return leftovers(self.dir)


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
    if pids := end(pids, signal.SIGTERM):
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


def end(pids: set[int], sig: signal.Signals) -> set[int]:
    """`sig` to the processes `pids`, then SIGKILL to those still running 10 s (x SLOWDOWN)
    later; returns those."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + 10 * SLOWDOWN
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if running(p)}
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def running(pid: int) -> bool:
    """Process `pid` exists and is no zombie."""
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
