"""Failover benchmark with IPVS: outage and connection survival in the lab (`--ipvs`).

    bench/failover --ipvs [--mode dr|nat|both] [--runs N] [--connections N]

IPVS and its connection-sync daemon exist only in the QEMU guest (scripts/run-in-kernel),
so outside it this re-runs itself there (one boot for everything). Inside, for each mode it
builds the lab (the `lab` package) once (client, directors lvs1 and lvs2, three real
servers, bridges, a serial cable; its Lab, Poller, Holder, connections_after, ... are
imported, not copied), with `preempt = false` in both directors' configs, so that no
unmeasured failback happens. The client sends a new HTTP request to the VIP every 50 ms
(the lab's Poller) and holds N long-lived connections to VIP:7 (lab/traffic.py's Holder,
a line every 2 s each). Then it runs N unplanned and N planned failovers, interleaved
U P P U U P P U ... so that each director is killed and releases equally often:

  unplanned  the MASTER dies as in `scripts/lab demo`: its agent SIGKILLed, every link
             down (by an `ip -batch` started beforehand: a few ms after the kill), its
             namespace deleted. It comes back as a fresh machine (a new namespace, the same
             config, the agent started) and must be a steady BACKUP before the next run.
  planned    `hapair ctl release` on the MASTER: the request the CLI sends to the MASTER's
             control socket, made in-process (the CLI alone takes ~40 s to start here).

Before every run: one MASTER and one BACKUP hearing each other on every link, the client
answered, every held connection alive, and the BACKUP's kernel holding every one of the
client's established connections to VIP:7 (`ss` in the client, `ipvsadm -Lnc` in the
BACKUP): learned through the sync daemon. A run measures:

  outage    the longest gap between the client's answers, from 1 s before the failure
            took effect (unplanned: the kill; planned: the old MASTER's `since` as BACKUP)
            to 1 s after the first answer after the new MASTER's `since`
  survived  held connections answered after that first answer, by the real server they
            always had, with no error (of those alive before the run)
  2-MASTER  the client's view (scripts/lab's ArpWatch asks "who has the VIP" every
  no-MASTER 0.2 s here): time during which two directors answered, and none did

Exit status: 0 when the benchmark ran (also on a MISS), 1 when it broke, 130 interrupted.
Everything it makes (namespaces lab-*, processes, the lab directory) is removed on exit,
error, Ctrl-C and SIGTERM by the lab's own `down()`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lab.build
import lab.commands
import lab.measure
import lab.shell
import lab.topology
from lab.config import DirectorFiles

ROOT = Path(__file__).resolve().parent.parent
IN_GUEST = os.environ.get("HAPAIR_IN_GUEST") == "1"

MARGIN = 1.0  # s: unplanned outage target = deadtime + MARGIN (see bench/README.md)
SURVIVAL_TARGET = 99.5  # %
HOST_PLANNED_TARGET = 0.05  # s, bench/failover's planned target on the host; x slowdown here
SETTLE = 1.0  # s watched after the first answer through the new MASTER
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class BenchError(Exception):
    """The bench itself broke (not a missed target)."""


class Interrupted(Exception):
    pass


def no_preempt(config: str) -> str:
    """The lab's director config with `preempt = false`: a restored director stays BACKUP."""
    line = "\npreempt = true\n"
    if config.count(line) != 1:
        raise BenchError("the lab's director config has no single 'preempt = true' line")
    return config.replace(line, "\npreempt = false\n")


def hapair_check(config: Path) -> None:
    """What `hapair check -c CONFIG` checks, in this process (a process costs seconds in
    the guest): the config loader itself, for both directors of the pair file."""
    from hapair.config import ConfigError, load_all

    try:
        load_all(config)
    except ConfigError as exc:
        raise BenchError(f"hapair check -c {config}: {exc}") from None


