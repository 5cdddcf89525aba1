"""Probe benchmark: the CPU the real agent spends on TCP probes, against keepalived's checker.

Two parts, each in fresh network namespaces (deleted on exit, error, Ctrl-C and SIGTERM)
with lo up, so that the kernel's TCP counters of a namespace count one prober's connects
and nothing else:

  host   `hapair run` (the real agent, started with `ip netns exec`) probes --targets
         TCP targets (default 10,000: 100 loopback addresses 127.0.1.1... x 100 ports
         20000...) every --interval (1 s). Its CPU (utime + stime from /proc/PID/stat,
         the agent's and its checker process's) over a steady --window (30 s) after
         warm-up: percent of one core, and probes per CPU-second. Target: <= 50 % of one
         core. Meanwhile a peer of the bench's (`--heartbeats`, realtime) receives the
         agent's heartbeats (every 100 ms) and times them: how late each came, worst and
         99th percentile. Target: <= 10 ms (<= 50 ms in the guest). The host kernel has
         no IPVS: the agent says so once and probes on. Then the baseline, in a fresh
         namespace: the floor prober (`--floor`: the least a Python prober can do per
         probe, no verdicts, no status) on the same targets at the same rate; the ratio
         hapair / floor per probe.
         On loopback the listener's half of each handshake runs in the prober's context
         and is charged to it, so the floor shows what the kernel alone costs here.
  guest  in the QEMU guest (scripts/run-in-kernel, one boot; IPVS exists there), side by
         side in the same window: hapair and `keepalived --check` (TCP_CHECK,
         connect_timeout 1, delay_loop 1) on the same --guest-targets (1,000) targets, each
         prober in its own namespace with its own identical listeners. Prints the ratio
         of CPU per probe hapair / keepalived (keepalived's parent and checker processes
         summed; per probe, because when the guest cannot carry both at the rate due they
         make different numbers of probes). Target: <= 1.5. Then `strace -c` counts each
         side's system calls per connect for --syscall-window s (10; 0: not at all), and
         the baseline, same boot: the floor prober in hapair's place beside keepalived,
         over a window as long: floor / keepalived per probe is what a Python prober with
         no work of its own gets in the same conditions. Last, the shared part: 100
         services over the same 100 real servers, hapair (one probe per server) beside
         keepalived (one per service and server): probes/s, CPU, CPU per pair.

The targets: one listener process per namespace binds the ports on 0.0.0.0 (so every
127.0.1.x address answers), accepts and closes at once. Its CPU is measured and printed,
never counted as the prober's. Probes are counted twice: connects the prober made
(ActiveOpens of its namespace, /proc/PID/net/snmp) and connections the listener accepted;
a side that falls short of targets x window / interval is reported. hapair's own account
(`hapair status --json`: every real server's last probe ok) is checked at the end.

The probes of both run at normal scheduling priority: hapair's checker process (it sets
itself so) and keepalived's checker; hapair's agent keeps its default SCHED_FIFO for its
heartbeats, as a director runs it. CPU time is the figure, and a priority does not change
what a probe costs.

Exit status: 0 when the benchmark ran (also when a target is missed), 1 when the bench
itself broke, 2 on bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from hapair import control_client
from lab.benchkit import BenchError, Child, exit_status, in_guest
from lab.config import director_toml, service, write_authkey
from lab.shell import LabError, netns_add, stop

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
HAPAIR = str(REPO / ".venv" / "bin" / "hapair")
FIRST_ADDRESS = IPv4Address("127.0.1.1")
FIRST_PORT = 20000
SERVICE_ADDRESS = "10.255.0.1"  # the services' address: no VIP, nothing else uses it
HOST_TARGET_CPU = 50.0  # percent of one core
GUEST_TARGET_RATIO = 1.5
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEARTBEAT_INTERVAL = 0.1  # s: the agent's heartbeats, timed by a peer of the bench's
HEARTBEAT_PEER = ("127.0.0.2", 7694)
HOST_TARGET_LATE_MS = 10.0
GUEST_TARGET_LATE_MS = 50.0
SHARED_SERVICES = 100  # the shared part: this many services over the same 100 servers


# --- the targets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    addresses: list[str]
    ports: list[int]

    @classmethod
    def of(cls, targets: int) -> Layout:
        n_addr = min(100, targets)
        if targets % n_addr:
            raise ValueError(f"{targets} targets: use a multiple of 100 (or at most 100)")
        addresses = [str(FIRST_ADDRESS + i) for i in range(n_addr)]
        return cls(addresses, [FIRST_PORT + j for j in range(targets // n_addr)])

    @property
    def count(self) -> int:
        return len(self.addresses) * len(self.ports)


def listener_main(first_port: int, ports: int) -> int:
    """Inside the target namespace: listen on the ports, accept and close at once.
    Answers a JSON line with the accept count for every line on stdin; ends at EOF."""
    socks = []
    ep = select.epoll()
    for port in range(first_port, first_port + ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(4096)
        socks.append(s)
        ep.register(s.fileno(), select.EPOLLIN)
    by_fd = {s.fileno(): s._accept for s in socks}  # type: ignore[attr-defined]
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN)
    accepts = 0
    close = os.close
    print(json.dumps({"ready": True}), flush=True)
    while True:
        for fd, _ in ep.poll():
            if fd == stdin:
                line = os.read(stdin, 4096)
                if not line:
                    return 0
                print(json.dumps({"accepts": accepts}), flush=True)
                continue
            accept = by_fd[fd]
            while True:
                try:
                    conn, _addr = accept()
                except BlockingIOError:
                    break
                except ConnectionAbortedError:  # reset before the accept
                    continue
                close(conn)
                accepts += 1


def floor_main(targets: int, interval: float) -> int:
    """The baseline prober: the least a Python TCP prober can do per probe (non-blocking
    connect, one epoll set, reset-and-close once connected; no verdicts, no status),
    paced like the agent: every target once per interval, spread evenly and started in
    10 ms steps, at most 1,000 connects in flight (the agent's cap). Runs until
    SIGTERM. What it costs on this kernel is the floor under any prober's figure."""
    layout = Layout.of(targets)
    addrs = [(a, port) for port in layout.ports for a in layout.addresses]
    reset = struct.pack("ii", 1, 0)
    stream = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
    sol, linger, in_progress = socket.SOL_SOCKET, socket.SO_LINGER, errno.EINPROGRESS
    ep = select.epoll()
    flying: dict[int, socket.socket] = {}
    deadlines: collections.deque[tuple[float, int, socket.socket]] = collections.deque()
    rate = len(addrs) / interval
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    t0 = time.monotonic()
    started = 0
    while True:
        now = time.monotonic()
        # At most 1,000 in flight, as the agent's cap: the due ones wait, none is dropped.
        for _ in range(min(int((now - t0) * rate) - started, 1000 - len(flying))):
            sock = socket.socket(socket.AF_INET, stream)
            if sock.connect_ex(addrs[started % len(addrs)]) == in_progress:
                ep.register(sock.fileno(), select.EPOLLOUT)
                flying[sock.fileno()] = sock
                deadlines.append((now + 1.0, sock.fileno(), sock))
            else:
                sock.close()
            started += 1
        for fd, events in ep.poll(0.01):  # starts in 10 ms steps, as the agent's
            sock = flying.pop(fd)
            if events == select.EPOLLOUT:
                sock.setsockopt(sol, linger, reset)
            sock.close()
        while deadlines and deadlines[0][0] <= now:
            _, fd, sock = deadlines.popleft()
            if flying.get(fd) is sock:
                del flying[fd]
                sock.close()


def heartbeats_main(address: str, port: int, interval: float) -> int:
    """Inside the agent's namespace: the peer's end of its heartbeat link. Takes every
    datagram and keeps how late each came after the one before (gap - interval): what the
    peer's failure detector sees. "reset" starts over; any other line is answered with
    the count, the worst, the 99th percentile and the median, in ms. Ends at EOF."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # The agent binds 0.0.0.0 on this port with SO_REUSEADDR: so does this, on the peer's
    # own address, which the kernel prefers for datagrams to it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    ep = select.epoll()
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN)
    ep.register(sock.fileno(), select.EPOLLIN)
    late: list[float] = []
    last: float | None = None
    print(json.dumps({"ready": True}), flush=True)
    while True:
        for fd, _ in ep.poll():
            if fd != stdin:
                sock.recv(65536)
                now = time.monotonic()
                if last is not None:
                    late.append(max(0.0, now - last - interval) * 1000)
                last = now
                continue
            line = os.read(stdin, 4096)
            if not line:
                return 0
            if line.strip() == b"reset":
                late.clear()
                print(json.dumps({"reset": True}), flush=True)
                continue
            ranked = sorted(late)
            n = len(ranked)
            print(
                json.dumps(
                    {
                        "gaps": n,
                        "worst": ranked[-1] if n else None,
                        "p99": ranked[min(n - 1, int(n * 0.99))] if n else None,
                        "median": ranked[n // 2] if n else None,
                    }
                ),
                flush=True,
            )


class Heartbeats(Child):
    """The heartbeats of the agent in `netns`, as the peer would receive them."""

    def __init__(self, netns: str) -> None:
        # Realtime, above the agent: the peer's clock must not be what is late.
        cmd = ["ip", "netns", "exec", netns, "chrt", "-f", "50"]
        cmd += [PYTHON, str(Path(__file__).resolve())]
        cmd += ["--heartbeats", "--interval", str(HEARTBEAT_INTERVAL)]
        super().__init__(cmd, "the heartbeat receiver")

    def line(self, target_ms: float) -> tuple[str, dict[str, Any]]:
        got = self.ask("count")
        if not got["gaps"]:
            return "  heartbeats: none received in the window", got
        return (
            f"  heartbeats on the wire (every {HEARTBEAT_INTERVAL * 1000:.0f} ms, "
            f"{got['gaps']} gaps): late by at most {got['worst']:.1f} ms, 99th percentile "
            f"{got['p99']:.1f} ms, median {got['median']:.1f} ms (target <= {target_ms:g} ms)",
            got,
        )


class Listener(Child):
    def __init__(self, netns: str, layout: Layout) -> None:
        cmd = ["ip", "netns", "exec", netns, PYTHON, str(Path(__file__).resolve()), "--listener"]
        cmd += ["--first-port", str(layout.ports[0]), "--ports", str(len(layout.ports))]
        super().__init__(cmd, "a listener")

    def accepts(self) -> int:
        return int(self.ask("count")["accepts"])


# --- the probers --------------------------------------------------------------------------


def hapair_config(tmp: Path, layout: Layout, interval: float, shared: bool = False) -> Path:
    """The bench's director; `shared`: SHARED_SERVICES services, each over every target
    (one port), instead of one service per port."""
    key = write_authkey(tmp / "authkey")
    probe = {"type": "tcp", "interval": f"{interval:g}s", "timeout": "1s"}
    text = director_toml(
        name="probebench",
        priority=100,
        socket=tmp / "agent.sock",
        state_dir=tmp,
        cluster_id=77,
        auth_key_file=key,
        cluster={"interval": f"{HEARTBEAT_INTERVAL:g}s", "deadtime": "3s"},
        # the bench's Heartbeats listens and never answers: the agent stays a MASTER
        links=[
            {
                "type": "udp",
                "interface": "lo",
                "peer": HEARTBEAT_PEER[0],
                "port": HEARTBEAT_PEER[1],
            }
        ],
        services=[
            service(f"p{port}", SERVICE_ADDRESS, port, "dr", layout.addresses, probe=probe)
            for port in layout.ports
        ]
        if not shared
        else [
            service(f"s{n}", shared_vip(n), layout.ports[0], "dr", layout.addresses, probe=probe)
            for n in range(1, SHARED_SERVICES + 1)
        ],
        comment="written by bench/probes",
    )
    path = tmp / "hapair.toml"
    path.write_text(text)
    check = subprocess.run([HAPAIR, "check", "-c", str(path)], capture_output=True, text=True)
    if check.returncode != 0:
        raise BenchError(f"hapair check refused the bench's config: {check.stdout[:500]}")
    return path


def shared_vip(n: int) -> str:
    """The shared part's nth service address: DR keeps the port, so the services differ
    by address (10.255.0.n), each over the same real servers on the same port."""
    return f"10.255.0.{n}"


def keepalived_config(tmp: Path, layout: Layout, interval: float, shared: bool = False) -> Path:
    text = ["# written by bench/probes", "global_defs {", "    router_id hapair_probe_bench", "}"]
    services = (
        [(shared_vip(n), layout.ports[0]) for n in range(1, SHARED_SERVICES + 1)]
        if shared
        else [(SERVICE_ADDRESS, port) for port in layout.ports]
    )
    for vip, port in services:
        text += [
            f"virtual_server {vip} {port} {{",
            f"    delay_loop {interval:g}",
            "    lvs_sched wlc",
            "    lvs_method DR",
            "    protocol TCP",
        ]
        for address in layout.addresses:
            text += [
                f"    real_server {address} {port} {{",
                "        weight 1",
                "        TCP_CHECK {",
                "            connect_timeout 1",
                "        }",
                "    }",
            ]
        text.append("}")
    path = tmp / "keepalived.conf"
    path.write_text("\n".join(text) + "\n")
    return path


@dataclass
class Side:
    """One prober in its namespace, with its listener."""

    name: str
    netns: str
    proc: subprocess.Popen[bytes]
    listener: Listener
    log: Path
    samples: list[tuple[float, tuple[float, float], int, int, float]] = field(default_factory=list)

    def pids(self) -> list[int]:
        """The prober's process and its descendants (keepalived forks its checker)."""
        found = [self.proc.pid]
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
        for pid in found:
            found += children.get(pid, [])
        return found

    def cpu(self) -> tuple[float, float]:
        """(user + system, user) CPU seconds of the prober's processes."""
        total = user = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
                user += int(fields[11])
        return total / CLK_TCK, user / CLK_TCK

    def connects(self) -> int:
        """ActiveOpens of the prober's namespace: its connect() calls."""
        lines = Path(f"/proc/{self.proc.pid}/net/snmp").read_text().splitlines()
        tcp = [line.split()[1:] for line in lines if line.startswith("Tcp:")]
        return int(dict(zip(tcp[0], tcp[1], strict=True))["ActiveOpens"])

    def sample(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited ({self.proc.returncode}); log: {self.log}")
        self.samples.append(
            (
                time.monotonic(),
                self.cpu(),
                self.connects(),
                self.listener.accepts(),
                listener_cpu(self.listener),
            )
        )


def listener_cpu(listener: Listener) -> float:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{listener.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


@dataclass
class Figures:
    name: str
    targets: int
    seconds: float
    cpu_s: float
    connects: int
    accepts: int
    listener_cpu_s: float
    user_s: float = 0.0  # the part of cpu_s spent in user space

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.seconds

    @property
    def probes_per_s(self) -> float:
        return self.connects / self.seconds

    @property
    def per_cpu_s(self) -> float:
        return self.connects / self.cpu_s if self.cpu_s else float("inf")

    def line(self, interval: float) -> str:
        due = self.targets / interval
        return (
            f"  {self.name:<11} CPU {self.cpu_s:7.2f} s in {self.seconds:.1f} s = "
            f"{self.cpu_percent:5.1f} % of one core; {self.probes_per_s:8.0f} probes/s "
            f"({100 * self.probes_per_s / due:.0f} % of the {due:.0f}/s due; "
            f"{self.accepts / self.seconds:.0f}/s accepted); "
            f"{self.per_cpu_s:8.0f} probes per CPU-second (user {self.user_s:.2f} s, "
            f"system {self.cpu_s - self.user_s:.2f} s); "
            f"listener {100 * self.listener_cpu_s / self.seconds:.1f} % (not counted)"
        )

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def figures(side: Side, targets: int) -> Figures:
    (t0, (c0, u0), n0, a0, l0), (t1, (c1, u1), n1, a1, l1) = side.samples[0], side.samples[-1]
    return Figures(side.name, targets, t1 - t0, c1 - c0, n1 - n0, a1 - a0, l1 - l0, u1 - u0)


# --- one run: namespaces, listeners, probers ---------------------------------------------


class Run:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.listeners: list[Child] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_probes."))
        self.keep = False

    def netns(self, suffix: str) -> str:
        name = f"{self.tag}-{suffix}"
        netns_add(name)
        self.namespaces.append(name)
        return name

    def listener(self, netns: str, layout: Layout) -> Listener:
        listener = Listener(netns, layout)
        self.listeners.append(listener)
        return listener

    def heartbeats(self, netns: str) -> Heartbeats:
        heartbeats = Heartbeats(netns)
        self.listeners.append(heartbeats)
        return heartbeats

    def start(self, netns: str, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                **kw,
            )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            stop(proc, 30)
        for listener in self.listeners:
            listener.close()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        if self.keep:
            print(f"bench/probes: kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def start_hapair(
    run: Run,
    netns: str,
    layout: Layout,
    interval: float,
    profile: Path | None = None,
    listener: Listener | None = None,
    shared: bool = False,
) -> Side:
    config = hapair_config(run.tmp, layout, interval, shared)
    cmd = [HAPAIR, "run", "-c", str(config)]
    if profile is not None:
        cmd = [
            PYTHON,
            "-m",
            "cProfile",
            "-o",
            str(profile),
            "-m",
            "hapair",
            "run",
            "-c",
            str(config),
        ]
    listener = listener or run.listener(netns, layout)
    log = run.tmp / f"hapair-{netns}.log"
    proc = run.start(netns, cmd, log, env={**os.environ, "HAPAIR_LOG": "INFO"})
    return Side("hapair", netns, proc, listener, log)


def start_floor(run: Run, netns: str, layout: Layout, interval: float) -> Side:
    listener = run.listener(netns, layout)
    log = run.tmp / "floor.log"
    cmd = [PYTHON, str(Path(__file__).resolve()), "--floor", "--targets", str(layout.count)]
    cmd += ["--interval", str(interval)]
    return Side("floor", netns, run.start(netns, cmd, log), listener, log)


def start_keepalived(
    run: Run, netns: str, layout: Layout, interval: float, shared: bool = False
) -> Side:
    config = keepalived_config(run.tmp, layout, interval, shared)
    listener = run.listener(netns, layout)
    log = run.tmp / "keepalived.log"
    cmd = ["keepalived", "--check", "--dont-fork", "--log-console", "--no-syslog"]
    cmd += ["--dont-respawn", "-f", str(config), "-p", str(run.tmp / "keepalived.pid")]
    cmd += ["-c", str(run.tmp / "checkers.pid")]
    proc = run.start(netns, cmd, log)
    return Side("keepalived", netns, proc, listener, log)


def wait_steady(sides: list[Side], due: float, limit: float) -> None:
    """Until every side connects at >= 90 % of the rate due, or at a rate that held
    within 10 % over the last three 2 s samples (a prober that cannot keep up is measured
    as it is, and reported), at most `limit` seconds."""
    deadline = time.monotonic() + limit
    last = {s.name: (time.monotonic(), 0) for s in sides}
    rates: dict[str, list[float]] = {s.name: [] for s in sides}
    pending = list(sides)
    while pending and time.monotonic() < deadline:
        time.sleep(2)
        for side in list(pending):
            if side.proc.poll() is not None:
                raise BenchError(f"{side.name} exited ({side.proc.returncode}): {tail(side.log)}")
            with contextlib.suppress(OSError):
                now, n = time.monotonic(), side.connects()
                t0, n0 = last[side.name]
                last[side.name] = (now, n)
                if not n0:
                    continue
                rate = (n - n0) / (now - t0)
                held = rates[side.name] = [*rates[side.name][-2:], rate]
                if rate >= 0.9 * due or (
                    len(held) == 3 and min(held) > 0 and max(held) <= 1.1 * min(held)
                ):
                    pending.remove(side)
    for side in pending:
        t0, n0 = last[side.name]
        if n0 == 0:
            raise BenchError(f"{side.name} made no connects in {limit:.0f} s: {tail(side.log)}")
        print(f"  {side.name} is not probing at the rate due ({due:.0f}/s) after {limit:.0f} s")


def measure(sides: list[Side], window: float, targets: int) -> list[Figures]:
    for side in sides:
        side.samples.clear()  # a side measured before (keepalived in the baseline) anew
        side.sample()
    end = time.monotonic() + window
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 5))
        for side in sides:
            if side.proc.poll() is not None:
                raise BenchError(f"{side.name} exited ({side.proc.returncode}): {tail(side.log)}")
    for side in sides:
        side.sample()
    return [figures(s, targets) for s in sides]


def agent_status(sock_path: Path, timeout: float = 120) -> dict[str, Any]:
    """The agent's status over its control socket (the guest's busy agent may take a
    while to write 1,000 servers' status: a longer timeout than the CLI's)."""
    try:
        reply = control_client.request(sock_path, {"cmd": "status"}, timeout)
    except control_client.NoAgent as e:
        raise BenchError(str(e)) from None
    if not reply.get("ok"):
        raise BenchError(f"the agent refused the status request: {reply}")
    result: dict[str, Any] = reply["result"]
    return result


def hapair_account(sock_path: Path, targets: int) -> str:
    """What the agent itself says: every real server has a last probe, and it was ok."""
    status = agent_status(sock_path)
    servers = [rs for svc in status.get("services", []) for rs in svc["real_servers"]]
    probed = [rs["probe"] for rs in servers if rs.get("probe")]
    ok = [p for p in probed if p["ok"]]
    lat = sorted(p["latency_ms"] for p in ok)
    if len(servers) != targets or len(ok) != targets:
        bad = next((p["reason"] for p in probed if not p["ok"]), "no probe result")
        raise BenchError(f"hapair status: {len(ok)} of {len(servers)} servers probed ok ({bad})")
    return (
        f"hapair status: {len(ok)} of {targets} real servers last probed ok, latency "
        f"median {lat[len(lat) // 2]} ms, 99th {lat[int(len(lat) * 0.99)]} ms; its heartbeat"
        f" timer was at most {status.get('timer_late_max_ms', '?')} ms late"
    )


def tail(path: Path, n: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def check_rate(f: Figures, interval: float) -> str | None:
    due = f.targets / interval
    if f.probes_per_s < 0.95 * due:
        return f"{f.name} made {f.probes_per_s:.0f} probes/s of the {due:.0f}/s due"
    if f.accepts < 0.95 * f.connects:
        return f"{f.name}: only {f.accepts} of {f.connects} connects were accepted"
    return None


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- the two parts ---------------------------------------------------------------------------


def host_part(args: argparse.Namespace) -> dict[str, Any]:
    layout = Layout.of(args.targets)
    run = Run(f"hppr{os.getpid()}")
    try:
        ns = run.netns("h")
        print(
            f"bench/probes host: hapair run, {layout.count} TCP targets "
            f"({len(layout.addresses)} addresses x {len(layout.ports)} ports) every "
            f"{args.interval:g} s; warm-up {args.warmup:g} s, window {args.window:g} s",
            flush=True,
        )
        heartbeats = run.heartbeats(ns)
        side = start_hapair(run, ns, layout, args.interval, None)
        t0 = time.monotonic()
        wait_steady([side], layout.count / args.interval, 60)
        time.sleep(max(0.0, args.warmup - (time.monotonic() - t0)))
        heartbeats.ask("reset")
        (f,) = measure([side], args.window, layout.count)
        print(f.line(args.interval), flush=True)
        late_line, late = heartbeats.line(HOST_TARGET_LATE_MS)
        print(late_line, flush=True)
        print("  " + hapair_account(run.tmp / "agent.sock", layout.count), flush=True)
        if "IPVS" in (log := side.log.read_text(errors="replace")):
            said = [line for line in log.splitlines() if "IPVS" in line]
            print(f"  agent log ({len(said)} line(s) on IPVS): {said[0][:150]}", flush=True)
        problem = check_rate(f, args.interval)
        stop(side.proc, 30)
        # The baseline, after hapair (not beside it: two probers would share the cores).
        floor = start_floor(run, run.netns("f"), layout, args.interval)
        t0 = time.monotonic()
        wait_steady([floor], layout.count / args.interval, 60)
        time.sleep(max(0.0, min(args.warmup, 5) - (time.monotonic() - t0)))
        (ff,) = measure([floor], args.window, layout.count)
        print(ff.line(args.interval), flush=True)
        stop(floor.proc, 30)
        if args.profile:
            prof = run.tmp / "hapair.prof"
            pside = start_hapair(run, ns, layout, args.interval, prof, side.listener)
            time.sleep(args.warmup + args.window)  # slower under cProfile: no rate check
            stop(pside.proc, 30)
            print_profile(prof, "host part")
        return {
            "host": f.as_json(),
            "host_problem": problem,
            "host_floor": ff.as_json(),
            "host_late": late,
        }
    except BaseException:
        run.keep = True
        raise
    finally:
        run.close()


def guest_part(args: argparse.Namespace) -> dict[str, Any]:
    layout = Layout.of(args.guest_targets)
    if shutil.which("keepalived") is None:
        raise BenchError("keepalived is not installed (scripts/setup installs it)")
    run = Run(f"hppr{os.getpid()}")
    try:
        ns_h, ns_k = run.netns("h"), run.netns("k")
        print(
            f"bench/probes guest: hapair and keepalived --check side by side, "
            f"{layout.count} TCP targets each every {args.interval:g} s; warm-up "
            f"{args.guest_warmup:g} s, window {args.guest_window:g} s",
            flush=True,
        )
        heartbeats = run.heartbeats(ns_h)
        sides = [
            start_hapair(run, ns_h, layout, args.interval, None),
            start_keepalived(run, ns_k, layout, args.interval),
        ]
        t0 = time.monotonic()
        wait_steady(sides, layout.count / args.interval, 600)  # 9p imports are slow
        print(f"  both steady after {time.monotonic() - t0:.0f} s", flush=True)
        time.sleep(max(0.0, args.guest_warmup - (time.monotonic() - t0)))
        heartbeats.ask("reset")
        result = measure(sides, args.guest_window, layout.count)
        for f in result:
            print(f.line(args.interval), flush=True)
        late_line, late = heartbeats.line(GUEST_TARGET_LATE_MS)
        print(late_line, flush=True)
        try:
            print("  " + hapair_account(run.tmp / "agent.sock", layout.count), flush=True)
        except (BenchError, OSError, ValueError) as e:  # the figures stand; say why not
            print(f"  hapair status could not be read ({e}); agent log:", flush=True)
            print(tail(sides[0].log), flush=True)
        problems = [p for f in result if (p := check_rate(f, args.interval))]
        if len(problems) == len(result):  # neither keeps up: the guest is full, say so
            print("  neither prober keeps up here: " + "; ".join(problems), flush=True)
            problems = []  # per probe they still compare
        syscalls = count_syscalls(sides, args.syscall_window)
        for line in syscalls:
            print(line, flush=True)
        # The baseline, same boot: the floor prober in hapair's place beside keepalived.
        stop(sides[0].proc, 30)
        floor = start_floor(run, run.netns("f"), layout, args.interval)
        t0 = time.monotonic()
        wait_steady([floor, sides[1]], layout.count / args.interval, 300)
        time.sleep(max(0.0, min(args.guest_warmup, 10) - (time.monotonic() - t0)))
        baseline = measure([floor, sides[1]], args.guest_window, layout.count)
        for f in baseline:
            print(f.line(args.interval), flush=True)
        for side in [*sides, floor]:
            stop(side.proc, 30)
        shared = shared_part(run, args) if args.shared_window > 0 else None
        if args.profile:  # the agent alone, under cProfile, after the measurement
            prof = run.tmp / "hapair.prof"
            pside = start_hapair(run, ns_h, layout, args.interval, prof, sides[0].listener)
            time.sleep(args.guest_warmup + args.guest_window)
            stop(pside.proc, 30)
            print_profile(prof, "guest part, alone")
        return {
            "guest": [f.as_json() for f in result],
            "guest_problem": "; ".join(problems) or None,
            "guest_floor": [f.as_json() for f in baseline],
            "guest_late": late,
            "shared": shared,
        }
    except BaseException:
        run.keep = True
        raise
    finally:
        run.close()


def shared_part(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """SHARED_SERVICES services over the same 100 real servers (one port), hapair and
    keepalived side by side: hapair probes each server once per interval (one probe per
    distinct check), keepalived once per service and server."""
    layout = Layout.of(100)
    pairs = SHARED_SERVICES * layout.count
    print(
        f"bench/probes guest, shared: {SHARED_SERVICES} services over the same "
        f"{layout.count} real servers ({pairs:,} service-server pairs) every "
        f"{args.interval:g} s, hapair and keepalived side by side; window "
        f"{args.shared_window:g} s",
        flush=True,
    )
    sides = [
        start_hapair(run, run.netns("hs"), layout, args.interval, shared=True),
        start_keepalived(run, run.netns("ks"), layout, args.interval, shared=True),
    ]
    t0 = time.monotonic()
    # What is due differs (hapair: one probe per server); wait for each to hold its rate.
    wait_steady(sides, pairs / args.interval, 300)
    time.sleep(max(0.0, min(args.guest_warmup, 10) - (time.monotonic() - t0)))
    result = measure(sides, args.shared_window, pairs)
    status = agent_status(run.tmp / "agent.sock")
    probes = status["checker"]["probes"]
    for f in result:
        print(
            f"  {f.name:<11} CPU {f.cpu_s:6.2f} s in {f.seconds:.1f} s = {f.cpu_percent:5.1f} % "
            f"of one core; {f.probes_per_s:7.0f} probes/s for {pairs:,} pairs; "
            f"{1e6 * f.cpu_s / f.seconds / pairs:.2f} CPU-us per pair per second",
            flush=True,
        )
    print(f"  hapair's checker runs {probes} distinct probes for the {pairs:,} pairs", flush=True)
    return {"figures": [f.as_json() for f in result], "pairs": pairs, "probes": probes}


def count_syscalls(sides: list[Side], seconds: float) -> list[str]:
    """System calls per connect of each side, counted by `strace -c` over `seconds`
    (after the window: strace slows what it traces). Explains system time, does not
    measure it."""
    if seconds <= 0 or shutil.which("strace") is None:
        return []
    out = []
    for side in sides:
        cmd = ["timeout", "-s", "INT", str(seconds), "strace", "-c", "-f"]
        for pid in side.pids():
            cmd += ["-p", str(pid)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        calls = {}
        for line in p.stderr.splitlines():
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                calls[f[-1]] = int(f[3])  # % time, seconds, usecs/call, calls, [errors,] name
        connects = calls.get("connect", 0)
        if not connects:
            out.append(f"  {side.name} syscalls: no connect in {seconds:g} s under strace")
            continue
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
        each = ", ".join(f"{name} {n / connects:.2f}" for name, n in top)
        total = sum(calls.values()) / connects
        out.append(f"  {side.name} syscalls per connect (strace -c): {total:.2f}: {each}")
    return out


def print_profile(path: Path, part: str) -> None:
    import pstats

    print(f"\n## profile of the agent (cProfile, {part})\n")
    stats = pstats.Stats(str(path)).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)


def guest_via_rig(args: argparse.Namespace) -> dict[str, Any]:
    """Re-run this bench's guest part in the QEMU guest; echo its output, return its result."""
    rig = str(REPO / "scripts" / "run-in-kernel")
    cmd = [rig, str(REPO / "bench" / "probes"), "--guest-part"]
    cmd += ["--guest-targets", str(args.guest_targets), "--interval", str(args.interval)]
    cmd += ["--guest-window", str(args.guest_window), "--guest-warmup", str(args.guest_warmup)]
    cmd += ["--shared-window", str(args.shared_window)]
    cmd += ["--profile"] if args.profile else []
    cmd += ["--syscall-window", str(args.syscall_window)]
    env = {**os.environ, "HAPAIR_RIG_TIMEOUT": os.environ.get("HAPAIR_RIG_TIMEOUT", "900")}
    print("bench/probes: booting the QEMU guest (scripts/run-in-kernel)", flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] | None = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0 or result is None:
        raise BenchError(f"the guest part failed (exit status {proc.returncode})")
    return result


def report(result: dict[str, Any]) -> None:
    def row(label: str, value: str, target: str = "-", outcome: str = "info") -> None:
        print(f"{label:<52} {value:>10}  {target:<9} {outcome}")

    def lateness(part: str, late: dict[str, Any] | None, target_ms: float) -> None:
        if late and late.get("gaps"):
            ok = late["worst"] <= target_ms
            worst = f"{late['worst']:.1f}"
            row(f"{part}: heartbeat lateness, worst (ms)", worst, f"<= {target_ms:g}", verdict(ok))
            row(f"{part}: heartbeat lateness, 99th percentile (ms)", f"{late['p99']:.1f}")

    print()
    row("measurement", "value", "target", "result")
    host = result.get("host")
    if host:
        f = Figures(**host)
        ok = f.cpu_percent <= HOST_TARGET_CPU and not result.get("host_problem")
        row(
            f"host: hapair CPU, {f.targets:,} targets (% of one core)",
            f"{f.cpu_percent:.1f}",
            f"<= {HOST_TARGET_CPU:g} %",
            verdict(ok),
        )
        row("host: hapair probes per CPU-second", f"{f.per_cpu_s:.0f}")
        if result.get("host_floor"):
            ff = Figures(**result["host_floor"])
            row("host: floor prober CPU (% of one core)", f"{ff.cpu_percent:.1f}")
            row(
                "host: CPU per probe, hapair / floor prober",
                f"{ff.per_cpu_s / f.per_cpu_s:.2f}" if f.per_cpu_s else "inf",
            )
        lateness("host", result.get("host_late"), HOST_TARGET_LATE_MS)
        if result.get("host_problem"):
            print(f"  host: {result['host_problem']}")
    guest = result.get("guest")
    if guest:
        h, k = (Figures(**g) for g in guest)
        # Per probe: when the guest cannot carry both at the rate due, they make different
        # numbers of probes in the window, and plain CPU would favour the slower one.
        ratio = k.per_cpu_s / h.per_cpu_s if h.per_cpu_s else float("inf")
        ok = ratio <= GUEST_TARGET_RATIO and not result.get("guest_problem")
        row(
            f"guest: CPU per probe hapair / keepalived, {h.targets:,}",
            f"{ratio:.2f}",
            f"<= {GUEST_TARGET_RATIO:g}",
            verdict(ok),
        )
        row(
            "guest: CPU hapair / keepalived (same window)",
            f"{h.cpu_s / k.cpu_s:.2f}" if k.cpu_s else "inf",
        )
        row("guest: hapair CPU (% of one guest core)", f"{h.cpu_percent:.1f}")
        row("guest: keepalived CPU (% of one guest core)", f"{k.cpu_percent:.1f}")
        row("guest: hapair probes per CPU-second", f"{h.per_cpu_s:.0f}")
        row("guest: keepalived probes per CPU-second", f"{k.per_cpu_s:.0f}")
        if result.get("guest_floor"):
            ff, kk = (Figures(**g) for g in result["guest_floor"])
            row(
                "guest, baseline: CPU per probe floor / keepalived",
                f"{kk.per_cpu_s / ff.per_cpu_s:.2f}" if ff.per_cpu_s else "inf",
            )
            row("guest, baseline: floor probes per CPU-second", f"{ff.per_cpu_s:.0f}")
            row("guest, baseline: keepalived probes per CPU-second", f"{kk.per_cpu_s:.0f}")
        lateness("guest", result.get("guest_late"), GUEST_TARGET_LATE_MS)
        shared = result.get("shared")
        if shared:
            hs, ks = (Figures(**g) for g in shared["figures"])
            row(
                "guest, shared: CPU per pair hapair / keepalived",
                f"{hs.cpu_s / hs.seconds / (ks.cpu_s / ks.seconds):.3f}" if ks.cpu_s else "inf",
            )
            row("guest, shared: hapair probes/s", f"{hs.probes_per_s:.0f}")
            row("guest, shared: keepalived probes/s", f"{ks.probes_per_s:.0f}")
            row("guest, shared: hapair CPU (% of one core)", f"{hs.cpu_percent:.1f}")
            row("guest, shared: keepalived CPU (% of one core)", f"{ks.cpu_percent:.1f}")
        if result.get("guest_problem"):
            print(f"  guest: {result['guest_problem']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench/probes", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=int, default=10000, help="host: TCP targets (10000)")
    p.add_argument("--window", type=float, default=30, help="host: measured seconds (30)")
    p.add_argument("--warmup", type=float, default=10, help="host: seconds before it (10)")
    p.add_argument("--guest-targets", type=int, default=1000, help="guest: targets (1000)")
    p.add_argument("--guest-window", type=float, default=60, help="guest: measured s (60)")
    p.add_argument("--guest-warmup", type=float, default=20, help="guest: s before it (20)")
    p.add_argument("--interval", type=float, default=1.0, help="probe interval, s (1)")
    p.add_argument(
        "--shared-window", type=float, default=40, help="guest: shared part, s (40; 0: skip)"
    )
    p.add_argument("--host-only", action="store_true", help="skip the guest part")
    p.add_argument("--guest-only", action="store_true", help="skip the host part")
    p.add_argument("--profile", action="store_true", help="also profile the agent, alone")
    p.add_argument(
        "--syscall-window", type=float, default=10, help="guest: s of strace -c per side (10)"
    )
    p.add_argument("--guest-part", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--listener", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--heartbeats", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--first-port", type=int, default=FIRST_PORT, help=argparse.SUPPRESS)
    p.add_argument("--ports", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.listener:
        return listener_main(args.first_port, args.ports)
    if args.floor:
        return floor_main(args.targets, args.interval)
    if args.heartbeats:
        return heartbeats_main(*HEARTBEAT_PEER, args.interval)
    try:
        Layout.of(args.targets)
        Layout.of(args.guest_targets)
    except ValueError as e:
        p.error(str(e))
    if args.window <= 0 or args.guest_window <= 0 or args.interval <= 0:
        p.error("--window, --guest-window and --interval must be positive")
    if os.geteuid() != 0:
        print("bench/probes: needs root (network namespaces)", file=sys.stderr)
        return 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 1 << 20), 65536)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    return exit_status("bench/probes", lambda: parts(args), (BenchError, LabError))


def parts(args: argparse.Namespace) -> int:
    """The host part, the guest part (through the rig) or both, as `args` say; the report."""
    if args.guest_part or (in_guest() and not args.host_only):
        result = guest_part(args)
        if args.guest_part:
            print("RESULT " + json.dumps(result), flush=True)
            return 0
        report(result)
        return 0
    result = {}
    if not args.guest_only:
        result.update(host_part(args))
    if not args.host_only:
        result.update(guest_via_rig(args))
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
