"""Measuring a failover as a client sees it: the client's ARP view, a poller, held
connections, logs and alerts."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.build import Lab
from lab.config import DirectorFiles
from lab.shell import LabError, sh, wait_for
from lab.topology import (
    HOSTS,
    MONITOR_PORT,
    MONITOR_USER,
    PYTHON,
    SLOWDOWN,
    VIP,
    ns_name,
    timing,
)


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
            ["ip", "netns", "exec", netns, *priority, PYTHON, "-m", "lab", *args],
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
    dual = 0.0
    holders: list[list[str]] = []
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


def config_change(lab: Lab) -> str:
    """`hapair config apply` on lvs1 of a change that alters no behaviour (the warntime
    given at its default), which lvs1 pushes to lvs2 first; a line to print."""
    config = DirectorFiles.lab("lvs1", lab.dir).config
    old = config.read_text()
    t = timing()
    warntime = f'warntime = "{(t["interval"] + t["deadtime"]) / 2:g}s"\n'
    new = re.sub(r"^deadtime = .*\n", lambda m: m.group(0) + warntime, old, count=1, flags=re.M)
    change = lab.dir / "change.toml"
    change.write_text(new)
    cmd = [PYTHON, "-m", "hapair", "config", "apply", str(change), "-c", str(config)]
    out = subprocess.run(
        [*cmd, "--node", "lvs1"], capture_output=True, text=True, timeout=60 * SLOWDOWN
    )
    copies = {DirectorFiles.lab(d, lab.dir).config.read_text() for d in ("lvs1", "lvs2")}
    last = (out.stdout.strip().splitlines() or [""])[-1]  # "applied VERSION on lvs2, lvs1"
    if out.returncode != 0 or copies != {new} or not last.startswith("applied "):
        why = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit {out.returncode}"]
        return f"a change applied on lvs1 did NOT reach both directors: {why[0]}"
    _, version, on = last.split(" ", 2)
    return f"hapair config apply on lvs1 ({warntime.strip()}): version {version[:12]} {on}"


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