@dataclass
class Run:
    kind: str  # "unplanned" or "planned"
    old: str
    new: str
    outage: float  # s
    took_effect: float  # s: unplanned: kill -> links down; planned: request -> old MASTER left
    master_after: float  # s from the failure taking effect to the new MASTER's `since`
    survived: int
    total: int
    broken: dict[str, int] = field(default_factory=dict)
    # The client's view (scripts/lab's ArpWatch): s during which two directors answered
    # its ARP requests for the VIP, and s during which none did (beyond the watch's slack).
    dual: float = 0.0
    none: float = 0.0


class Bench:
    """One mode's lab and its runs."""

    def __init__(self, mode: str, connections: int) -> None:
        self.mode = mode
        self.connections = connections
        self.lab: Any = lab.build.Lab(mode, lab.topology.LAB_DIR)
        self.poller: Any = None
        self.holder: Any = None
        self.arp: Any = None  # the client's ARP view of who holds the VIP
        self.replaced = 0  # holder sets replaced because a connection had broken
        self.period, self.line_period = (0.05, 2.0) if lab.topology.IN_GUEST else (0.01, 0.5)
        self.resolution = float("nan")

    # setting up

    def up(self) -> None:
        self.lab.build()
        for d in lab.topology.DIRECTORS:
            config = DirectorFiles.lab(d, self.lab.dir).config
            config.write_text(no_preempt(config.read_text()))
            hapair_check(config)
        self.lab.step(
            "built: namespaces lab-*, bridges, serial cable; configs with preempt = false"
        )
        # Lab.start(), but lvs1 first: with preempt = false, a lvs2 that happened to finish
        # its initdead first would stay MASTER, and Lab.wait_steady() wants lvs1 MASTER.
        first, second = lab.topology.DIRECTORS
        self.lab.spawn(
            "servers",
            "ops",
            lab.topology.PYTHON,
            "-m",
            "lab",
            "_serve",
            str(self.lab.dir / "alerts.jsonl"),
        )
        self.lab.start_agent(first)
        self.lab.wait_ready("servers", 60)
        self.lab.step("real servers up (HTTP :80, SMTP :25, echo :7), alert sinks up on ops")
        lab.shell.wait_for(
            f"{first} MASTER",
            lambda: (
                self.lab.agent_alive(first) and lab.shell.state_of(first, self.lab.dir) == "MASTER"
            ),
            60,
            0.5,
        )
        self.lab.start_agent(second)
        self.lab.wait_steady()
        self.lab.step(f"{first} MASTER, {second} BACKUP")
        self.poller = lab.measure.Poller(self.period)
        self.open_holder()
        self.arp = lab.measure.ArpWatch(
            lab.topology.ns_name("client"), "eth0", lab.topology.VIP, self.lab.macs()
        )
        self.arp.answered(20 * lab.topology.SLOWDOWN)
        self.ready()
        time.sleep(5.0)
        end = time.time()
        with self.poller.lock:
            times = sorted(t for t, _ in self.poller.ok if end - 5.0 <= t <= end)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        self.resolution = max(gaps, default=float("inf"))
        self.lab.step(
            f"client: an HTTP request every {self.period * 1000:.0f} ms; longest gap between"
            f" answers over 5 s with nothing failing: {self.resolution * 1000:.0f} ms"
        )

    def open_holder(self) -> None:
        from lab.traffic import Holder

        if self.holder is not None:
            self.holder.close()
            self.holder = None
        self.holder = Holder(
            lab.topology.ns_name("client"),
            lab.topology.VIP,
            7,
            self.connections,
            60 * lab.topology.SLOWDOWN,
            self.line_period,
        )
        self.lab.step(
            f"client: {self.connections} connections to {lab.topology.VIP}:7, each sending a"
            f" line every {self.line_period:g} s"
        )

    # observing

    def steady(self) -> tuple[str, str] | None:
        """(MASTER, BACKUP) when one is MASTER holding the VIPs, the other BACKUP hearing
        it on every link, and the client was answered within the last second."""
        statuses: dict[str, Any] = {}
        for d in lab.topology.DIRECTORS:
            self.lab.agent_alive(d)
            statuses[d] = lab.shell.status_of(d, self.lab.dir)
        if any(s is None for s in statuses.values()):
            return None
        by_state = {s["state"]: d for d, s in statuses.items()}
        if sorted(by_state) != ["BACKUP", "MASTER"]:
            return None
        master, backup = by_state["MASTER"], by_state["BACKUP"]
        peer = statuses[backup]["peer"]
        if not peer["alive"] or not all(link["alive"] for link in peer["links"]):
            return None
        if not all(v["held"] for v in statuses[master]["vips"]):
            return None
        if not self.poller.answered_since(time.time() - 1.0):
            return None
        return master, backup

    def ready(self) -> tuple[str, str]:
        """Wait for a steady pair whose BACKUP learned every held connection; replace the
        held connections first if any broke (a broken one would be counted again)."""
        pair: tuple[str, str] = lab.shell.wait_for(
            "a steady MASTER/BACKUP pair", self.steady, 60, 0.5
        )
        conns = self.holder.report()
        alive = [c for c in conns if not c["error"] and not c["moved"]]
        if len(alive) < self.connections:
            self.lab.step(f"{self.connections - len(alive)} held connection(s) broken: a fresh set")
            self.replaced += 1
            self.open_holder()
        n = len(lab.measure.held_connections())
        if n < self.connections:
            raise BenchError(f"the client holds {n} connections to VIP:7, not {self.connections}")
        backup = pair[1]
        lab.shell.wait_for(
            f"{backup}'s kernel learning the {n} held connections (sync daemon)",
            lambda: lab.measure.learned(backup) >= n,
            30,
            1.0,
        )
        pair = lab.shell.wait_for("a steady MASTER/BACKUP pair", self.steady, 60, 0.5)
        if pair[1] != backup:
            raise BenchError(f"the pair changed roles on its own: {pair}")
        return pair

    # the runs

    def unplanned(self, restore: bool = True) -> Run:
        master, backup = self.ready()
        killed, _, dark = self.lab.kill(master)
        run = self.measure("unplanned", master, backup, killed, killed)
        run.took_effect = dark  # kill -> every link down
        if not restore:  # the last run: nothing follows
            return run
        # Back as a fresh machine (no VIP, no IPVS state); ready() then waits until its
        # kernel has learned the connections from the new MASTER.
        t = time.monotonic()
        self.lab.wire([master])
        self.lab.start_agent(master)
        lab.shell.wait_for(
            f"{master} back as BACKUP",
            lambda: (
                self.lab.agent_alive(master)
                and lab.shell.state_of(master, self.lab.dir) == "BACKUP"
            ),
            60,
            0.5,
        )
        self.lab.step(f"{master} back: BACKUP {time.monotonic() - t:.0f} s after its restart")
        self.arp.names.update(self.lab.macs())  # the fresh machine's interface has a new MAC
        return run

    def planned(self) -> Run:
        master, backup = self.ready()
        # The request `hapair ctl release` sends, made in-process: the CLI process alone
        # took 36-41 s to start in the guest (not counted in the outage, but in the time).
        from hapair import control_client

        started = time.time()
        try:
            reply = control_client.request(
                self.lab.dir / f"{master}.sock", {"cmd": "release"}, 5 * lab.topology.SLOWDOWN
            )
        except (control_client.NoAgent, OSError) as exc:
            raise BenchError(f"hapair ctl release on {master}: {exc}") from exc
        if not reply.get("ok"):
            raise BenchError(f"hapair ctl release on {master}: refused: {reply.get('error')}")

        def left() -> float | None:
            s = lab.shell.status_of(master, self.lab.dir)
            return float(s["since"]) if s and s["state"] == "BACKUP" else None

        effect: float = lab.shell.wait_for(
            f"{master} BACKUP after 'hapair ctl release'", left, 10, 0.05
        )
        return self.measure("planned", master, backup, started, effect)

    def measure(self, kind: str, old: str, new: str, trigger: float, effect: float) -> Run:
        """The run from the failure taking effect at `effect` (wall clock) on: the new
        MASTER, the client's outage, the held connections."""

        def new_master() -> float | None:
            self.lab.agent_alive(new)
            s = lab.shell.status_of(new, self.lab.dir)
            return float(s["since"]) if s and s["state"] == "MASTER" else None

        since: float = lab.shell.wait_for(f"{new} MASTER", new_master, 30, 0.1)

        def first_answer() -> float | None:
            with self.poller.lock:
                after = [t for t, _ in self.poller.ok[-2000:] if t > since]
            return min(after) if after else None

        first: float = lab.shell.wait_for(f"an answer through {new}", first_answer, 20, 0.05)
        time.sleep(max(0.0, first + SETTLE - time.time()))
        outage = self.poller.outage(effect, first + SETTLE)[0]
        conns = lab.measure.connections_after(self.holder, first, 30)
        seen = self.arp.holding(trigger, time.time())
        return Run(
            kind,
            old,
            new,
            outage,
            effect - trigger,
            since - effect,
            conns.survived,
            conns.total,
            dict(conns.broken),
            seen.dual,
            seen.none,
        )

    def close(self) -> None:
        if self.arp is not None:
            self.arp.close()
        if self.holder is not None:
            with contextlib.suppress(Exception):
                self.holder.close()
        if self.poller is not None:
            with contextlib.suppress(Exception):
                self.poller.close()
        self.lab.keep_logs(f"{self.mode}-")  # HAPAIR_LAB_KEEP_LOGS, as `scripts/lab demo`
        self.lab.step("tearing down")
        self.lab.down()
        left = lab.build.leftovers(self.lab.dir)
        self.lab.step("taken down: " + (f"LEFT OVER: {left}" if left else "nothing left"))


