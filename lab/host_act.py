"""Act 1 of `scripts/lab demo`: the lab's two directors and its client on this machine's own
kernel, at real timing (heartbeats every 50 ms, deadtime 150 ms).

No IPVS is needed: the pair is a VIP-only one (the lab's director config,
`director_config`, without its services, sync, sysctl, alerts and monitor), and each
director answers the client itself on the VIP with lab/echo.py's UDP echo service (its
node name in every reply), bench/failover's instrument too. Its client sends a numbered
request to the VIP every 5 ms and notes when each reply came and from whom (client and
echo service SCHED_FIFO, as in the bench, so that the machine's other load does not pose
as outage). Three moves of the VIP, each measured as the reply gap the switch falls in
(the last reply before the first reply from the new MASTER, to that reply):

  unplanned  lvs1 (MASTER) dies: its agent and echo service SIGKILLed, every link down a
             few ms later, its namespace deleted; lvs2 takes over after the deadtime;
  failback   lvs1 comes back as a fresh machine and preempts (a handover: lvs2 lets go
             first, then lvs1 takes the VIP);
  planned    `hapair ctl release` on lvs1: lvs2 takes the VIP at once.

Its namespaces are `act1-<pid>-<host>` (pid: this process), its files are in
/run/hapair-act1-<pid>, and every process it starts carries HAPAIR_LAB_RUN=act1-<pid> in its
environment: several runs can share a machine with each other, with a lab that is up and with
the tests. Everything is removed at the end, on an error and on Ctrl-C; `scripts/lab down`
removes what a run that was killed left behind (`sweep`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hapair.config.toml_out import to_toml
from lab.build import MARK, Lab, end, running
from lab.config import DirectorFiles, director_config, pair_config
from lab.echo import CLIENT, PERIOD, RESPONDER, RT
from lab.shell import LabError, existing_namespaces, say, sh, status_of, wait_for
from lab.topology import DIRECTORS, PYTHON, TOPOLOGY, VIP

PREFIX = "act1-"
RUN_DIR = Path("/run")
HOSTS_HERE = ["client", *DIRECTORS]  # on the public and heartbeat networks (mode dr's)
TIMING = {"interval": 0.05, "deadtime": 0.15, "warntime": 0.1, "initdead": 1.0}
ECHO_PORT = 7  # UDP: each director's echo service on the VIP
NO_REPLY = 10.0  # s without a reply from the new MASTER: the act fails


def run_id(pid: int) -> str:
    return f"{PREFIX}{pid}"


def run_dir(pid: int) -> Path:
    return RUN_DIR / f"hapair-{run_id(pid)}"


def vip_only_config(name: str, files: DirectorFiles, serial: str) -> str:
    """The lab's config of director `name` (both heartbeat links, the VIP on eth0, preempt)
    as a VIP-only pair at real timing: no services, sync, sysctl, alerts or monitor."""
    full = tomllib.loads(director_config(name, "dr", files, dict(TOPOLOGY["interfaces"]), serial))
    doc = {k: full[k] for k in ("node", "cluster", "vips")}
    doc["cluster"] |= {k: f"{v * 1000:.0f}ms" for k, v in TIMING.items()}
    doc["vips"] = [v for v in doc["vips"] if v["address"].split("/")[0] == VIP]
    head = f"# written by scripts/lab demo, act 1: {name}, a VIP-only pair at real timing\n"
    return head + to_toml(doc) + "\n"


@dataclass
class Outage:
    ms: float  # the reply gap the switch fell in
    last: float  # s from the trigger to the client's last reply before it
    first: float  # s from the trigger to the first reply from the new MASTER


@dataclass
class HostActResult:
    kernel: str = platform.release()
    unplanned_ms: float | None = None
    failback_ms: float | None = None
    planned_ms: float | None = None
    baseline_ms: float | None = None  # the client's longest reply gap with nothing failing
    first_figure_s: float | None = None  # from the act's start to the first outage printed
    leftovers: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        figures = (self.unplanned_ms, self.failback_ms, self.planned_ms)
        return all(f is not None for f in figures) and not self.leftovers and not self.error


class HostPair(Lab):
    """lvs1, lvs2 and the client in namespaces of this run, on the lab's public and
    heartbeat networks, with the lab's addresses and interface names."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        run = run_id(self.pid)
        super().__init__("dr", run_dir(self.pid), prefix=f"{run}-", mark=run, management=False)
        self.replies: list[tuple[float, str]] = []  # (monotonic, node)
        self.lock = threading.Lock()

    # building

    def build(self) -> None:
        self.built = True
        self.dir.mkdir(mode=0o700)
        self.lay_out(HOSTS_HERE)
        checks = []
        files = {d: DirectorFiles.lab(d, self.dir) for d in DIRECTORS}
        configs = {d: vip_only_config(d, f, "tty") for d, f in files.items()}
        text = pair_config(configs, "written by scripts/lab demo, act 1: a VIP-only pair")
        for d, f in files.items():
            f.config.write_text(text)  # the same file on both directors
            check = [PYTHON, "-m", "hapair", "check", "-c", str(f.config), "--node", d]
            checks.append(subprocess.Popen(check, stdout=subprocess.PIPE, text=True))
        for d, proc in zip(DIRECTORS, checks, strict=True):
            out, _ = proc.communicate(timeout=60)
            if proc.returncode != 0 or out.strip() != "ok":
                raise LabError(f"hapair check -c {files[d].config} --node {d}: {out.strip()}")

    def start_director(self, d: str) -> None:
        self.spawn(f"echo-{d}", d, *RT, PYTHON, "-c", RESPONDER, d, str(ECHO_PORT))
        config = str(DirectorFiles.lab(d, self.dir).config)
        self.spawn(d, d, PYTHON, "-m", "hapair", "run", "-c", config, "--node", d)

    def start_client(self) -> None:
        cmd = [*RT, PYTHON, "-c", CLIENT, VIP, str(ECHO_PORT), str(PERIOD)]
        client = self.spawn("client", "client", *cmd, pipe=True)
        threading.Thread(target=self._read_client, args=(client,), daemon=True).start()

    def _read_client(self, client: subprocess.Popen[bytes]) -> None:
        assert client.stdout is not None
        for line in client.stdout:
            _, t, node = line.decode().split()
            with self.lock:
                self.replies.append((float(t), node))

    # observing

    def recent(self, seconds: float) -> list[tuple[float, str]]:
        since = time.monotonic() - seconds
        with self.lock:
            return [r for r in self.replies[-2000:] if r[0] >= since]

    def wait_steady(self, master: str = DIRECTORS[0], backup: str = DIRECTORS[1]) -> dict[str, Any]:
        """`master` MASTER, `backup` BACKUP hearing it on both links, the client answered by
        `master` alone for the last 0.3 s; `master`'s status."""

        def steady() -> dict[str, Any] | None:
            for key in (f"echo-{master}", f"echo-{backup}", "client"):
                self.alive(key)
            if (s := self.pair_steady(master, backup)) is None:
                return None
            recent = self.recent(0.3)
            return s if len(recent) >= 20 and {n for _, n in recent} == {master} else None

        s: dict[str, Any] = wait_for(
            f"{master} MASTER, {backup} BACKUP, the client answered by {master}", steady, 30
        )
        return s

    def baseline(self, seconds: float = 2.0) -> float:
        """The client's longest reply gap in `seconds` with nothing failing, in ms."""
        time.sleep(seconds)
        times = [t for t, _ in self.recent(seconds)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0) * 1000

    def outage(self, t0: float, new: str, timeout: float = NO_REPLY) -> Outage:
        """The reply gap the switch to `new` fell in, for a move triggered at `t0`."""

        def first_new() -> float | None:
            self.alive("client")
            with self.lock:
                return next((t for t, n in self.replies[-8000:] if t >= t0 and n == new), None)

        first: float = wait_for(f"a reply from {new}", first_new, timeout, 0.02)
        with self.lock:
            before = [t for t, _ in self.replies[-8000:] if t0 - 1.0 <= t < first]
        if not before:
            raise LabError("no replies before the move")
        return Outage((first - before[-1]) * 1000, before[-1] - t0, first - t0)

    def master_since(self, d: str, after: float) -> float:
        """Wall time `d` became MASTER (its status), once it is, after `after`."""

        def since() -> float | None:
            s = status_of(d, self.dir)
            ok = s and s["state"] == "MASTER" and float(s["since"]) >= after - 0.01
            return float(s["since"]) if s and ok else None

        value: float = wait_for(f"{d} MASTER", since, 10, 0.02)
        return value

    # tearing down

    def remove(self) -> list[str]:
        return remove(self.pid)

    def leftovers(self) -> list[str]:
        return leftovers(self.pid)


