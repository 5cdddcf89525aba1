"""The failover lab: a director pair with real servers, in network namespaces.

    scripts/lab up [--mode dr|nat|tun]   build it and leave it running (needs IPVS)
    scripts/lab status                   `hapair status` of both directors
    scripts/lab down                     remove everything (idempotent)
    scripts/lab demo [--mode ...]        up, a measured failover and failback, down
    scripts/lab topology [--mode ...]    the topology below as JSON (the Vagrantfile reads it)
    scripts/lab provision HOST [--mode ...]  make THIS machine lab host HOST (a Vagrant VM)

The topology is described once, in TOPOLOGY below: a client, two directors (lvs1
priority 150, lvs2 priority 100), three real servers (HTTP on 80, SMTP on 25, a line
echo on 7) and an "ops" host receiving the alerts (a real SMTP server and a pager
endpoint); a public bridge, a heartbeat/sync bridge, a private bridge (NAT only), a
serial cable between the directors (a socat pty pair), and a management veth from the
root namespace to each director for its web monitor. The real servers, the long-lived
connections and the alert sinks are the test suite's own (tests/traffic.py,
tests/alert_sinks.py, tests/topology.py).

Every namespace is named `lab-<host>`; everything the lab starts runs inside one of
them except socat, whose pid is kept in the lab directory. `down` kills only those
processes and deletes only those names.

`provision` sets up one machine of the same topology, where the lab's networks already
reach it with the topology's addresses (Vagrant's private networks): it finds each
network's interface by its address and runs the very steps the namespace lab runs for
that host (a director's config, a real server's VIP and ARP settings or NAT route and its
services, the ops host's alert sinks), installed as systemd units.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))  # topology, traffic, alert_sinks: shared with the tests

IN_GUEST = os.environ.get("HAPAIR_IN_GUEST") == "1"
# Inside the QEMU guest (software emulation) everything runs ~10x slower.
SLOWDOWN = float(os.environ.get("HAPAIR_SLOWDOWN", "10" if IN_GUEST else "1"))
LAB_DIR = Path(os.environ.get("HAPAIR_LAB_DIR", "/run/hapair-lab"))
PYTHON = sys.executable

# --- the topology: the one description of the lab (also `scripts/lab topology`) -----------

PREFIX = "lab-"
MODES = ("dr", "nat", "tun")
VIP = "10.60.0.100"
NAT_GATEWAY = "10.62.0.254"  # NAT: the real servers' default route, a second VIP
CLUSTER_ID = 60
GROUP = "239.0.0.60"
HB_PORT = 6694
SMTP_SINK_PORT, PAGER_PORT = 2525, 8080
MONITOR_PORT = 8443
MONITOR_USER = "admin"

PREFIXLEN = 24  # of every host address below

TOPOLOGY: dict[str, Any] = {
    "networks": {
        "public": {"cidr": "10.60.0.0/24", "note": "client, directors' eth0 (the VIP), ops"},
        "heartbeat": {"cidr": "10.61.0.0/24", "note": "directors' eth1: heartbeats, sync"},
        "private": {"cidr": "10.62.0.0/24", "note": "NAT only: real servers, directors' eth2"},
        "management": {
            "cidr": "198.18.0.0/16",
            "note": "a /24 from the lab's host (.1: the root namespace, the Vagrant host) to"
            " each director (.2, mgmt0): its web monitor",
            "from_host": True,
        },
    },
    "vip": VIP,
    "nat_gateway": NAT_GATEWAY,
    "hosts": {
        "client": {"role": "client", "public": "10.60.0.10"},
        "lvs1": {
            "role": "director",
            "priority": 150,
            "public": "10.60.0.1",
            "heartbeat": "10.61.0.1",
            "private": "10.62.0.1",
            "management": "198.18.1.2",
        },
        "lvs2": {
            "role": "director",
            "priority": 100,
            "public": "10.60.0.2",
            "heartbeat": "10.61.0.2",
            "private": "10.62.0.2",
            "management": "198.18.2.2",
        },
        # A real server is on the public network under dr and tun, the private one under nat.
        "rs1": {"role": "real", "public": "10.60.0.21", "private": "10.62.0.21"},
        "rs2": {"role": "real", "public": "10.60.0.22", "private": "10.62.0.22"},
        "rs3": {"role": "real", "public": "10.60.0.23", "private": "10.62.0.23"},
        "ops": {"role": "ops", "public": "10.60.0.50"},
    },
    # name, port, scheduler, probe type
    "services": [("web", 80, "wlc", "http"), ("mail", 25, "rr", "smtp"), ("echo", 7, "rr", "tcp")],
    # The namespace lab's interface names; a provisioned machine finds its own by address.
    "interfaces": {"public": "eth0", "heartbeat": "eth1", "private": "eth2", "management": "mgmt0"},
}
HOSTS: dict[str, dict[str, Any]] = TOPOLOGY["hosts"]
DIRECTORS = [n for n, h in HOSTS.items() if h["role"] == "director"]
REALS = [n for n, h in HOSTS.items() if h["role"] == "real"]
BRIDGES = {"public": "pub", "heartbeat": "hb", "private": "prv"}  # network -> namespace hint


def ns_name(host: str) -> str:
    return PREFIX + host


def all_namespaces() -> list[str]:
    return [ns_name(h) for h in HOSTS] + [ns_name(b) for b in BRIDGES.values()]


def mgmt_link(director: str) -> str:
    return PREFIX + director  # the root-namespace end of the management veth


def mgmt_root_address(director: str) -> str:
    return HOSTS[director]["management"].rsplit(".", 1)[0] + ".1"


def real_address(mode: str, host: str) -> str:
    return str(HOSTS[host]["private" if mode == "nat" else "public"])


def host_networks(host: str, mode: str) -> dict[str, str]:
    """The networks `host` is on in `mode`, {network: its address}: a real server only on the
    private network under nat, only on the public one otherwise; a director on the private
    one under nat only; every host on the others it has an address for."""
    h = HOSTS[host]
    if h["role"] == "real":
        network = "private" if mode == "nat" else "public"
        return {network: str(h[network])}
    nets = [n for n in TOPOLOGY["networks"] if n in h and (n != "private" or mode == "nat")]
    return {n: str(h[n]) for n in nets}


def topology_json(mode: str) -> dict[str, Any]:
    """TOPOLOGY, plus the mode and every host's attachments in it, {host: {network:
    address/prefix}}: what the Vagrantfile gives each VM."""
    attach = {
        host: {n: f"{a}/{PREFIXLEN}" for n, a in host_networks(host, mode).items()}
        for host in HOSTS
    }
    return TOPOLOGY | {"mode": mode, "attach": attach}


def timing() -> dict[str, float]:
    """Heartbeat timing: as a deployment would set it, looser in the emulated guest."""
    if IN_GUEST:
        return {"interval": 0.5, "deadtime": 3.0, "initdead": 6.0, "warmup": 60.0}
    return {"interval": 0.2, "deadtime": 1.0, "initdead": 3.0, "warmup": 10.0}


@dataclass(frozen=True)
class DirectorFiles:
    """The files a director's config names: in the namespace lab's directory, or where an
    installed director keeps them (/etc/hapair, /var/lib/hapair, /run/hapair, under a root
    prefix for tests)."""

    config: Path
    socket: Path
    state_dir: Path
    authkey: Path
    tls_cert: Path
    tls_key: Path
    users: Path
    password: Path  # the monitor login's password, for the operator to read

    @classmethod
    def lab(cls, name: str, lab: Path) -> DirectorFiles:
        """The namespace lab's: all in its directory, one monitor login for both."""
        return cls(
            config=lab / f"{name}.toml",
            socket=lab / f"{name}.sock",
            state_dir=lab / name,
            authkey=lab / "authkey",
            tls_cert=lab / "monitor.crt",
            tls_key=lab / "monitor.key",
            users=lab / "users",
            password=lab / "monitor-password",
        )

    @classmethod
    def installed(cls, name: str, root: Path) -> DirectorFiles:
        """A machine's (`provision`): the contract's default places, under `root`."""
        etc = root / "etc" / "hapair"
        return cls(
            config=etc / "hapair.toml",
            socket=root / "run" / "hapair" / f"{name}.sock",
            state_dir=root / "var" / "lib" / "hapair",
            authkey=etc / "authkey",
            tls_cert=etc / "monitor.crt",
            tls_key=etc / "monitor.key",
            users=etc / "users",
            password=etc / "monitor-password",
        )


