"""Failover benchmark: the outage a client sees when the VIP moves between two real agents.

Topology (built once with `ip`, torn down on exit, Ctrl-C and errors):

    client ---- public bridge ---- dir1 eth0, dir2 eth0   (the VIP's network)
                heartbeat bridge -- dir1 eth1, dir2 eth1   (UDP multicast heartbeats)
                socat pty pair ---- dir1 <-> dir2          (serial heartbeats)

Each director runs `hapair run` and a UDP echo responder on 0.0.0.0:PORT that puts its
node name in the reply; the client sends a numbered request to VIP:PORT every 5 ms and
reports when each reply arrived (client and echo service run SCHED_FIFO via chrt, so the
host's other load does not pose as outage; the agents run as deployed). The outage
of one run is the reply gap the switch-over falls in: from the last reply before the first
reply from the new master to that reply. The longest gap from the trigger to 0.5 s after
the switch-over is reported too ("window"), to catch flapping.

Kinds of run:
  unplanned  the MASTER dies the way a dead node looks: its agent and its echo service
             SIGKILLed together (heartbeats on both links and the replies stop at the
             same moment), then eth0 and eth1 down (one `ip -batch`, a few ms later).
             Afterwards the node is restored (VIP gone as after a reboot, interfaces up,
             agent and service restarted) and the bench waits until it is a stable
             BACKUP. With --down-first the interfaces go down before the SIGKILL; the
             agent then often sees its eth0 go down and hands over (FAULT) within a few
             ms, which measures a fast handover, not a dead node.
  planned    `hapair ctl release` on the MASTER (label "ctl release"), and SIGTERM to
             the MASTER's agent (label "SIGTERM"; the agent is restarted afterwards).
preempt = false, so every run moves the VIP from whichever node is MASTER to the other,
and no failback (a second, unmeasured VIP move) happens while a node is restored.

--hog SECONDS: no failures; both agents steady while 2 busy loops saturate the CPUs;
`hapair status` is sampled on both every 0.5 s; prints "false takeovers: N".

Exit status: 0 when the benchmark ran (also when a target is missed), 1 when the bench
itself broke, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import itertools
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.config import director_toml, serial_link, udp_link, vip, write_authkey
from lab.echo import CLIENT, PERIOD, RESPONDER, RT
from lab.shell import (
    Bridge,
    LabError,
    Netns,
    agent_command,
    ip_batch,
    netns_add,
    serial_cable,
    sh,
    status_at,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
HAPAIR = str(ROOT / ".venv" / "bin" / "hapair")

VIP = "10.99.0.100"
GROUP = "239.0.0.99"
HB_PORT = 6699
ECHO_PORT = 7099
CLUSTER_ID = 99
TARGETS = {"unplanned": 250.0, "ctl release": 50.0, "SIGTERM": 50.0}
NO_REPLY_TIMEOUT = 10.0  # no reply from the new master this long: an infinite outage
SETTLE = 0.5  # after the first reply from the new master, watch this long for more gaps

HOG = "while True: pass"


class BenchError(Exception):
    """The bench itself broke (not a missed target; so does a LabError: a command failed,
    or a wait ran out)."""


class Interrupted(Exception):
    pass


@dataclass
class Director:
    name: str
    ns: str
    priority: int
    config: Path
    log: Path
    socket: Path
    proc: subprocess.Popen[bytes] | None = None  # the agent
    responder: subprocess.Popen[bytes] | None = None  # the UDP echo service

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                agent_command(self.ns, self.config, PYTHON),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=os.environ | {"HAPAIR_LOG": "INFO"},
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any] | None:
        return status_at(self.socket) if self.running() else None

    def state(self) -> str | None:
        s = self.status()
        return None if s is None else str(s["state"])

    def holds_vip(self) -> bool:
        out = sh("ip", "-n", self.ns, "-o", "addr", "show", "dev", "eth0").stdout
        return f" {VIP}/" in out


@dataclass
class Lab:
    prefix: str
    tmp: Path
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    dirs: list[Director] = field(default_factory=list)
    replies: list[tuple[float, str]] = field(default_factory=list)  # (arrival, node)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: subprocess.Popen[bytes] | None = None

    # Building and tearing down.

    def netns(self, hint: str) -> str:
        name = f"{self.prefix}-{hint}"
        netns_add(name)
        self.namespaces.append(name)
        return name

    def spawn(self, *cmd: str, **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(list(cmd), start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def build(self) -> None:
        key = write_authkey(self.tmp / "authkey")
        public, heartbeat = (
            Bridge(Netns(self.netns(hint)), "br0").create() for hint in ("pub", "hb")
        )
        client_ns = self.netns("cli")
        public.attach(Netns(client_ns), "eth0", "10.99.0.10/24")
        self.spawn(*serial_cable(self.tmp / "tty1", self.tmp / "tty2"))
        wait_for(
            "the socat pty pair",
            lambda: all((self.tmp / f"tty{i}").exists() for i in (1, 2)),
            10,
            0.05,
        )
        for i, priority in ((1, 150), (2, 100)):
            name = f"dir{i}"
            ns = self.netns(name)
            public.attach(Netns(ns), "eth0", f"10.99.0.{i}/24")
            heartbeat.attach(Netns(ns), "eth1", f"10.98.0.{i}/24")
            config = self.tmp / f"{name}.toml"
            d = Director(
                name, ns, priority, config, self.tmp / f"{name}.log", self.tmp / f"{name}.sock"
            )
            write_config(d, key, self.tmp / f"tty{i}")
            check = sh(HAPAIR, "check", "-c", str(config), check=False)
            if check.returncode != 0 or check.stdout.strip() != "ok":
                raise BenchError(f"hapair check -c {config}: {check.stdout}{check.stderr}")
            self.dirs.append(d)
            self.start_responder(d)
        self.client_ns = client_ns

    def start_responder(self, d: Director) -> None:
        d.responder = self.spawn(
            "ip", "netns", "exec", d.ns, *RT, PYTHON, "-c", RESPONDER, d.name, str(ECHO_PORT)
        )

    def start_client(self) -> None:
        self.client = self.spawn(
            "ip",
            "netns",
            "exec",
            self.client_ns,
            *RT,
            PYTHON,
            "-c",
            CLIENT,
            VIP,
            str(ECHO_PORT),
            str(PERIOD),
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._read_client, daemon=True).start()

    def _read_client(self) -> None:
        assert self.client is not None and self.client.stdout is not None
        for line in self.client.stdout:
            _, t, node = line.decode().split()
            with self.lock:
                self.replies.append((float(t), node))

    def teardown(self) -> None:
        for d in self.dirs:
            if d.proc is not None:
                self.procs.append(d.proc)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)

    # Observing.

    def master(self) -> tuple[Director, Director]:
        """(MASTER, BACKUP) once the pair is steady: one MASTER holding the VIP, one BACKUP
        hearing it on every link, the client answered by the MASTER only."""

        def steady() -> tuple[Director, Director] | None:
            states = [d.status() for d in self.dirs]
            if any(s is None for s in states):
                return None
            names = [s["state"] for s in states]  # type: ignore[index]
            if sorted(names) != ["BACKUP", "MASTER"]:
                return None
            m = names.index("MASTER")
            master, backup = self.dirs[m], self.dirs[1 - m]
            peer = states[1 - m]["peer"]  # type: ignore[index]
            if not peer["alive"] or not all(link["alive"] for link in peer["links"]):
                return None
            if not master.holds_vip() or backup.holds_vip():
                return None
            recent = self.recent(0.3)
            if len(recent) < 20 or {n for _, n in recent} != {master.name}:
                return None
            if time.monotonic() - recent[-1][0] > 0.05:
                return None
            return master, backup

        return wait_for("a steady pair (one MASTER, one BACKUP, client answered)", steady, 30, 0.1)

    def recent(self, seconds: float) -> list[tuple[float, str]]:
        since = time.monotonic() - seconds
        with self.lock:
            return [r for r in self.replies[-2000:] if r[0] >= since]

    def outage(self, t0: float, new: str) -> tuple[float, float, str]:
        """(outage ms, longest gap ms in the window, where) for a failure triggered at t0
        from which `new` takes over. The outage is the gap the switch-over falls in: from
        the last reply before the first reply from `new` to that reply. The window's
        longest gap also covers the 0.5 s after it (flapping, or noise on a busy host)."""
        deadline = t0 + NO_REPLY_TIMEOUT

        def first_new() -> float | None:
            with self.lock:
                after = [t for t, node in self.replies[-4000:] if t >= t0 and node == new]
            return after[0] if after else None

        first = None
        while time.monotonic() < deadline:
            first = first_new()
            if first is not None:
                break
            time.sleep(0.02)
        if first is None:
            return math.inf, math.inf, f"no reply from {new} within {NO_REPLY_TIMEOUT:.0f} s"
        time.sleep(max(0.0, first + SETTLE - time.monotonic()))
        with self.lock:
            times = [t for t, _ in self.replies[-6000:] if t0 - 1.0 <= t <= first + SETTLE]
        before = [t for t in times if t < first]
        if not before:
            return math.inf, math.inf, "no replies before the failure"
        window = max(b - a for a, b in itertools.pairwise(times) if b >= t0)

        def ms(t: float) -> str:
            return f"{(t - t0) * 1000:+.0f}"

        return (
            (first - before[-1]) * 1000,
            window * 1000,
            f"last reply {ms(before[-1])}, first from {new} {ms(first)} ms",
        )


def write_config(d: Director, key: Path, tty: Path) -> None:
    d.config.write_text(
        director_toml(
            name=d.name,
            priority=d.priority,
            socket=d.socket,
            state_dir=d.config.parent,
            cluster_id=CLUSTER_ID,
            auth_key_file=key,
            cluster={
                "interval": "50ms",
                "deadtime": "150ms",
                "warntime": "100ms",
                "initdead": "1s",
                "preempt": False,
            },
            links=[udp_link("eth1", GROUP, HB_PORT), serial_link(tty)],
            vips=[vip(f"{VIP}/24", "eth0")],
            comment="written by bench/failover",
        )
    )


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_events(path: Path, since_wall: float, pattern: str) -> list[tuple[float, str]]:
    """(wall time, line) of the agent log lines after `since_wall` that contain `pattern`."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            m = LOG_TIME.match(line)
            if not m or pattern not in line:
                continue
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if t >= since_wall - 0.002:
                found.append((t, line))
    return found


