"""The lab's commands: `scripts/lab up|status|down|demo|topology|provision`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lab
from lab import host_act
from lab.build import Lab, down
from lab.config import DirectorFiles
from lab.measure import (
    ArpWatch,
    Poller,
    alerts_received,
    config_change,
    connections_after,
    learned,
    log_events,
    monitor_check,
    smtp_through_vip,
    watch_arp,
)
from lab.provision import SERVICE_UNITS, provision
from lab.roles import poll_http, serve_all, serve_host
from lab.shell import (
    LabError,
    existing_namespaces,
    has_ipvs,
    say,
    state_of,
    status_of,
    wait_for,
)
from lab.topology import (
    DIRECTORS,
    HOSTS,
    IN_GUEST,
    LAB_DIR,
    MODES,
    MONITOR_USER,
    PYTHON,
    REALS,
    ROOT,
    SLOWDOWN,
    VIP,
    all_namespaces,
    ns_name,
    timing,
    topology_json,
)


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
    config: str = ""  # a change applied on lvs1, pushed to lvs2 first
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
        config = DirectorFiles.lab(d, lab.dir).config
        say(f"  {d}: config {config} (the same on both), log {lab.dir / (d + '.log')}")
        say(f"    monitor {monitor_check(lab, d)}")
    say(f"  monitor login: {MONITOR_USER} / {lab.password}")
    say(f"  (self-signed certificate {lab.dir / 'monitor.crt'}: curl --cacert it, or -k)")
    say(f"  alerts received by ops: {lab.dir / 'alerts.jsonl'}")
    say("Try:")
    say(f"  ip netns exec {ns_name('client')} curl -s http://{VIP}/")
    say(f"  .venv/bin/hapair status -c {DirectorFiles.lab('lvs1', lab.dir).config} --node lvs1")
    say(f"  ip netns exec {ns_name('lvs1')} ipvsadm -Ln")
    say("  scripts/lab status; scripts/lab down")


def cmd_status(lab_dir: Path) -> int:
    if not lab_dir.exists():
        say("lab: no lab is up")
        return 3
    rc = 0
    for d in DIRECTORS:
        say(f"=== {d}")
        config = str(DirectorFiles.lab(d, lab_dir).config)
        out = subprocess.run(
            [PYTHON, "-m", "hapair", "status", "-c", config, "--node", d], check=False
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
        result.config = config_change(lab)
        lab.step(f"one pair file: {result.config}")
        lab.step(f"SMTP through the VIP: {smtp_through_vip()}")
        # In the emulated guest a Python server manages a fraction of the host's rate.
        period, line_period = (0.05, 2.0) if IN_GUEST else (0.01, 0.5)
        poller = Poller(period)
        arp = ArpWatch(ns_name("client"), "eth0", VIP, lab.macs())
        arp.answered(20)
        from lab.traffic import Holder

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
        killed, _, dark = lab.kill("lvs1")
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
        how_many = "?" if result.learned is None else str(result.learned)
        lab.step(
            f"lvs1 MASTER again, once its kernel had learned {how_many} connections from lvs2"
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
        result.error = lab.failed("FAILED", exc)
    finally:
        say()
        if holder is not None:
            holder.close()
        if poller is not None:
            poller.close()
        if arp is not None:
            arp.close()
        lab.keep_logs()
        if lab.built:  # not a lab that was up already (build() refused to touch it)
            lab.step("tearing down")
            result.leftovers = lab.down()
            left = result.leftovers
            lab.step("taken down: " + (f"LEFT OVER: {left}" if left else "nothing left"))
    return result


def mail_about(lab: Path, text: str, skip: int) -> bool:
    return any(
        a["channel"] == "email" and text in a["subject"] for a in alerts_received(lab)[skip:]
    )


def demo_act1(two_acts: bool) -> host_act.HostActResult:
    """Act 1 (lab/host_act.py), under its header; a summary of its figures at its end."""
    say("=" * 78)
    say(
        f"Act 1{' of 2' if two_acts else ''}: THIS MACHINE'S OWN KERNEL (Linux"
        f" {platform.release()}), REAL TIMING: hapair's speed"
    )
    say("=" * 78)
    result = host_act.run()
    if result.ok:
        say()
        say("Act 1 in short (this machine's kernel; interval 50 ms, deadtime 150 ms):")
        say(f"  unplanned failover (lvs1 killed):      outage {result.unplanned_ms:5.0f} ms")
        say(f"  failback (lvs1 back, preempts):        outage {result.failback_ms:5.0f} ms")
        say(f"  planned handover (hapair ctl release): outage {result.planned_ms:5.0f} ms")
        say(
            f"  (the client's longest reply gap with nothing failing: {result.baseline_ms:.0f} ms;"
            f" first figure {result.first_figure_s:.1f} s into the act)"
        )
    return result


def act2_header(two_acts: bool) -> None:
    act = "Act 2 of 2" if two_acts else "Act 2"
    say()
    say("=" * 78)
    if has_ipvs():
        say(f"{act}: IPVS, CONNECTION SYNC AND THE CONNECTIONS, on this machine's kernel")
        say("=" * 78)
        return
    say(f"{act}: IPVS, CONNECTION SYNC AND THE CONNECTIONS, in an EMULATED GUEST at 10x-SLOW")
    say("TIMING (deadtime 3 s, not 150 ms): its figures show that the failover works and")
    say("keeps connections, not how fast hapair is (act 1 shows that). Several minutes.")
    say("=" * 78)


def rerun_in_guest(argv: list[str]) -> None:
    say("lab: this machine's kernel has no IPVS; running the lab in a QEMU guest with")
    say("     Debian's kernel (scripts/run-in-kernel, software emulation: ~10x slower).")
    say("     Timings below come from the guest, with a looser deadtime.")
    env = os.environ | {"HAPAIR_RIG_TIMEOUT": os.environ.get("HAPAIR_RIG_TIMEOUT", "900")}
    script = str(ROOT / "scripts" / "run-in-kernel")
    os.execve(script, [script, PYTHON, "-m", "lab", *argv], env)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/lab", description=(lab.__doc__ or "").split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("up", "demo"):
        c = sub.add_parser(name)
        c.add_argument("--mode", choices=MODES, default="dr")
        if name == "demo":
            c.add_argument("--connections", type=int, default=200)
            c.add_argument(
                "--act",
                choices=("1", "2"),
                help="only act 1 (this machine's kernel, real timing, no IPVS: seconds) or"
                " only act 2 (IPVS, sync, connections: in the QEMU guest without IPVS here)",
            )
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
        done = down(LAB_DIR) + host_act.sweep()
        say("lab: " + ("; ".join(done) if done else "nothing to take down"))
        return 0
    if args.cmd == "status":
        return cmd_status(LAB_DIR)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    if args.cmd == "demo" and (args.act == "1" or (args.act is None and not IN_GUEST)):
        if args.act is None and has_ipvs() and existing_namespaces() & set(all_namespaces()):
            say("lab: a lab is already up: run 'scripts/lab down' first")
            return 1
        try:
            act1 = demo_act1(two_acts=args.act is None)
        except KeyboardInterrupt:
            say("lab: interrupted; everything was taken down")
            return 130
        if args.act == "1":
            return 0 if act1.ok else 1
        if not act1.ok:
            say("lab: act 1 failed; act 2 not started")
            return 1
    if args.cmd == "demo" and not IN_GUEST:
        act2_header(two_acts=args.act is None)
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