def director_config(
    name: str, mode: str, files: DirectorFiles, interfaces: dict[str, str], serial: str | None
) -> str:
    """Director `name`'s config; `interfaces`: {network: its interface there}; `serial`: the
    device of the serial heartbeat cable, or None for UDP heartbeats alone."""
    host, t = HOSTS[name], timing()
    probe_interval, probe_timeout = (5, 4) if IN_GUEST else (2, 1)
    services = ""
    for svc, port, scheduler, probe in TOPOLOGY["services"]:
        services += f"""
[[services]]
name = "{svc}"
protocol = "tcp"
address = "{VIP}"
port = {port}
scheduler = "{scheduler}"
forward = "{mode}"
probe = {{ type = "{probe}", interval = "{probe_interval}s", timeout = "{probe_timeout}s" }}
"""
        for rs in REALS:
            services += f'\n[[services.real_servers]]\naddress = "{real_address(mode, rs)}"\n'
    public, heartbeat = interfaces["public"], interfaces["heartbeat"]
    gateway = ""
    if mode == "nat":
        gateway = f"""
[[vips]]
address = "{NAT_GATEWAY}/{PREFIXLEN}"
interface = "{interfaces["private"]}"
garp_repeat = 3
garp_interval = "50ms"
"""
    cable = ""
    if serial is not None:
        cable = f"""
[[cluster.links]]
type = "serial"
device = "{serial}"
baud = 115200
"""
    sink = HOSTS["ops"]["public"]
    return f"""# written by scripts/lab for the {mode} lab
[node]
name = "{name}"
priority = {host["priority"]}
control_socket = "{files.socket}"
state_dir = "{files.state_dir}"

[cluster]
id = {CLUSTER_ID}
auth_key_file = "{files.authkey}"
interval = "{t["interval"]}s"
deadtime = "{t["deadtime"]}s"
initdead = "{t["initdead"]}s"
preempt = true

[[cluster.links]]
type = "udp"
interface = "{heartbeat}"
group = "{GROUP}"
port = {HB_PORT}
{cable}
[[vips]]
address = "{VIP}/{PREFIXLEN}"
interface = "{public}"
garp_repeat = 3
garp_interval = "50ms"
{gateway}
[sync]
interface = "{heartbeat}"
sync_id = {CLUSTER_ID}
warmup = "{t["warmup"]}s"

[sysctl]
ip_forward = {"true" if mode == "nat" else "false"}
sync_threshold = [3, 10]

[alerts]
min_interval = "0s"
[alerts.email]
smtp = "{sink}:{SMTP_SINK_PORT}"
from = "hapair@{name}.lab"
to = ["oncall@example.org"]
[alerts.pager]
url = "http://{sink}:{PAGER_PORT}/alert"

[monitor]
listen = "{host["management"]}:{MONITOR_PORT}"
tls_cert = "{files.tls_cert}"
tls_key = "{files.tls_key}"
users_file = "{files.users}"
{services}"""


# --- small tools ---------------------------------------------------------------------------