def order(runs: int) -> list[str]:
    """U P P U U P P U ...: `runs` of each kind; each director is killed and releases
    equally often (with preempt = false every run moves the VIP to the other one)."""
    kinds: list[str] = []
    for pair in range(runs):
        kinds += ["unplanned", "planned"] if pair % 2 == 0 else ["planned", "unplanned"]
    return kinds


def describe(mode: str, i: int, total: int, run: Run) -> str:
    line = (
        f"  {mode} {run.kind:<9} {i:>3}/{total}: {run.old} -> {run.new}"
        f"  outage {run.outage * 1000:6.0f} ms"
        f" ({run.new} MASTER at +{run.master_after * 1000:.0f} ms"
    )
    if run.kind == "planned":
        line += f"; release took effect +{run.took_effect * 1000:.0f} ms after the request"
    else:
        line += f"; links down +{run.took_effect * 1000:.0f} ms after the SIGKILL"
    line += (
        f")  connections {run.survived}/{run.total}"
        f"  client ARP view: two answering {run.dual:.2f} s, none {run.none:.2f} s"
    )
    for why, n in run.broken.items():
        line += f"\n      {n} broken: {why}"
    return line


@dataclass
class ModeResult:
    mode: str
    deadtime: float
    interval: float
    connections: int
    period: float
    line_period: float
    resolution: float = float("nan")
    runs: list[Run] = field(default_factory=list)
    replaced: int = 0
    seconds: float = 0.0
    complete: bool = False
    interrupted: bool = False


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(r: ModeResult, slowdown: float) -> None:
    target = r.deadtime + MARGIN
    planned_ref = HOST_PLANNED_TARGET * slowdown
    print()
    print(
        f"== mode {r.mode}: deadtime {r.deadtime:g} s, heartbeat every {r.interval:g} s;"
        f" client: an HTTP request every {r.period * 1000:.0f} ms (longest gap with nothing"
        f" failing {r.resolution * 1000:.0f} ms), {r.connections} held connections (a line"
        f" every {r.line_period:g} s); {r.seconds / 60:.1f} min"
        + ("" if r.complete else "; INCOMPLETE")
    )
    head = (
        f"{'kind':<23}{'runs':>5}{'outage median':>15}{'worst':>10}{'survived':>13}"
        f"{'survival':>10}{'worst run':>11}{'2-MASTER':>10}{'no-MASTER':>11}"
    )
    print(head)
    print("-" * len(head))
    rows = [("unplanned", "unplanned (kill)"), ("planned", "planned (ctl release)")]
    stats: dict[str, tuple[float, float, float]] = {}
    for kind, label in rows:
        runs = [x for x in r.runs if x.kind == kind]
        if not runs:
            print(f"{label:<23}{0:>5}")
            continue
        outages = [x.outage for x in runs]
        survived, total = sum(x.survived for x in runs), sum(x.total for x in runs)
        pct = 100.0 * survived / total if total else 0.0
        worst_run = min(runs, key=lambda x: x.survived / x.total if x.total else 0)
        stats[kind] = (statistics.median(outages), max(outages), pct)
        worst_conns = f"{worst_run.survived}/{worst_run.total}"
        print(
            f"{label:<23}{len(runs):>5}{statistics.median(outages):>13.2f} s{max(outages):>8.2f} s"
            f"{f'{survived}/{total}':>13}{pct:>8.2f} %{worst_conns:>11}"
            f"{max(x.dual for x in runs):>8.2f} s{max(x.none for x in runs):>9.2f} s"
        )
    if "unplanned" in stats:
        median, worst, pct = stats["unplanned"]
        print(
            f"{verdict(worst <= target)}  unplanned outage: worst {worst:.2f} s (median"
            f" {median:.2f} s) <= {target:g} s (deadtime {r.deadtime:g} s + {MARGIN:g} s)"
        )
        kills = [x for x in r.runs if x.kind == "unplanned"]
        after = [x.master_after for x in kills]
        print(
            f"info  unplanned: the new MASTER's `since` median +{statistics.median(after):.2f} s,"
            f" worst +{max(after):.2f} s after the kill"
        )
        short = sum(1 for x in kills if x.outage < x.master_after)
        if short:
            print(
                f"note  {short} unplanned run(s) measured a client gap shorter than kill -> MASTER:"
                " answers came after the kill: the\n      dead node's kernel serves until its"
                " links are down, and the Poller stamps an answer when its loop reads it\n"
                "      (late in a busy guest); kill -> MASTER bounds a sudden death's outage"
                " from below"
            )
    for kind in ("unplanned", "planned"):
        if kind in stats:
            pct = stats[kind][2]
            print(
                f"{verdict(pct >= SURVIVAL_TARGET)}  {kind} connection survival: {pct:.2f} %"
                f" >= {SURVIVAL_TARGET:g} %"
            )
    if "planned" in stats:
        median, worst, _ = stats["planned"]
        print(
            f"info  planned outage: median {median:.2f} s, worst {worst:.2f} s (bench/failover's"
            f" host target {HOST_PLANNED_TARGET * 1000:.0f} ms x {slowdown:g} = {planned_ref:g} s:"
            f" {verdict(median <= planned_ref)} for the median)"
        )
    if r.replaced:
        print(f"note  the held connections were replaced {r.replaced} time(s) after breakage")