# Runs.


@dataclass
class Run:
    kind: str
    old: str
    new: str
    outage_ms: float
    window_ms: float  # the longest reply gap from the trigger to 0.5 s after the switch-over
    takeover_ms: float | None  # trigger -> the new master logged "-> MASTER"
    where: str = ""  # where the longest gap lay, relative to the trigger


def unplanned(lab: Lab, down_first: bool = False) -> Run:
    master, backup = lab.master()
    assert master.proc is not None and master.responder is not None
    down = ["link set eth0 down", "link set eth1 down"]  # one `ip` takes both down
    wall, t0 = time.time(), time.monotonic()
    if down_first:
        # The brief's literal order. The agent sees its VIP interface go down and may
        # hand over (FAULT) before the SIGKILL lands: that is not a dead node.
        ip_batch(down, master.ns)
    # The node dies at once: its agent (heartbeats on both links stop) and its service
    # (the client's replies stop) in the same microsecond, then its interfaces go dark.
    master.proc.kill()
    master.responder.kill()
    if not down_first:
        ip_batch(down, master.ns)
    master.proc.wait(10)
    master.responder.wait(10)
    outage, window, where = lab.outage(t0, backup.name)
    run = Run(
        "unplanned", master.name, backup.name, outage, window, takeover_ms(backup, wall), where
    )
    # Restore: the node comes back as after a reboot (no VIP), then its agent starts.
    sh("ip", "-n", master.ns, "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)
    for ifname in ("eth0", "eth1"):
        sh("ip", "-n", master.ns, "link", "set", ifname, "up")
    lab.start_responder(master)
    master.start()
    return run


def release(lab: Lab) -> Run:
    master, backup = lab.master()
    wall, t0 = time.time(), time.monotonic()
    out = sh(HAPAIR, "ctl", "release", "--socket", str(master.socket), check=False)
    if out.returncode != 0:
        raise BenchError(f"hapair ctl release on {master.name}: {out.stderr.strip()}")
    outage, window, where = lab.outage(t0, backup.name)
    return Run(
        "ctl release", master.name, backup.name, outage, window, takeover_ms(backup, wall), where
    )


def sigterm(lab: Lab) -> Run:
    master, backup = lab.master()
    wall, t0 = time.time(), time.monotonic()
    assert master.proc is not None
    master.proc.terminate()
    outage, window, where = lab.outage(t0, backup.name)
    code = master.proc.wait(10)
    if code != 0:
        tail = master.log.read_text(errors="replace").splitlines()[-6:]
        print(f"    note: {master.name} exited {code} on SIGTERM (expected 0); its log ends:")
        print(*(f"      {line[:160]}" for line in tail), sep="\n")
    master.start()
    return Run(
        "SIGTERM", master.name, backup.name, outage, window, takeover_ms(backup, wall), where
    )


def takeover_ms(d: Director, wall: float) -> float | None:
    time.sleep(0.05)  # let the log line reach the file
    events = log_events(d.log, wall, "-> MASTER")
    return (events[0][0] - wall) * 1000 if events else None


def fmt(ms: float | None) -> str:
    if ms is None:
        return "-"
    return "no reply" if math.isinf(ms) else f"{ms:.1f}"


def series(lab: Lab, kind: str, action: Callable[[Lab], Run], runs: int) -> list[Run]:
    done = []
    for i in range(1, runs + 1):
        run = action(lab)
        done.append(run)
        print(
            f"  {kind:<12} {i:>3}/{runs}: {run.old} -> {run.new}  outage {fmt(run.outage_ms):>8} ms"
            f" (window {fmt(run.window_ms)})  [{run.where}; {run.new} logged -> MASTER at"
            f" +{fmt(run.takeover_ms)} ms]",
            flush=True,
        )
    return done


def baseline(lab: Lab, seconds: float = 3.0) -> float:
    """The client's longest reply gap with nothing failing: its resolution."""
    time.sleep(seconds)
    times = [t for t, _ in lab.recent(seconds)]
    return max((b - a for a, b in itertools.pairwise(times)), default=math.inf) * 1000


def report(results: dict[str, list[Run]], base: float) -> None:
    print()
    print(
        f"baseline: client request every {PERIOD * 1000:.0f} ms"
        f"{' (client and echo service SCHED_FIFO)' if RT else ''}; longest reply gap in 3 s"
        f" with nothing failing {base:.1f} ms"
    )
    head = (
        f"{'kind':<22}{'runs':>5}{'median ms':>11}{'worst ms':>10}{'no reply':>9}"
        f"{'target':>9}{'median/target':>15}  result  {'window worst':>12}"
    )
    print(head)
    print("-" * len(head))
    for kind, runs in results.items():
        outages = [r.outage_ms for r in runs]
        median, worst = statistics.median(outages), max(outages)
        lost = sum(math.isinf(o) for o in outages)
        target = TARGETS[kind]
        verdict = "PASS" if lost == 0 and median <= target else "MISS"
        window = max(r.window_ms for r in runs)
        label = "unplanned (kill)" if kind == "unplanned" else f"planned ({kind})"
        print(
            f"{label:<22}{len(runs):>5}{fmt(median):>11}{fmt(worst):>10}{lost:>9}"
            f"{'<= ' + format(target, '.0f'):>9}{median / target:>14.2f}x  {verdict:<6}"
            f"{fmt(window):>14}"
        )
    print(
        "outage = last reply before the switch-over -> first reply from the new master.\n"
        "result = median vs target; MISS also if any run had no reply from the new master\n"
        f"  within {NO_REPLY_TIMEOUT:.0f} s (an infinite outage).\n"
        "window worst = longest reply gap from the trigger to 0.5 s after the switch-over."
    )


def agent_log_summary(lab: Lab, since_wall: float) -> None:
    for d in lab.dirs:
        late = log_events(d.log, since_wall, "ms late")
        worst = max(
            (
                int(re.search(r"timer (\d+) ms late", x).group(1))
                for _, x in late
                if re.search(r"timer (\d+) ms late", x)
            ),
            default=0,
        )
        notes = len(log_events(d.log, since_wall, "heartbeat_late"))
        print(
            f"{d.name} log: {len(late)} 'timer N ms late' warnings (worst {worst} ms), "
            f"{notes} heartbeat_late notices"
        )


def hog(lab: Lab, seconds: float) -> None:
    lab.master()
    cores = os.cpu_count() or 2
    transitions_before = {d.name: len(log_events(d.log, 0, " -> ")) for d in lab.dirs}
    wall = time.time()
    states0 = {d.name: d.state() for d in lab.dirs}
    print(f"hog: {cores} busy loops for {seconds:.0f} s; start states {states0}", flush=True)
    hogs = [lab.spawn(PYTHON, "-c", HOG) for _ in range(cores)]
    samples = changes = two_masters = no_master = unanswered = 0
    last = dict(states0)
    late_max = dict.fromkeys(states0, 0.0)
    end = time.monotonic() + seconds
    next_print = time.monotonic() + 60
    try:
        while time.monotonic() < end:
            tick = time.monotonic()
            statuses = {d.name: status_at(d.socket) for d in lab.dirs}
            samples += 1
            states = {n: (s["state"] if s else None) for n, s in statuses.items()}
            for n, s in statuses.items():
                if s is None:
                    unanswered += 1
                    continue
                late_max[n] = max(late_max[n], float(s.get("timer_late_max_ms", 0)))
                if states[n] != last[n]:
                    changes += 1
                    print(f"  {time.time() - wall:7.1f} s: {n} {last[n]} -> {states[n]}")
                    last[n] = states[n]
            if None not in states.values():
                masters = list(states.values()).count("MASTER")
                two_masters += masters == 2
                no_master += masters == 0
            if tick >= next_print:
                print(
                    f"  {tick - end + seconds:5.0f} s: {samples} samples, {changes} changes",
                    flush=True,
                )
                next_print += 60
            time.sleep(max(0.0, tick + 0.5 - time.monotonic()))
    finally:
        for p in hogs:
            p.kill()
            p.wait()
    time.sleep(0.5)
    transitions = {
        d.name: log_events(d.log, 0, " -> ")[transitions_before[d.name] :] for d in lab.dirs
    }
    takeovers = sum(1 for lines in transitions.values() for _, x in lines if "-> MASTER" in x)
    print()
    print(f"hog: {seconds:.0f} s, {samples} samples of both agents every 0.5 s")
    print(
        f"state changes seen by sampling: {changes}; samples with two MASTERs: {two_masters}, "
        f"with no MASTER: {no_master}; unanswered status requests: {unanswered}"
    )
    for n, lines in transitions.items():
        for _, x in lines:
            print(f"  {n}: {x}")
    print(
        "timer_late_max_ms from status: " + ", ".join(f"{n} {v:.1f}" for n, v in late_max.items())
    )
    agent_log_summary(lab, wall)
    print(
        f"false takeovers: {takeovers} (transitions to MASTER in the agents' logs while"
        f" nothing failed; target 0: {'PASS' if takeovers == 0 else 'MISS'})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/failover", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="runs per kind (default 20)")
    p.add_argument("--kind", choices=["unplanned", "planned", "all"], default="all")
    p.add_argument(
        "--hog",
        type=float,
        nargs="?",
        const=600.0,
        metavar="SECONDS",
        help="instead: count false takeovers under a CPU hog (default 600 s)",
    )
    p.add_argument(
        "--down-first",
        action="store_true",
        help="unplanned: take the interfaces down before the SIGKILL (the agent may notice)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, agent logs)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/failover: needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ip", "socat"):
        if shutil.which(tool) is None:
            print(f"bench/failover: {tool} not found", file=sys.stderr)
            return 1

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    tmp = Path(tempfile.mkdtemp(prefix="hapair-bench-"))
    lab = Lab(f"hpfb{secrets.token_hex(2)}", tmp)
    code = 0
    try:
        lab.build()
        start_wall = time.time()
        lab.start_client()
        lab.dirs[0].start()
        time.sleep(0.3)  # dir1 first: it is the first MASTER
        lab.dirs[1].start()
        lab.master()
        print(
            f"topology {lab.prefix}-*: agents up (interval 50 ms, deadtime 150 ms, "
            f"preempt false), logs in {tmp}",
            flush=True,
        )
        if args.hog is not None:
            hog(lab, args.hog)
        else:
            base = baseline(lab)
            results: dict[str, list[Run]] = {}
            if args.kind in ("unplanned", "all"):
                kill = functools.partial(unplanned, down_first=args.down_first)
                results["unplanned"] = series(lab, "unplanned", kill, args.runs)
            if args.kind in ("planned", "all"):
                results["ctl release"] = series(lab, "ctl release", release, args.runs)
                results["SIGTERM"] = series(lab, "SIGTERM", sigterm, args.runs)
            report(results, base)
            agent_log_summary(lab, start_wall)
    except (BenchError, LabError) as exc:
        print(f"bench/failover: broke: {exc}", file=sys.stderr)
        for d in lab.dirs:
            with contextlib.suppress(OSError):
                tail = d.log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {d.name} log (tail) ---", *tail, sep="\n", file=sys.stderr)
        code = 1
    except Interrupted as exc:
        print(f"bench/failover: interrupted ({exc}), cleaning up", file=sys.stderr)
        code = 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        lab.teardown()
        if args.keep or code == 1:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