class LabError(Exception):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * SLOWDOWN)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)!r} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def run_in(where: str | None, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`cmd` on this machine (`where` None) or in network namespace `where`."""
    return (
        sh(*cmd, check=check)
        if where is None
        else sh("ip", "netns", "exec", where, *cmd, check=check)
    )


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
    """What `hapair status --json` prints (the same control-socket request, in-process)."""
    from hapair import control

    try:
        reply = control.request(lab / f"{director}.sock", {"cmd": "status"}, timeout=5 * SLOWDOWN)
    except (control.NoAgent, OSError):
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


# --- roles run inside the namespaces -------------------------------------------------------


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block in network namespace `name` (this thread only): sockets made there
    stay there, so one process can serve in several namespaces."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            libc.setns(home.fileno(), CLONE_NEWNET)


async def serve_real(host: str) -> list[Any]:
    """Real server `host`'s services, listening on every address here: tests/traffic.py's
    HTTP (80) and line echo (7), and an SMTP server on 25 (aiosmtpd, its greeting names
    the server). Returns them, to be kept."""
    from aiosmtpd.handlers import Sink
    from aiosmtpd.smtp import SMTP
    from traffic import listen

    loop = asyncio.get_running_loop()
    keep: list[Any] = await listen(host)
    keep.append(await loop.create_server(lambda: SMTP(Sink(), hostname=host), "0.0.0.0", 25))
    return keep


async def serve_ops(alerts: Path) -> list[Any]:
    """The ops host's alert sinks (tests/alert_sinks.py's SMTP and pager) on its public
    address; every alert received is appended to `alerts` as a JSON line."""
    from alert_sinks import PagerSink, SmtpSink

    def record(item: dict[str, Any]) -> None:
        with open(alerts, "a") as f:
            f.write(json.dumps(item | {"received": time.time()}) + "\n")

    sink = HOSTS["ops"]["public"]
    sinks = [
        SmtpSink(sink, SMTP_SINK_PORT, on_alert=record),
        PagerSink(sink, PAGER_PORT, on_alert=record),
    ]
    for server in sinks:
        await server.start()
    return sinks


async def serve_all(alerts: Path) -> None:
    """Every real server and the alert sinks, in one process (each Python process costs
    seconds in the emulated guest), each listening in its own namespace."""
    keep: list[Any] = []
    for rs in REALS:
        with in_netns(ns_name(rs)):
            keep += await serve_real(rs)
    with in_netns(ns_name("ops")):
        keep += await serve_ops(alerts)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_host(host: str, alerts: Path) -> None:
    """One provisioned machine's services (a real server's, or the ops host's sinks): the
    process its systemd unit runs."""
    keep = await (serve_ops(alerts) if HOSTS[host]["role"] == "ops" else serve_real(host))
    print(f"ready: {len(keep)} servers", flush=True)
    await asyncio.Event().wait()


def real_server_network(host: str, mode: str, where: str | None) -> None:
    """What makes `host` a real server in `mode`, on this machine (`where` None) or in
    namespace `where`. nat: the default route via NAT_GATEWAY (replies go back through the
    MASTER). dr: the VIP on lo, tun: on tunl0 (IPIP arrives there, from the client's
    address: no reverse-path filter); never answered for in ARP. Idempotent."""
    if mode == "nat":
        ip_batch([f"route replace default via {NAT_GATEWAY}"], where)
        return
    dev = "lo" if mode == "dr" else "tunl0"
    if mode == "tun":
        sh("modprobe", "-q", "ipip", check=False)
        if run_in(where, "ip", "link", "show", "tunl0", check=False).returncode != 0:
            raise LabError(f"{host}: no tunl0 for the tun mode: this kernel has no ipip module")
    ip_batch([f"link set {dev} up", f"addr replace {VIP}/32 dev {dev}"], where)
    settings = ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"]
    if mode == "tun":
        settings += [f"net.ipv4.conf.{c}.rp_filter=0" for c in ("all", "tunl0")]
    run_in(where, "sysctl", "-qw", *settings)


async def poll_http(host: str, port: int, period: float, timeout: float) -> None:
    """A client sending a GET on a new connection every `period` s (not waiting for the
    previous one); prints `1 <done> <server>` per answer, `0 <done> <error>` per failure,
    wall-clock times. Ends on EOF or "quit" on stdin."""
    out: list[str] = []

    async def one() -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.write(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
            reply = await asyncio.wait_for(reader.read(), timeout)
            writer.close()
            head, _, body = reply.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace") or "empty")
            who = " ".join(body.decode(errors="replace").split()) or "?"  # one line
            out.append(f"1 {time.time():.4f} {who}\n")
        except (OSError, ConnectionError, TimeoutError) as exc:
            reason = type(exc).__name__
            out.append(f"0 {time.time():.4f} {reason}\n")

    async def flush() -> None:
        while True:
            await asyncio.sleep(0.05)
            if out:
                sys.stdout.write("".join(out))
                sys.stdout.flush()
                out.clear()

    async def send() -> None:
        tasks: set[asyncio.Task[None]] = set()
        nxt = time.monotonic()
        while True:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            nxt = max(nxt, time.monotonic() - period)

    loop = asyncio.get_running_loop()
    workers = [asyncio.create_task(flush()), asyncio.create_task(send())]
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() not in ("quit", ""):
        pass
    for w in workers:
        w.cancel()


# --- the lab -------------------------------------------------------------------------------


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
        key = self.dir / "authkey"
        key.write_bytes(secrets.token_bytes(32))
        key.chmod(0o600)
        self.spawn(
            "socat",
            None,
            "socat",
            f"pty,raw,echo=0,link={self.dir / 'tty-lvs1'}",
            f"pty,raw,echo=0,link={self.dir / 'tty-lvs2'}",
        )
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
        self.spawn("servers", "ops", PYTHON, str(Path(__file__).resolve()), "_serve", alerts)
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

        return wait_for("lvs1 MASTER and lvs2 BACKUP, hearing each other", steady, 60, 0.3)

    # keeping track, for `down` from another process

    def save(self) -> None:
        state = {"mode": self.mode, "socat": None}
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


# --- measuring -----------------------------------------------------------------------------


def watch_arp(iface: str, vip: str, period: float) -> None:
    """Ask who has `vip` on `iface` every `period` s, as a client does; prints `? <t>` per
    request and `! <t> <mac>` per answer (wall clock). Ends on EOF on stdin."""
    import fcntl
    import select
    import socket
    import struct

    eth_p_arp = 0x0806
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_arp))
    sock.bind((iface, eth_p_arp))
    own_mac = sock.getsockname()[4]
    siocgifaddr = 0x8915
    req = struct.pack("256s", iface.encode())
    own_ip = fcntl.ioctl(sock.fileno(), siocgifaddr, req)[20:24]
    target = socket.inet_aton(vip)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + own_mac + own_ip + bytes(6) + target
    request = b"\xff" * 6 + own_mac + struct.pack("!H", eth_p_arp) + arp
    out = sys.stdout
    nxt = time.monotonic()
    while True:
        sock.send(request)
        out.write(f"? {time.time():.4f}\n")
        nxt += period
        while (wait := nxt - time.monotonic()) > 0:
            ready, _, _ = select.select([sock, sys.stdin], [], [], wait)
            if sys.stdin in ready and not sys.stdin.readline():
                return
            if sock in ready:
                frame = sock.recv(128)
                # An answer to us about the VIP: op 2, sender IP = VIP, target IP = ours.
                if (frame[20:22], frame[28:32], frame[38:42]) == (b"\x00\x02", target, own_ip):
                    out.write(f"! {time.time():.4f} {frame[22:28].hex(':')}\n")
        out.flush()
        nxt = max(nxt, time.monotonic() - period)


@dataclass
class Holding:
    """Who answered a client's ARP requests for the VIP over a span of time."""

    dual: float  # s during which two or more MACs answered (two masters, as a client sees)
    none: float  # s nobody answered while the client asked (no master), less two periods
    holders: list[list[str]]  # the successive sets of answering MACs (names if known)
    requests: int