def marked(run: str) -> list[int]:
    """Processes with MARK=`run` in their environment."""
    found = []
    needle = f"{MARK}={run}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def namespaces_of(pid: int) -> list[str]:
    return sorted(n for n in existing_namespaces() if n.startswith(f"{run_id(pid)}-"))


def remove(pid: int) -> list[str]:
    """Take away everything of run `pid`: its processes (by their mark), its namespaces, its
    directory. Idempotent; returns what it did."""
    done = []
    pids = set(marked(run_id(pid)))
    if pids:
        done.append(f"killed {len(pids)} process(es)")
    end(pids, signal.SIGKILL)
    for name in namespaces_of(pid):
        sh("ip", "netns", "del", name, check=False)
        done.append(f"deleted namespace {name}")
    if run_dir(pid).exists():
        shutil.rmtree(run_dir(pid), ignore_errors=True)
        done.append(f"removed {run_dir(pid)}")
    return done


def leftovers(pid: int) -> list[str]:
    """What of run `pid` still exists: processes, namespaces, its directory."""
    left = [f"process {p}" for p in marked(run_id(pid)) if running(p)]
    left += namespaces_of(pid)
    if run_dir(pid).exists():
        left.append(str(run_dir(pid)))
    return left


def sweep() -> list[str]:
    """Remove what runs that are gone (killed before they could clean up) left behind."""
    owners = {int(n.split("-")[1]) for n in existing_namespaces() if _ours(n)}
    owners |= {
        int(p.name.split("-")[2])
        for p in RUN_DIR.glob(f"hapair-{PREFIX}*")
        if p.name.split("-")[2].isdigit()
    }
    done = []
    for pid in sorted(owners):
        if not Path(f"/proc/{pid}").exists():
            done += remove(pid)
    return done


