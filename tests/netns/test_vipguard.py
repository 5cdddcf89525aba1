"""The VIP guard (hapair/vipguard.py) on its own, in a namespace: a stand-in agent starts it,
tells it the VIPs, then dies or stops cleanly; the kernel's addresses show what the guard
did. And what it costs: a process of its own, importing next to nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pair import wait_for
from topology import Netns

pytestmark = pytest.mark.netns

AGENT = """
import logging, os, signal, sys, time
logging.basicConfig(level="INFO", format="%(levelname)s %(message)s")
from hapair.config.model import Vip
from hapair.vipguard import VipGuard
guard = VipGuard.start([Vip(address="10.9.0.100/24", interface="v0")], style="journal")
# A reload: one more VIP, and one on an interface that does not exist.
guard.tell([Vip(address=a, interface=i) for a, i in (
    ("10.9.0.100/24", "v0"), ("fd00:9::100/64", "v0"), ("10.9.1.100/24", "nowhere"))])
print(os.getpid(), guard.pid, flush=True)
if sys.argv[1] == "done":
    guard.done()
elif sys.argv[1] == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
elif sys.argv[1] == "unit-stop":  # SIGTERM to the whole unit (systemd), and the agent dies
    time.sleep(0.5)  # the guard has set its signals up by now
    os.kill(guard.pid, signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGKILL)
else:
    raise RuntimeError("the agent crashed")
"""
VIPS = ["10.9.0.100/24", "fd00:9::100/64"]
OTHERS = ["10.9.0.1/24", "10.9.0.50/24"]  # the interface's own addresses: never touched


@pytest.fixture
def host(netns_factory: Callable[[str], Netns]) -> Netns:
    ns = netns_factory("reap")
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    for ifname in ("v0", "v1"):
        ns.ip("link", "set", ifname, "up")
    for cidr in OTHERS + VIPS:
        ns.ip("addr", "add", cidr, "dev", "v0", "nodad")
    return ns


def addresses(ns: Netns) -> list[str]:
    out = ns.ip("-o", "addr", "show", "dev", "v0").stdout
    return [line.split()[3] for line in out.splitlines() if "fe80::" not in line]


def agent(ns: Netns, how: str) -> tuple[int, int, str]:
    """Run the stand-in agent; returns its pid, the guard's, and its standard error (which
    the guard shares: the run returns when both have closed it)."""
    proc = ns.run(sys.executable, "-c", AGENT, how, check=False, timeout=30)
    agent_pid, guard_pid = proc.stdout.split()
    return int(agent_pid), int(guard_pid), proc.stderr


def exited(pid: int) -> bool:
    """Gone, or a zombie waiting for its new parent (init) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("how", ["sigkill", "crash", "unit-stop"])
def test_an_agent_that_dies_leaves_no_vip(host: Netns, how: str) -> None:
    pid, guard, stderr = agent(host, how)
    assert addresses(host) == OTHERS
    wait_for(lambda: exited(guard), 2)  # it was exiting: stderr is closed
    said = [line for line in stderr.splitlines() if "hapair vipguard" in line]
    assert said == [
        f"<4>hapair vipguard: agent pid {pid} died without shutting down; removed VIP "
        "10.9.0.100/24 from v0, VIP fd00:9::100/64 from v0"
    ], stderr


def test_a_clean_stop_keeps_the_addresses_and_the_guard_is_gone(host: Netns) -> None:
    _, guard, stderr = agent(host, "done")
    assert exited(guard)  # done() waited for it
    assert sorted(addresses(host)) == sorted(OTHERS + VIPS)
    assert "hapair vipguard" not in stderr


def test_the_guard_is_a_small_process_of_its_own(host: Netns) -> None:
    """Exec'd, not forked (a fork held a copy of the agent's heap: ~27 MB PSS), and running
    on the standard library alone."""
    stand_in = (
        "import sys, time\n"
        "from hapair.config.model import Vip\n"
        "from hapair.vipguard import VipGuard\n"
        "guard = VipGuard.start([Vip(address='10.9.0.100/24', interface='v0')])\n"
        "print(guard.pid, flush=True)\n"
        "sys.stdin.readline()\n"
        "guard.done()\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host.name, sys.executable, "-c", stand_in],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        pid = int(proc.stdout.readline())
        wait_for(lambda: Path(f"/proc/{pid}/comm").read_text() == "hapair-vipguard\n", 5)
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        pss = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) / 1024
        maps = Path(f"/proc/{pid}/maps").read_text()
        print(f"the VIP guard: {pss:.1f} MB PSS")
        assert pss <= 8.0
        assert "site-packages" not in maps and "pyroute2" not in maps
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert exited(pid)
    assert sorted(addresses(host)) == sorted(OTHERS + VIPS)  # a clean stop touched nothing