class Helper:
    """One of this script's helper commands (`_poll`, `_arpwatch`) run in a namespace,
    each line of its output handed to `_line()` under `lock` in a reader thread; EOF on
    its stdin ends it (close())."""

    def __init__(self, netns: str, *args: str, realtime: bool = False) -> None:
        self.lock = threading.Lock()
        priority = ["chrt", "-f", "20"] if realtime else []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *priority, PYTHON, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.lock:
                self._line(line)

    def _line(self, line: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(10 * SLOWDOWN)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ArpWatch(Helper):
    """A client's view of who holds the VIP: `watch_arp` in the client's namespace, at
    realtime priority (a CPU hog must not make it miss answers). `holding(start, end)`
    sums up a span; every answering director counts, whatever its agent believes."""

    def __init__(self, netns: str, iface: str, vip: str, names: dict[str, str]) -> None:
        self.period = 0.05 * min(SLOWDOWN, 4.0)
        self.names = names  # MAC -> name
        self.asked: list[float] = []
        self.answers: list[tuple[float, str]] = []
        super().__init__(netns, "_arpwatch", iface, vip, str(self.period), realtime=True)

    def _line(self, line: str) -> None:
        kind, t, *mac = line.split()
        if kind == "?":
            self.asked.append(float(t))
        else:
            self.answers.append((float(t), self.names.get(mac[0], mac[0])))

    def answered(self, timeout: float = 10) -> None:
        """Back once somebody has answered (the watch sees); LabError after `timeout`."""

        def answer() -> bool:
            if self.proc.poll() is not None:
                raise LabError(f"the ARP watch exited {self.proc.returncode}")
            with self.lock:
                return bool(self.answers)

        wait_for("an answer to the client's ARP request for the VIP", answer, timeout, 0.02)

    def holding(self, start: float, end: float) -> Holding:
        """Sums from `start` to `end` (wall clock); waits until the watch has asked past
        `end`, so that answers to the last requests are in."""
        deadline = time.monotonic() + 10 * SLOWDOWN
        while time.monotonic() < deadline:
            with self.lock:
                if self.asked and self.asked[-1] >= end + 2 * self.period:
                    break
            if self.proc.poll() is not None:
                raise LabError(f"the ARP watch exited {self.proc.returncode}")
            time.sleep(self.period)
        with self.lock:
            return holding(self.asked, self.answers, start, end, self.period)


def holding(
    asked: list[float], answers: list[tuple[float, str]], start: float, end: float, period: float
) -> Holding:
    """Who answered the requests `asked` (times) from `start` to `end`: two or more in a
    request's period is two masters; a gap between answers longer than two periods, in
    which the client asked at least twice in vain, is no master. A gap in which the watch
    itself did not ask (a busy machine stalled it) says nothing about the directors."""
    asked = [t for t in asked if start <= t < end]
    answers = [(t, who) for t, who in answers if start <= t < end + period]
    dual, holders = 0.0, []
    for t0, t1 in itertools.pairwise([*asked, end]):
        who = sorted({w for t, w in answers if t0 <= t < t1})
        if len(who) > 1:
            dual += t1 - t0
        if who and (not holders or holders[-1] != who):
            holders.append(who)
    none = 0.0
    times = [start, *(t for t, _ in answers if t < end), end]
    for a, b in itertools.pairwise(times):
        # The last request before an answer is the one it answers.
        in_vain = sum(1 for t in asked if a < t < b) - (b < end)
        if in_vain >= 2:
            none += max(0.0, b - a - 2 * period)
    return Holding(dual, none, holders, len(asked))


class Poller(Helper):
    """tests the VIP with a fresh HTTP request every `period` s, from the client."""

    def __init__(self, period: float) -> None:
        self.ok: list[tuple[float, str]] = []
        self.failed: list[tuple[float, str]] = []
        timeout = 2.0 * SLOWDOWN
        super().__init__(ns_name("client"), "_poll", VIP, "80", str(period), str(timeout))

    def _line(self, line: str) -> None:
        ok, t, what = line.split(maxsplit=2)
        (self.ok if ok == "1" else self.failed).append((float(t), what.strip()))

    def answered_since(self, since: float, by: str | None = None) -> int:
        with self.lock:
            return sum(1 for t, s in self.ok if t > since and (by is None or s == by))

    def outage(self, start: float, end: float) -> tuple[float, float, float]:
        """(longest gap in s between successive answers from `start` - 1 s to `end`,
        where it began, where it ended)."""
        with self.lock:
            times = sorted(t for t, _ in self.ok if start - 1.0 <= t <= end)
        if len(times) < 2:
            return float("inf"), start, end
        gap, a, b = max((b - a, a, b) for a, b in itertools.pairwise(times))
        return gap, a, b

    def failures(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for t, _ in self.failed if start <= t <= end)


def held_connections() -> set[str]:
    """The client's established connections to VIP:7 (its local addr:port, from `ss`)."""
    out = sh(
        *("ip", "netns", "exec", ns_name("client")),
        *("ss", "-Htn", "state", "established", "dst", VIP, "dport", "=", ":7"),
    ).stdout
    return {f[2] for f in (row.split() for row in out.splitlines()) if len(f) >= 4}


def ipvs_established(text: str) -> set[str]:
    """Client addr:port of the ESTABLISHED entries for VIP:7 in `ipvsadm -Lnc`."""
    found = set()
    for row in text.splitlines():
        f = row.split()
        if len(f) >= 6 and f[2] == "ESTABLISHED" and f[4] == f"{VIP}:7":
            found.add(f[3])
    return found


def learned(d: str) -> int:
    """How many of the client's established connections to VIP:7 `d`'s kernel holds as
    ESTABLISHED (on a BACKUP only the sync daemon can have put them there); entries
    left from connections that are gone do not count."""
    out = sh("ip", "netns", "exec", ns_name(d), "ipvsadm", "-Lnc").stdout
    return len(held_connections() & ipvs_established(out))


@dataclass
class Survival:
    survived: int  # answered after `since`, by the server it always had, no error
    total: int
    last: float  # s from `since` until the last survivor answered
    broken: dict[str, int]  # reason -> connections


def connections_after(holder: Any, since: float, timeout: float) -> Survival:
    """How the long-lived connections fared after `since`; waits until every one answered
    or broke, at most `timeout` (x SLOWDOWN)."""
    deadline = time.monotonic() + timeout * SLOWDOWN
    while True:
        conns = holder.report()
        alive = [c for c in conns if not c["error"] and not c["moved"]]
        survived = [c for c in alive if c["last_ok"] > since]
        if len(survived) == len(alive) or time.monotonic() > deadline:
            broken: dict[str, int] = {}
            for c in conns:
                if c not in survived:
                    why = c["error"] or ("moved to another server" if c["moved"] else "silent")
                    broken[why] = broken.get(why, 0) + 1
            last = max((c["last_ok"] for c in survived), default=since)
            return Survival(len(survived), len(conns), last - since, broken)
        time.sleep(0.5)


def log_events(path: Path, pattern: str, since: float) -> list[tuple[float, str]]:
    """(wall time, message) of the agent log lines after `since` matching `pattern`."""
    events = []
    text = path.read_text(errors="replace") if path.exists() else ""
    for line in text.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ (.*)", line)
        if m and re.search(pattern, m[3]):
            t = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
            if t >= since:
                events.append((t, m[3]))
    return events


def alerts_received(lab: Path) -> list[dict[str, Any]]:
    path = lab / "alerts.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def monitor_check(lab: Lab, d: str) -> str:
    """Ask `d`'s monitor for /api/status over HTTPS with the lab's login; a line to print."""
    url = f"https://{HOSTS[d]['management']}:{MONITOR_PORT}/api/status"
    context = ssl.create_default_context(cafile=str(lab.dir / "monitor.crt"))
    context.check_hostname = False  # the lab certificate names "lab", not the address
    token = base64.b64encode(f"{MONITOR_USER}:{lab.password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5 * SLOWDOWN, context=context) as r:
            body = json.loads(r.read())
        return f"{url} answers: {body['node']} {body['state']}"
    except Exception as exc:
        return f"{url} did NOT answer ({exc}); see {lab.dir / (d + '.log')}"


def smtp_through_vip() -> str:
    """One email through VIP:25 from the client; which real server took it."""
    script = (
        "import smtplib\n"
        f"s = smtplib.SMTP({VIP!r}, 25, timeout=30)\n"
        "name = s.ehlo()[1].split()[0].decode()\n"
        "s.sendmail('demo@client.lab', ['user@example.org'], 'Subject: hi\\r\\n\\r\\nhello')\n"
        "s.quit()\n"
        "print(name)\n"
    )
    out = sh("ip", "netns", "exec", ns_name("client"), PYTHON, "-c", script, check=False)
    if out.returncode != 0:
        return f"FAILED: {(out.stderr.strip().splitlines() or ['?'])[-1]}"
    return f"accepted by {out.stdout.strip()}"


# --- one machine of the lab (a Vagrant VM): `provision` -----------------------------------

SYSTEMD = Path("/run/systemd/system")  # there when systemd runs this machine
LAB_SCRIPT = str(Path(__file__).resolve())
DIRECTOR_UNIT = "hapair.service"
SERVICE_UNITS = {"real": "hapair-lab-real.service", "ops": "hapair-lab-ops.service"}


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """`path` holds `data` with `mode`, never readable by others in between."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)  # left by a crash, perhaps with another mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.chmod(mode)  # whatever the umask
    tmp.replace(path)


def install_file(path: Path, data: str | bytes, mode: int) -> bool:
    """Write `data` to `path` with `mode` unless it holds exactly that; True if it wrote."""
    raw = data.encode() if isinstance(data, str) else data
    with contextlib.suppress(OSError):
        if path.read_bytes() == raw and path.stat().st_mode & 0o7777 == mode:
            return False
    write_private(path, raw, mode)
    return True


def monitor_login(files: DirectorFiles, cn: str) -> tuple[str, bool]:
    """The monitor's certificate and login (MONITOR_USER, a random password kept in
    `files.password`) by `hapair gen-cert` and `hapair passwd`, their code run in this
    process (a process costs seconds in the guest). Kept when all are there already:
    returns (the password, whether it made them)."""
    if all(f.exists() for f in (files.tls_cert, files.tls_key, files.users, files.password)):
        return files.password.read_text().strip(), False
    from hapair.cli import main as hapair

    password = secrets.token_urlsafe(12)
    write_private(files.password, (password + "\n").encode())
    stdin = sys.stdin
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = hapair(["gen-cert", str(files.tls_cert), str(files.tls_key), "--cn", cn])
            sys.stdin = io.StringIO(password + "\n")
            rc = rc or hapair(["passwd", "-f", str(files.users), MONITOR_USER])
    finally:
        sys.stdin = stdin
    if rc != 0:
        raise LabError("hapair gen-cert / hapair passwd failed")
    return password, True


def interfaces_by_address(host: str, wanted: dict[str, str]) -> dict[str, str]:
    """{network: the interface here holding `host`'s address on it}: a VM's interface
    names are its own (Vagrant's private networks are eth1, eth2, ... or enp0s8, ...)."""
    links = json.loads(sh("ip", "-j", "-4", "addr", "show").stdout or "[]")
    holder = {
        a["local"]: str(link["ifname"])
        for link in links
        for a in link.get("addr_info", [])
        if "local" in a
    }
    missing = [
        f"{address} ({network})" for network, address in wanted.items() if address not in holder
    ]
    if missing:
        raise LabError(
            f"{host}: no interface here holds {', '.join(missing)}: is this machine on those"
            " networks of the topology, with those addresses (scripts/lab topology)?"
        )
    return {network: holder[address] for network, address in wanted.items()}


def systemd_unit(description: str, start: list[str], pre: list[str], *extra: str) -> str:
    lines = [
        "# written by scripts/lab.py provision",
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        *(f"ExecStartPre={cmd}" for cmd in pre),
        f"ExecStart={shlex.join(start)}",
        *extra,
        "Restart=on-failure",
        "RestartSec=2s",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def provision_director(
    name: str,
    mode: str,
    root: Path,
    interfaces: dict[str, str],
    serial: str | None,
    authkey: Path | None,
) -> list[str]:
    """Director `name`'s key, monitor login, config (checked by `hapair check` before it
    replaces the old one) and systemd unit, under `root`; what it changed."""
    files = DirectorFiles.installed(name, root)
    changed = []
    if authkey is not None:
        if install_file(files.authkey, authkey.read_bytes(), 0o600):
            changed.append(f"{files.authkey}: the pair's key, from {authkey}")
    elif not files.authkey.exists():
        raise LabError(
            f"{name}: no {files.authkey}: give the pair's shared key with --authkey FILE"
            " (the same file to both directors)"
        )
    if monitor_login(files, name)[1]:
        changed.append(
            f"{files.tls_cert}, {files.users}: the monitor's certificate and login"
            f" ({MONITOR_USER}, the password in {files.password})"
        )
    text = director_config(name, mode, files, interfaces, serial)
    candidate = files.config.with_name(f".{files.config.name}.check")
    write_private(candidate, text.encode(), 0o644)
    check = sh(PYTHON, "-m", "hapair", "check", "-c", str(candidate), check=False)
    candidate.unlink()
    if check.returncode != 0:
        raise LabError(f"{name}: hapair check refused the config:\n{check.stdout}{check.stderr}")
    if install_file(files.config, text, 0o644):
        changed.append(f"{files.config} (hapair check: ok)")
    unit = systemd_unit(
        f"hapair: the HA agent of LVS director {name}",
        [PYTHON, "-m", "hapair", "run", "-c", str(files.config)],
        ["-/sbin/modprobe -q ip_vs"],
        "Environment=HAPAIR_LOG=INFO",
        "ExecReload=/bin/kill -HUP $MAINPID",
    )
    path = root / "etc" / "systemd" / "system" / DIRECTOR_UNIT
    if install_file(path, unit, 0o644):
        changed.append(str(path))
    command, link = Path(PYTHON).parent / "hapair", root / "usr" / "local" / "bin" / "hapair"
    if command.exists() and not link.exists() and not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(command)
        changed.append(f"{link} -> {command}")
    return changed


def provision_services(host: str, mode: str, root: Path) -> list[str]:
    """A real server's services (and, before them at every start, its network settings),
    or the ops host's alert sinks, as a systemd unit under `root`; what it changed."""
    role = HOSTS[host]["role"]
    serve = [PYTHON, LAB_SCRIPT, "_serve-host", host]
    if role == "real":
        what = f"real server {host}: HTTP on 80, SMTP on 25, a line echo on 7"
        pre = [shlex.join([PYTHON, LAB_SCRIPT, "provision", host, "--mode", mode, "--net-only"])]
    else:
        alerts = root / "var" / "lib" / "hapair-lab" / "alerts.jsonl"
        alerts.parent.mkdir(parents=True, exist_ok=True)
        what = f"the alert sinks (SMTP {SMTP_SINK_PORT}, pager {PAGER_PORT}) into {alerts}"
        serve += ["--alerts", str(alerts)]
        pre = []
    unit = systemd_unit(f"hapair lab: {what}", serve, pre)
    path = root / "etc" / "systemd" / "system" / SERVICE_UNITS[role]
    return [str(path)] if install_file(path, unit, 0o644) else []


def systemd_up(unit: str, restart: bool) -> None:
    sh("systemctl", "daemon-reload")
    sh("systemctl", "enable", "--quiet", unit)
    sh("systemctl", "restart" if restart else "start", unit)
    state = sh("systemctl", "is-active", unit, check=False).stdout.strip()
    say(f"  {unit}: {'(re)started' if restart else 'started'}, {state}")


def provision(
    host: str,
    mode: str,
    root: Path = Path("/"),
    *,
    start: bool = True,
    serial: str | None = None,
    authkey: Path | None = None,
    net_only: bool = False,
) -> list[str]:
    """Make this machine lab host `host` in `mode`: its interfaces found by address, then
    the namespace lab's own steps for its role (director_config, real_server_network,
    serve_real, serve_ops), installed as systemd units and started (not with `start`
    False). Idempotent; returns what it changed (files written)."""
    role = HOSTS[host]["role"]
    if start and root != Path("/"):
        raise LabError("--root needs --no-start (systemd reads /etc/systemd/system)")
    if start and not net_only and role != "client" and not SYSTEMD.exists():
        raise LabError("systemd does not run this machine: provision with --no-start")
    if serial is not None and role != "director":
        raise LabError(f"{host}: --serial is for the directors")
    interfaces = interfaces_by_address(host, host_networks(host, mode))
    found = ", ".join(f"{n} {HOSTS[host][n]} on {i}" for n, i in interfaces.items())
    say(f"provision {host} ({role}, {mode}): {found}")
    if role == "real":
        real_server_network(host, mode, None)
        say(
            f"  network: default route via {NAT_GATEWAY}"
            if mode == "nat"
            else f"  network: VIP {VIP}/32 on {'lo' if mode == 'dr' else 'tunl0'},"
            " arp_ignore=1, arp_announce=2"
        )
    if net_only:
        return []
    changed: list[str] = []
    unit = None
    if role == "director":
        changed = provision_director(host, mode, root, interfaces, serial, authkey)
        unit = DIRECTOR_UNIT
    elif role in SERVICE_UNITS:
        changed = provision_services(host, mode, root)
        unit = SERVICE_UNITS[role]
    else:
        say(f"  nothing to install: try curl http://{VIP}/ once the directors are up")
    for line in changed:
        say(f"  wrote {line}")
    if unit is not None and not changed:
        say("  nothing changed")
    if unit is not None and start:
        systemd_up(unit, restart=bool(changed))
    return changed


# --- the commands --------------------------------------------------------------------------


@dataclass
class DemoResult:
    mode: str
    deadtime: float
    connections: int
    failover_ok: bool = False
    master_after: float | None = None  # s from the kill to lvs2's MASTER (its status)
    outage: float | None = None  # s, the longest gap between answers around the failover
    rate: float = 0.0  # answers per second before the kill
    failed_requests: int = 0
    dual: float | None = None  # s with both directors answering the client's ARP for the VIP
    no_master: float | None = None  # s with neither (from the kill on)
    survived: int = 0
    broken: dict[str, int] = field(default_factory=dict)
    failback_ok: bool = False
    learned: int | None = None
    failback_outage: float | None = None
    failback_survived: int = 0
    failback_dual: float | None = None
    failback_no_master: float | None = None
    alerts: list[str] = field(default_factory=list)  # alert email subjects after the kill
    monitor: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    error: str = ""


def banner(mode: str) -> None:
    t = timing()
    say(f"hapair failover lab: mode {mode}, VIP {VIP}, real servers {', '.join(REALS)}")
    say(
        f"heartbeats every {t['interval'] * 1000:.0f} ms on UDP multicast and a serial line;"
        f" deadtime {t['deadtime']:g} s" + (" (looser in the emulated guest)" if IN_GUEST else "")
    )


def cmd_up(mode: str, lab_dir: Path) -> int:
    banner(mode)
    lab = Lab(mode, lab_dir)
    try:
        lab.build()
        lab.step("namespaces, bridges, serial cable, configs, monitor login: built")
        lab.start()
        lab.step("lvs1 MASTER, lvs2 BACKUP")
    except BaseException:
        if lab.built:
            say("lab: start-up failed; tearing down")
            lab.down()
        raise
    print_up(lab)
    return 0


def print_up(lab: Lab) -> None:
    say()
    say(f"The lab is up (files and logs in {lab.dir}):")
    for d in DIRECTORS:
        say(f"  {d}: config {lab.dir / (d + '.toml')}, log {lab.dir / (d + '.log')}")
        say(f"    monitor {monitor_check(lab, d)}")
    say(f"  monitor login: {MONITOR_USER} / {lab.password}")
    say(f"  (self-signed certificate {lab.dir / 'monitor.crt'}: curl --cacert it, or -k)")
    say(f"  alerts received by ops: {lab.dir / 'alerts.jsonl'}")
    say("Try:")
    say(f"  ip netns exec {ns_name('client')} curl -s http://{VIP}/")
    say(f"  .venv/bin/hapair status -c {lab.dir / 'lvs1.toml'}")
    say(f"  ip netns exec {ns_name('lvs1')} ipvsadm -Ln")
    say("  scripts/lab status; scripts/lab down")


def cmd_status(lab_dir: Path) -> int:
    if not lab_dir.exists():
        say("lab: no lab is up")
        return 3
    rc = 0
    for d in DIRECTORS:
        say(f"=== {d}")
        out = subprocess.run(
            [PYTHON, "-m", "hapair", "status", "-c", str(lab_dir / f"{d}.toml")], check=False
        )
        rc = rc or out.returncode
    return rc


def cmd_demo(mode: str, lab_dir: Path, connections: int = 200) -> DemoResult:
    """The whole story in one run; tears everything down at the end, whatever happens."""
    banner(mode)
    t = timing()
    result = DemoResult(mode, t["deadtime"], connections)
    lab = Lab(mode, lab_dir)
    holder: Any = None
    poller: Poller | None = None
    arp: ArpWatch | None = None
    try:
        lab.build()
        lab.step("built: namespaces lab-*, public and heartbeat bridges, socat serial cable")
        lab.start()
        lab.step("lvs1 MASTER, lvs2 BACKUP; both IPVS tables loaded, sync daemons on eth1")
        for d in DIRECTORS:
            result.monitor.append(monitor_check(lab, d))
            lab.step(f"monitor: {result.monitor[-1]}")
        lab.step(f"SMTP through the VIP: {smtp_through_vip()}")
        # In the emulated guest a Python server manages a fraction of the host's rate.
        period, line_period = (0.05, 2.0) if IN_GUEST else (0.01, 0.5)
        poller = Poller(period)
        arp = ArpWatch(ns_name("client"), "eth0", VIP, lab.macs())
        arp.answered(20)
        from traffic import Holder

        holder = Holder(ns_name("client"), VIP, 7, connections, 60 * SLOWDOWN, line_period)
        lab.step(f"client: a new HTTP request to {VIP}:80 every {period * 1000:.0f} ms, and")
        lab.step(
            f"  {connections} connections to {VIP}:7 each sending a line every {line_period:g} s"
        )
        n = wait_for(
            "lvs2's kernel learning the connections",
            lambda: (c := learned("lvs2")) >= connections and c,
            20,
            0.5,
        )
        lab.step(f"lvs2's kernel holds {n} of them (ipvsadm -Lnc), copied by the sync daemon")
        time.sleep(2.0)
        before = len(alerts_received(lab.dir))

        # The failure: lvs1's agent killed, then its whole machine (links, kernel state).
        killed, dark = lab.kill("lvs1")
        lab.step(
            f"KILLED lvs1: agent SIGKILLed, every link down {dark * 1000:.0f} ms later,"
            " its namespace deleted"
        )

        def lvs2_master() -> float | None:
            s = status_of("lvs2", lab.dir)
            return float(s["since"]) if s and s["state"] == "MASTER" else None

        since = wait_for("lvs2 MASTER", lvs2_master, 30)
        result.master_after = since - killed
        wait_for("answers through lvs2", lambda: poller.answered_since(since), 20)
        conns = connections_after(holder, since, 30)  # answers from then on came via lvs2
        result.survived, result.broken = conns.survived, conns.broken
        time.sleep(1.0)
        end = time.time()
        gap, gap_from, gap_to = poller.outage(killed, end)
        result.outage = gap
        result.rate = poller.answered_since(killed - 5) - poller.answered_since(killed)
        result.rate /= 5
        result.failed_requests = poller.failures(killed - 1, end)
        seen = arp.holding(killed, end)
        result.dual, result.no_master = seen.dual, seen.none
        result.failover_ok = True
        took_over = "state_change: lvs2 is now MASTER"
        with contextlib.suppress(LabError):
            wait_for("lvs2's alert email", lambda: mail_about(lab.dir, took_over, before), 10)
        emails = [a for a in alerts_received(lab.dir)[before:] if a["channel"] == "email"]

        say()
        say("Failover (t = 0: lvs1 killed)")
        rows = [
            (0.0, "lvs1 dies: its heartbeats stop on both links (UDP multicast, serial)"),
            (result.master_after, f"lvs2 is MASTER (its `since`; deadtime {t['deadtime']:g} s)"),
            (gap_from - killed, "the client's last answer before the outage"),
            (gap_to - killed, "the client's first answer after it"),
        ]
        for at, line in log_events(lab.dir / "lvs2.log", r"^(\w+ -> \w+|peer_lost):", killed):
            rows.append((at - killed, f"lvs2 log: {line}"))
        for a in emails:
            if re.search(r"\] lvs2 (state_change|peer_lost):", a["subject"]):
                rows.append((a["received"] - killed, f"email: {a['subject'][:72]}"))
        for at, what in sorted(rows, key=lambda r: r[0]):
            say(f"  {at * 1000:+8.0f} ms  {what}")
        say(
            f"  client-visible outage: {gap * 1000:.0f} ms, the longest gap between answers"
            f" (before the kill: {result.rate:.0f} answers/s; {result.failed_requests} failed)"
        )
        say(
            f"  the client's ARP requests for the VIP: both directors answered for"
            f" {seen.dual * 1000:.0f} ms, neither for {seen.none * 1000:.0f} ms"
            f" (asked every {arp.period * 1000:.0f} ms; answered by {seen.holders})"
        )
        say(f"  long-lived connections: {conns.survived} of {conns.total} survived (answered")
        say(
            "    through lvs2 by the same real server; the last one"
            f" {conns.last:.1f} s after lvs2 became MASTER)"
        )
        for why, count in conns.broken.items():
            say(f"    {count} broken: {why}")
        result.alerts = [a["subject"] for a in emails]
        events: dict[str, int] = {}
        for a in emails:
            event = a["subject"].split(":")[0].split()[-1]
            events[event] = events.get(event, 0) + 1
        kinds = ", ".join(f"{n} {e}" for e, n in events.items())
        say(f"  alert emails received by ops since the kill: {len(emails)} ({kinds or 'none'})")
        result.monitor.append(monitor_check(lab, "lvs2"))
        say(f"  monitor: {result.monitor[-1]}")

        # The failback: lvs1 returns as a fresh machine and preempts once it has learned.
        say()
        lab.step("lvs1 comes back: a fresh namespace, the same config; preempt = true")
        lab.wire(["lvs1"])
        arp.names.update(lab.macs())  # lvs1's new interface
        returned = time.time()
        lab.start_agent("lvs1")
        wait_for(
            "lvs1 BACKUP",
            lambda: lab.agent_alive("lvs1") and state_of("lvs1", lab.dir) == "BACKUP",
            60,
            0.3,
        )
        lab.step("lvs1 BACKUP: learning the connections from lvs2 before it preempts")

        def lvs1_master() -> float | None:
            lab.agent_alive("lvs1")
            s = status_of("lvs1", lab.dir)
            return float(s["since"]) if s and s["state"] == "MASTER" else None

        back = wait_for("lvs1 MASTER again", lvs1_master, t["warmup"] + 30, 0.3)
        found = re.findall(r"preemption allowed: (\d+)", (lab.dir / "lvs1.log").read_text())
        result.learned = int(found[-1]) if found else None
        count = "?" if result.learned is None else str(result.learned)
        lab.step(
            f"lvs1 MASTER again, once its kernel had learned {count} connections from lvs2"
            " (the held ones and recent requests'); lvs2 BACKUP"
        )
        wait_for("answers through lvs1", lambda: poller.answered_since(back), 20)
        fb = connections_after(holder, back, 30)
        time.sleep(1.0)
        result.failback_outage = poller.outage(back, time.time())[0]
        result.failback_survived = fb.survived
        seen = arp.holding(returned, time.time())
        result.failback_dual, result.failback_no_master = seen.dual, seen.none
        result.failback_ok = True
        say(
            f"  failback: outage {result.failback_outage * 1000:.0f} ms;"
            f" connections: {fb.survived} of {fb.total} survived; ARP: both directors"
            f" answered for {seen.dual * 1000:.0f} ms, neither for {seen.none * 1000:.0f} ms"
        )
        for why, count in fb.broken.items():
            say(f"    {count} broken: {why}")
    except (LabError, AssertionError, subprocess.TimeoutExpired) as exc:
        result.error = str(exc)
        say(f"lab: FAILED: {exc}")
        for d in DIRECTORS:
            say(f"  --- {d} log (last lines)\n{log_tail(lab.dir / f'{d}.log')}")
    finally:
        say()
        if holder is not None:
            holder.close()
        if poller is not None:
            poller.close()
        if arp is not None:
            arp.close()
        keep = os.environ.get("HAPAIR_LAB_KEEP_LOGS")
        if keep and lab.dir.exists():
            Path(keep).mkdir(parents=True, exist_ok=True)
            for log in lab.dir.glob("*.log"):
                shutil.copy(log, keep)
        if lab.built:  # not a lab that was up already (build() refused to touch it)
            lab.step("tearing down")
            lab.down()
            result.leftovers = leftovers(lab.dir)
            left = result.leftovers
            lab.step("taken down: " + (f"LEFT OVER: {left}" if left else "nothing left"))
    return result


def mail_about(lab: Path, text: str, skip: int) -> bool:
    return any(
        a["channel"] == "email" and text in a["subject"] for a in alerts_received(lab)[skip:]
    )


def rerun_in_guest(argv: list[str]) -> None:
    say("lab: this machine's kernel has no IPVS; running the lab in a QEMU guest with")
    say("     Debian's kernel (scripts/run-in-kernel, software emulation: ~10x slower).")
    say("     Timings below come from the guest, with a looser deadtime.")
    env = os.environ | {"HAPAIR_RIG_TIMEOUT": os.environ.get("HAPAIR_RIG_TIMEOUT", "900")}
    script = str(ROOT / "scripts" / "run-in-kernel")
    os.execve(script, [script, PYTHON, str(Path(__file__).resolve()), *argv], env)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/lab", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("up", "demo"):
        c = sub.add_parser(name)
        c.add_argument("--mode", choices=MODES, default="dr")
        if name == "demo":
            c.add_argument("--connections", type=int, default=200)
    sub.add_parser("down")
    sub.add_parser("status")
    t = sub.add_parser("topology")
    t.add_argument("--mode", choices=MODES, default="dr", help="whose attachments to list")
    pv = sub.add_parser(
        "provision",
        description="Make THIS machine lab host HOST of the topology (a VM whose interfaces"
        " already hold the topology's addresses): a director's config and unit, a real"
        " server's network settings and services, the ops host's alert sinks. Idempotent.",
    )
    pv.add_argument("host", choices=list(HOSTS))
    pv.add_argument("--mode", choices=MODES, default="dr")
    pv.add_argument(
        "--root", type=Path, default=Path("/"), help="write every file under this prefix"
    )
    pv.add_argument("--no-start", action="store_true", help="install, start nothing")
    pv.add_argument(
        "--serial",
        metavar="DEVICE",
        help="a director's serial cable to its peer, a second heartbeat link (default: none)",
    )
    pv.add_argument(
        "--authkey", type=Path, metavar="FILE", help="the pair's key (the same for both)"
    )
    pv.add_argument(
        "--net-only", action="store_true", help="a real server's network settings alone"
    )
    s = sub.add_parser("_serve")
    s.add_argument("alerts", type=Path)
    h = sub.add_parser("_serve-host")
    h.add_argument("host", choices=[n for n in HOSTS if HOSTS[n]["role"] in SERVICE_UNITS])
    h.add_argument("--alerts", type=Path, default=Path("/var/lib/hapair-lab/alerts.jsonl"))
    a = sub.add_parser("_arpwatch")
    a.add_argument("iface")
    a.add_argument("vip")
    a.add_argument("period", type=float)
    q = sub.add_parser("_poll")
    q.add_argument("host")
    q.add_argument("port", type=int)
    q.add_argument("period", type=float)
    q.add_argument("timeout", type=float)
    args = p.parse_args(argv)

    if args.cmd == "_serve":
        asyncio.run(serve_all(args.alerts))
        return 0
    if args.cmd == "_serve-host":
        asyncio.run(serve_host(args.host, args.alerts))
        return 0
    if args.cmd == "_arpwatch":
        watch_arp(args.iface, args.vip, args.period)
        return 0
    if args.cmd == "_poll":
        asyncio.run(poll_http(args.host, args.port, args.period, args.timeout))
        return 0
    if args.cmd == "topology":
        say(json.dumps(topology_json(args.mode), indent=2))
        return 0
    if os.geteuid() != 0:
        say("lab: run as root (it makes network namespaces, or configures this machine)")
        return 1
    if args.cmd == "provision":
        try:
            provision(
                args.host,
                args.mode,
                args.root.absolute(),
                start=not args.no_start,
                serial=args.serial,
                authkey=args.authkey,
                net_only=args.net_only,
            )
        except LabError as exc:
            say(f"lab: provision {args.host}: FAILED: {exc}")
            return 1
        return 0
    if args.cmd == "down":
        done = down(LAB_DIR)
        say("lab: " + ("; ".join(done) if done else "nothing to take down"))
        return 0
    if args.cmd == "status":
        return cmd_status(LAB_DIR)
    if not has_ipvs():
        if IN_GUEST:
            say("lab: no IPVS even in the guest kernel (modprobe ip_vs failed)")
            return 1
        if args.cmd == "demo":
            rerun_in_guest(argv)
        say("lab: 'up' needs a kernel with IPVS, and this machine's has none")
        say("     (/proc/net/ip_vs is missing and 'modprobe ip_vs' failed).")
        say("     'scripts/lab demo' runs the whole lab, a failover and a failback in a QEMU")
        say("     guest with Debian's kernel; for a lab that stays up, use a machine or VM")
        say("     whose kernel has IPVS.")
        return 1

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        if args.cmd == "up":
            return cmd_up(args.mode, LAB_DIR)
        result = cmd_demo(args.mode, LAB_DIR, args.connections)
        if "HAPAIR_LAB_RESULT" in os.environ:
            Path(os.environ["HAPAIR_LAB_RESULT"]).write_text(json.dumps(asdict(result)))
        return 0 if result.failover_ok and result.failback_ok and not result.leftovers else 1
    except KeyboardInterrupt:
        say("lab: interrupted; everything was taken down")
        return 130
    except LabError as exc:
        say(f"lab: FAILED: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
