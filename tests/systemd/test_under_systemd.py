"""The package's unit under a real systemd (PID 1): start to READY and MASTER, a reload
that keeps the state and the process, a frozen agent killed by the watchdog with its VIP
gone, a stop that removes the VIP. Needs a machine whose init is systemd and where the
package may be installed (a director, or one of the lab's Vagrant VMs); `scripts/test`
does not run this layer. Run it there with `python -m pytest -m systemd tests/systemd`
as root, after scripts/build-deb. It was run (and passed) by hand in the kernel rig's
guest booted with systemd as init (`vng --systemd`, with tmpfs overlays mounted on /etc,
/opt, /usr, /var, /tmp by a one-off unit); CI has no clean way to start it there."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.systemd

ROOT = Path(__file__).resolve().parents[2]
VIP = "10.123.0.100/24"
CONFIG = f"""
[node]
name = "{os.uname().nodename.split(".")[0]}"
priority = 150

[cluster]
id = 123
auth_key_file = "/etc/hapair/authkey"
interval = "100ms"
deadtime = "1s"
initdead = "1s"

[[cluster.links]]
type = "udp"
interface = "hapair-test0"
group = "239.0.0.123"
port = 6123

[[vips]]
address = "{VIP}"
interface = "hapair-test0"
"""


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


def show(prop: str) -> str:
    return sh("systemctl", "show", "-P", prop, "hapair.service").strip()


def wait_for(what: str, predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def vip_held() -> bool:
    return VIP.split("/")[0] in sh("ip", "-o", "addr", "show", "dev", "hapair-test0")


@pytest.fixture
def installed() -> Iterator[None]:
    debs = sorted((ROOT / "dist").glob("hapair_*.deb"))
    assert debs, "build the package first: scripts/build-deb"
    sh("apt-get", "install", "-y", "-q", str(debs[-1]))
    sh("ip", "link", "add", "hapair-test0", "type", "dummy")
    sh("ip", "link", "set", "hapair-test0", "up", "multicast", "on")
    Path("/etc/hapair/authkey").write_bytes(os.urandom(32))
    os.chmod("/etc/hapair/authkey", 0o600)
    Path("/etc/hapair/hapair.toml").write_text(CONFIG)
    try:
        yield
    finally:
        subprocess.run(["systemctl", "stop", "hapair.service"], timeout=60)
        subprocess.run(["ip", "link", "del", "hapair-test0"])
        for name in ("hapair.toml", "authkey"):
            Path("/etc/hapair", name).unlink(missing_ok=True)
        subprocess.run(["apt-get", "purge", "-y", "-q", "hapair"], timeout=300)


def test_start_reload_watchdog_and_stop(installed: None) -> None:
    sh("systemctl", "start", "hapair.service")  # Type=notify: returns once READY=1 came
    assert show("ActiveState") == "active"
    wait_for("MASTER in the status", lambda: show("StatusText").startswith("MASTER"), 15)
    wait_for("the VIP", vip_held, 5)
    pid = show("MainPID")

    sh("systemctl", "reload", "hapair.service")  # RELOADING=1, then READY=1
    assert show("MainPID") == pid and show("ActiveState") == "active"
    assert show("StatusText").startswith("MASTER") and vip_held()

    os.kill(int(pid), signal.SIGSTOP)  # it stops petting: WatchdogSec=5s
    wait_for("the watchdog's kill", lambda: show("MainPID") != pid, 15)
    assert "watchdog" in sh("journalctl", "-u", "hapair.service", "-n", "50", "--no-pager")
    wait_for("back after Restart=on-failure", lambda: show("ActiveState") == "active", 30)
    wait_for("MASTER again", lambda: show("StatusText").startswith("MASTER"), 15)

    sh("systemctl", "stop", "hapair.service")  # STOPPING=1: the VIP goes
    assert show("ActiveState") == "inactive" and not vip_held()