def _ours(name: str) -> bool:
    parts = name.split("-")
    return name.startswith(PREFIX) and len(parts) >= 3 and parts[1].isdigit()


def switch(
    pair: HostPair, kind: str, t0: float, wall: float, new: str, why: str, timeout: float = NO_REPLY
) -> float:
    """The switch to `new` of a move triggered at monotonic `t0` (wall time `wall`): its
    timeline, with `why` for the time `new` became MASTER; its client-visible outage, ms."""
    old = next(d for d in DIRECTORS if d != new)
    cut = pair.outage(t0, new, timeout)
    took = pair.master_since(new, wall) - wall
    rows = [
        (took, f"{new} MASTER (its status; {why})"),
        (cut.last, f"the client's last reply from {old}"),
        (cut.first, f"the client's first reply from {new}"),
    ]
    for at, what in sorted(rows):
        say(f"  {at * 1000:+7.0f} ms  {what}")
    say(f"  act 1 {kind}: client-visible outage {cut.ms:.0f} ms")
    return cut.ms


def run(pair: HostPair | None = None) -> HostActResult:
    """Act 1, start to end; everything of it is gone when it returns or raises (Ctrl-C)."""
    pair = pair or HostPair()
    result = HostActResult()
    ms = {k: f"{v * 1000:.0f} ms" for k, v in TIMING.items()}
    say(f"lvs1 (priority 150), lvs2 (100) and the client in namespaces {run_id(pair.pid)}-*;")
    say(f"heartbeats every {ms['interval']} on UDP multicast and a serial line, deadtime")
    say(f"{ms['deadtime']}, preempt on. No IPVS: a VIP-only pair, each director answering")
    say(f"the client itself on {VIP} (a UDP echo); the client asks every {PERIOD * 1000:g} ms.")
    try:
        pair.build()
        pair.step(
            "built: namespaces, public and heartbeat bridges, serial cable;"
            " both configs pass `hapair check`"
        )
        pair.start_client()
        for d in DIRECTORS:
            pair.start_director(d)
        pair.wait_steady("lvs1", "lvs2")
        pair.step("lvs1 MASTER holding the VIP, lvs2 BACKUP hearing it on both links")
        result.baseline_ms = pair.baseline()
        pair.step(
            f"the client's longest reply gap in 2 s with nothing failing:"
            f" {result.baseline_ms:.0f} ms"
        )

        say()
        wall, t0, dark = pair.kill("lvs1")
        pair.step(
            f"UNPLANNED: lvs1 killed (agent and echo service SIGKILLed, links down"
            f" {dark * 1000:.0f} ms later, namespace deleted)"
        )
        why = f"{ms['deadtime']} after lvs1's last heartbeat"
        result.unplanned_ms = switch(pair, "unplanned failover", t0, wall, "lvs2", why)
        result.first_figure_s = time.monotonic() - pair.t0

        say()
        pair.wire(["lvs1"])
        t0 = time.monotonic()
        wall = time.time()
        pair.start_director("lvs1")
        pair.step(
            "FAILBACK: lvs1 back as a fresh machine (new namespace, the same config); it preempts"
        )
        why = "t = 0: its agent started"
        result.failback_ms = switch(pair, "failback", t0, wall, "lvs1", why, 30)
        pair.wait_steady("lvs1", "lvs2")

        say()
        config = str(DirectorFiles.lab("lvs1", pair.dir).config)
        ctl = [PYTHON, "-m", "hapair", "ctl", "release", "-c", config, "--node", "lvs1"]
        wall, t0 = time.time(), time.monotonic()
        out = subprocess.run(ctl, capture_output=True, text=True, timeout=30, check=False)
        if out.returncode != 0:
            raise LabError(f"hapair ctl release: exit {out.returncode}: {out.stderr.strip()}")
        pair.step(f"PLANNED: `hapair ctl release` on lvs1: {out.stdout.strip()}")
        why = "t = 0: the command started, Python's start-up"
        result.planned_ms = switch(pair, "planned handover", t0, wall, "lvs2", why)
    except (LabError, subprocess.TimeoutExpired, OSError) as exc:
        result.error = pair.failed("act 1 FAILED", exc)
    finally:
        say()
        # Ctrl-C again must not stop the teardown half-way.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            result.leftovers = pair.down()
        finally:
            signal.signal(signal.SIGINT, old)
        left = result.leftovers
        pair.step("taken down: " + (f"LEFT OVER: {left}" if left else "nothing left"))
    return result
