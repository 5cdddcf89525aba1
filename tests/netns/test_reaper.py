"""The reaper (hapair/reaper.py) on its own, in a namespace: a stand-in agent starts it, tells
it the VIPs, then dies or stops cleanly; the kernel's addresses show what the reaper did."""

from __future__ import annotations

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
from hapair.reaper import Reaper
reaper = Reaper.start([Vip(address="10.9.0.100/24", interface="v0")])
# A reload: one more VIP, and one on an interface that does not exist.
reaper.tell([Vip(address=a, interface=i) for a, i in (
    ("10.9.0.100/24", "v0"), ("fd00:9::100/64", "v0"), ("10.9.1.100/24", "nowhere"))])
print(os.getpid(), reaper.pid, flush=True)
if sys.argv[1] == "done":
    reaper.done()
elif sys.argv[1] == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
elif sys.argv[1] == "unit-stop":  # SIGTERM to the whole unit (systemd), and the agent dies
    time.sleep(0.3)  # the reaper has set its signals up by now
    os.kill(reaper.pid, signal.SIGTERM)
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
    """Run the stand-in agent; returns its pid, the reaper's, and its standard error (which
    the reaper shares: the run returns when both have closed it)."""
    proc = ns.run(sys.executable, "-c", AGENT, how, check=False, timeout=30)
    agent_pid, reaper_pid = proc.stdout.split()
    return int(agent_pid), int(reaper_pid), proc.stderr


def exited(pid: int) -> bool:
    """Gone, or a zombie waiting for its new parent (init) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("how", ["sigkill", "crash", "unit-stop"])
def test_an_agent_that_dies_leaves_no_vip(host: Netns, how: str) -> None:
    pid, reaper, stderr = agent(host, how)
    assert addresses(host) == OTHERS
    wait_for(lambda: exited(reaper), 2)  # it was exiting: stderr is closed
    said = [line for line in stderr.splitlines() if "hapair reaper" in line]
    assert said == [
        f"WARNING hapair reaper: agent pid {pid} died without shutting down; removed VIP "
        "10.9.0.100/24 from v0, VIP fd00:9::100/64 from v0"
    ], stderr


def test_a_clean_stop_keeps_the_addresses_and_the_reaper_is_gone(host: Netns) -> None:
    _, reaper, stderr = agent(host, "done")
    assert exited(reaper)  # done() waited for it
    assert sorted(addresses(host)) == sorted(OTHERS + VIPS)
    assert "hapair reaper" not in stderr
