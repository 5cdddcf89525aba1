"""Probes and operator actions, end to end in the guest kernel: real HTTP servers go
down and come back, and `ipvsadm -Ln` on the directors follows; the checker process
killed leaves the table as it was; an operator's drain
survives an agent restart; below quorum the sorry server stands alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from ipvsadm import ipvs_table
from pair import SLOWDOWN, VIP, Director, Lab, started, wait_for

from lab.config import service

pytestmark = pytest.mark.kernel

# A probe is an HTTP round trip through two Python processes: ~10x slower in the guest.
SCALE = max(1.0, SLOWDOWN / 2)
INTERVAL, TIMEOUT, FALL = 1.0 * SCALE, 0.8 * SCALE, 2
PROBE = {
    "type": "http",
    "path": "/",
    "interval": f"{INTERVAL}s",
    "timeout": f"{TIMEOUT}s",
    "rise": 2,
    "fall": FALL,
}
REAL_SERVERS = ["10.77.0.21", "10.77.0.22", "10.77.0.23"]
WEB = service("web", VIP, 80, "dr", REAL_SERVERS, scheduler="wrr", probe=PROBE)
SERVICES = {"services": [WEB | {"quorum": 2, "sorry_server": "10.77.0.9:80"}]}
WEB = f"TCP {VIP}:80 wrr"


def dests(d: Director) -> dict[str, int]:
    return {addr: weight for addr, _, weight in ipvs_table(d.ns).get(WEB, [])}


def ctl(d: Director, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hapair", "ctl", *args, "--socket", str(d.socket)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_probes_operator_and_quorum(
    lab_factory: Callable[..., Lab], netns_factory: Callable[[str], object]
) -> None:
    lab = lab_factory(SERVICES, interval=0.5, deadtime=3.0, initdead=6.0)
    servers: dict[str, subprocess.Popen[bytes]] = {}

    def serve(last: int) -> None:
        ns = servers_ns[last]
        servers[ns.name] = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns.name,
                sys.executable,
                "-m",
                "http.server",
                "80",
                "--bind",
                f"10.77.0.{last}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(last: int) -> None:
        proc = servers.pop(servers_ns[last].name)
        proc.kill()
        proc.wait()

    servers_ns = {}
    for last in (21, 22, 23):
        ns = netns_factory(f"rs{last}")
        lab.public.attach(ns, "eth0", f"10.77.0.{last}/24")  # type: ignore[arg-type]
        servers_ns[last] = ns
        serve(last)
    lab.extra.append(lambda: [p.kill() for p in servers.values()])
    lab = started(lab)
    dir1, dir2 = lab.dirs
    everyone = {"10.77.0.21:80": 1, "10.77.0.22:80": 1, "10.77.0.23:80": 1}
    for d in lab.dirs:  # probes run on both directors
        try:
            wait_for(lambda d=d: dests(d) == everyone, 10)
        except AssertionError:
            print(f"{d.name}: ipvsadm {dests(d)}; status {d.status()}")
            raise

    # The checker process dies: it is started again, and the table never moves meanwhile.
    # (The servers were in the table before any probe, as probe_start = "up" says; the
    # checker's start takes seconds of imports in the guest.)
    def checker_status() -> dict[str, Any]:
        status = dir1.status()
        assert status is not None
        return status["checker"]  # type: ignore[index, no-any-return]

    wait_for(lambda: checker_status()["state"] == "running", 60)  # x SLOWDOWN
    checker = checker_status()
    assert checker["restarts"] == 0, checker
    old = checker["pid"]
    os.kill(old, signal.SIGKILL)
    tables = []
    deadline = time.monotonic() + 60 * SCALE  # a new Python process's start in the guest
    while True:
        tables.append(dests(dir1))
        status = dir1.status()
        assert status is not None
        checker = status["checker"]  # type: ignore[index]
        if checker["pid"] not in (None, old) and checker["state"] == "running":
            break
        assert time.monotonic() < deadline, f"the checker was not replaced: {checker}"
        time.sleep(0.05)
    time.sleep(3 * INTERVAL)  # the new checker's probes have run
    tables.append(dests(dir1))
    assert all(t == everyone for t in tables), tables
    assert checker["restarts"] == 1

    # A real server dies: it leaves the table within fall x interval + timeout.
    stop(22)
    t0 = time.monotonic()
    wait_for(lambda: "10.77.0.22:80" not in dests(dir1), 10)
    took = time.monotonic() - t0
    bound = FALL * INTERVAL + TIMEOUT
    print(f"down server out of IPVS after {took:.1f}s (bound on the host {bound:.1f}s)")
    wait_for(lambda: "10.77.0.22:80" not in dests(dir2), 10)
    status = dir1.status()
    assert status is not None
    rs22 = next(r for r in status["services"][0]["real_servers"] if r["address"] == "10.77.0.22")  # type: ignore[index]
    assert (
        rs22["healthy"] is False
        and rs22["in_ipvs"] is False
        and "10.77.0.22" in rs22["probe"]["reason"]
    )
    serve(22)
    wait_for(lambda: dests(dir1) == everyone, 10)

    # The operator drains one: weight 0, kept across an agent restart; enable undoes it.
    done = ctl(dir1, "drain", "web", "10.77.0.21:80")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: dests(dir1).get("10.77.0.21:80") == 0, 2)
    refused = ctl(dir1, "drain", "web", "10.77.0.99:80")
    assert refused.returncode == 1 and "not a real server of web" in refused.stderr
    dir1.signal(signal.SIGTERM)
    assert dir1.proc is not None and dir1.proc.wait(120) == 0
    dir1.start()
    wait_for(lambda: dir1.state() is not None, 30)
    time.sleep(2 * INTERVAL)
    assert dests(dir1).get("10.77.0.21:80") == 0, dests(dir1)
    assert ctl(dir1, "enable", "web", "10.77.0.21:80").returncode == 0
    wait_for(lambda: dests(dir1) == everyone, 5)

    # Add a server at run time, then take it out again.
    # (It serves nothing, so its probes take it out after `fall` failures: look at once.)
    assert ctl(dir1, "add", "web", "10.77.0.24:80", "--weight", "5").returncode == 0
    assert dests(dir1).get("10.77.0.24:80") == 5
    assert ctl(dir1, "remove", "web", "10.77.0.24:80").returncode == 0
    wait_for(lambda: "10.77.0.24:80" not in dests(dir1), 5)

    # Below quorum (2): the sorry server is the only destination.
    stop(22)
    stop(23)
    wait_for(lambda: dests(dir1) == {"10.77.0.9:80": 1}, 10)
    serve(22)
    wait_for(lambda: set(dests(dir1)) == {"10.77.0.21:80", "10.77.0.22:80"}, 15)