def run_mode(mode: str, runs: int, connections: int) -> ModeResult:
    if lab.shell.existing_namespaces() & set(lab.topology.all_namespaces()):
        # Someone's lab is up here: never take it down.
        raise BenchError("a lab (namespaces lab-*) is already up here; not touching it")
    t = lab.topology.timing()
    b = Bench(mode, connections)
    result = ModeResult(mode, t["deadtime"], t["interval"], connections, b.period, b.line_period)
    start = time.monotonic()
    lab.commands.banner(mode)
    try:
        b.up()
        result.resolution = b.resolution
        done = {"unplanned": 0, "planned": 0}
        kinds = order(runs)
        for i, kind in enumerate(kinds):
            run = b.unplanned(i < len(kinds) - 1) if kind == "unplanned" else b.planned()
            result.runs.append(run)
            done[kind] += 1
            print(describe(mode, done[kind], runs, run), flush=True)
        result.complete = True
    except Interrupted as exc:
        print(f"bench/failover --ipvs: interrupted ({exc}); taking the lab down", flush=True)
        result.interrupted = True
    except (lab.shell.LabError, BenchError, AssertionError, subprocess.TimeoutExpired) as exc:
        print(f"bench/failover --ipvs: {mode}: broke: {exc}", file=sys.stderr, flush=True)
        for d in lab.topology.DIRECTORS:
            tail = lab.shell.log_tail(b.lab.dir / f"{d}.log", 25)
            print(f"--- {d} log (tail)\n{tail}", file=sys.stderr, flush=True)
    finally:
        result.replaced = b.replaced
        result.seconds = time.monotonic() - start
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in SIGNALS}
        try:
            b.close()  # everything of the lab, whatever happened
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    return result


def in_guest() -> bool:
    return IN_GUEST and os.path.exists("/proc/net/ip_vs")


def via_rig(argv: list[str], modes: list[str], runs: int) -> int:
    """Run this bench in the QEMU guest; its exit status (0, 1 or 130)."""
    rig = str(ROOT / "scripts" / "run-in-kernel")
    budget = 600 + len(modes) * runs * 2 * 120  # s: twice the ~60 s a run took in the guest
    env = os.environ | {"HAPAIR_RIG_TIMEOUT": os.environ.get("HAPAIR_RIG_TIMEOUT", str(budget))}
    print(
        "bench/failover --ipvs: no IPVS here; re-running in the QEMU guest through"
        f" scripts/run-in-kernel (one boot; timeout {env['HAPAIR_RIG_TIMEOUT']} s)",
        flush=True,
    )
    cmd = [rig, str(ROOT / "bench" / "failover"), "--ipvs", *argv]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        rc = proc.wait()
    except Interrupted:
        proc.terminate()  # the rig kills the guest, and everything in it, on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        return 130
    if rc == 124:
        print("bench/failover --ipvs: the guest timed out (HAPAIR_RIG_TIMEOUT)", file=sys.stderr)
    return rc if rc in (0, 130) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench/failover --ipvs", description=__doc__.split("\n\n")[0])
    p.add_argument("--ipvs", action="store_true", help="(this bench; bench/failover's switch)")
    p.add_argument("--mode", choices=["dr", "nat", "both"], default="both")
    p.add_argument("--runs", type=int, default=20, help="runs of each kind per mode (20)")
    p.add_argument("--connections", type=int, default=200, help="held connections (200)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.connections < 1:
        p.error("--runs and --connections must be at least 1")
    if os.geteuid() != 0:
        print("bench/failover --ipvs: needs root (network namespaces)", file=sys.stderr)
        return 1
    modes = ["dr", "nat"] if args.mode == "both" else [args.mode]

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in SIGNALS:
        signal.signal(sig, interrupted)
    passed = [a for a in argv if a != "--ipvs"]
    if not in_guest():
        if IN_GUEST:
            print("bench/failover --ipvs: no IPVS even in the guest", file=sys.stderr)
            return 1
        return via_rig(passed, modes, args.runs)

    results: list[ModeResult] = []
    code = 0
    try:
        for mode in modes:
            result = run_mode(mode, args.runs, args.connections)
            results.append(result)
            if not result.complete:
                code = 130 if result.interrupted else 1
                break
    except BenchError as exc:
        print(f"bench/failover --ipvs: {exc}", file=sys.stderr)
        code = 1
    except Interrupted as exc:
        print(f"bench/failover --ipvs: interrupted ({exc})", flush=True)
        code = 130
    finally:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    for result in results:
        report(result, lab.topology.SLOWDOWN)
    if results:
        print(
            "\noutage: the longest gap between the client's answers from 1 s before the"
            " failure took effect\n  (unplanned: the kill; planned: the old MASTER's leaving)"
            f" to {SETTLE:g} s after the first answer through the new MASTER.\n"
            "survived: held connections answered after that first answer by the real server"
            " they always had.\n"
            "2-MASTER / no-MASTER: the worst run's time during which two directors answered"
            " the client's ARP\n  requests for the VIP, and none did (scripts/lab's ArpWatch,"
            " from the failure on; no-MASTER is\n  expected while an unplanned failure is"
            " undetected: about the deadtime)."
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
