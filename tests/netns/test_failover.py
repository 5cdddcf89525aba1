"""Two real agents as real processes in namespaces: failover as a client sees it.

client, dir1 and dir2 share a public bridge (eth0, the VIP's network); the
directors share a heartbeat bridge (eth1) and a serial cable (a socat pty pair).
Assertions read the kernel and the client: `ip addr` on the directors, the
client's ARP entry for the VIP, and `hapair status` only for the state names.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest
from pair import DEADTIME, GROUP, VIP, Lab, started, wait_for
from topology import Netns, reachable

from hapair.core.heartbeat import Flag, Heartbeat, encode
from hapair.core.states import State

pytestmark = pytest.mark.netns


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    """The pair with the default config, started: dir1 MASTER, dir2 BACKUP."""
    return started(lab_factory())


def test_a_running_agent_is_realtime_with_its_memory_locked(lab: Lab) -> None:
    """As deployed (node.realtime_priority 10): SCHED_FIFO, and its pages locked
    (host.run_realtime), so no page fault stalls a heartbeat."""
    for director in lab.dirs:
        assert director.proc is not None
        pid = director.proc.pid
        reset = getattr(os, "SCHED_RESET_ON_FORK", 0)
        assert os.sched_getscheduler(pid) & ~reset == os.SCHED_FIFO
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        locked_kb = int(status["VmLck"].split()[0])
        assert locked_kb > 10_000, status["VmLck"]  # the heap and the libraries it touched


def test_master_dies_backup_takes_over_and_the_client_follows(lab: Lab) -> None:
    dir1, dir2 = lab.dirs
    watch = lab.watch()
    died = time.time()
    for ifname in ("eth0", "eth1"):
        dir1.ns.ip("link", "set", ifname, "down")
    dir1.signal(signal.SIGKILL)
    took = wait_for(lambda: dir2.holds_vip(), 15)
    print(f"dir2 holds the VIP {took:.2f}s after dir1 died (deadtime {DEADTIME}s)")
    assert dir2.state() == "MASTER"
    wait_for(lambda: lab.client_mac_for_vip() == dir2.mac(), 5)
    assert reachable(lab.client, VIP)
    seen = watch.holding(died, time.time() + 0.5)
    print(f"client's view: {seen}")
    assert seen.dual == 0 and seen.holders[-1] == ["dir2"], seen
    assert seen.none <= DEADTIME + 0.5, seen


def test_a_killed_master_leaves_its_vip_on_no_interface(lab: Lab) -> None:
    """SIGKILL of the MASTER's agent, its links up: its VIP guard takes the VIP off at once, so
    the VIP is never on both directors, and on neither only until the peer's deadtime."""
    dir1, dir2 = lab.dirs
    watch = lab.watch()
    samples: list[tuple[float, list[str]]] = []  # (time, VIP holders), every ~10 ms
    killed_at = time.time()
    killed = time.monotonic()
    dir1.signal(signal.SIGKILL)
    taken: float | None = None
    while taken is None or samples[-1][0] < taken + 1.0:
        now = time.monotonic()
        samples.append((now, lab.holders()))
        if taken is None and "dir2" in samples[-1][1]:
            taken = now
        assert now - killed < 15, "dir2 did not take the VIP over"
        time.sleep(max(0.0, now + 0.01 - time.monotonic()))
    gone = next((t - killed for t, holders in samples if "dir1" not in holders), float("inf"))
    spans = [(b[0] - a[0], a[1]) for a, b in pairwise(samples)]
    dual = sum(dt for dt, holders in spans if len(holders) == 2)
    none = sum(dt for dt, holders in spans if not holders)
    print(
        f"dir1's VIP gone {gone * 1000:.0f} ms after its agent was killed; dir2 holds it after "
        f"{(taken - killed) * 1000:.0f} ms; two holders {dual * 1000:.0f} ms, none "
        f"{none * 1000:.0f} ms (deadtime {DEADTIME * 1000:.0f} ms; {len(samples)} samples, "
        f"one per {(samples[-1][0] - killed) / len(samples) * 1000:.0f} ms)"
    )
    assert dual == 0, "the VIP was on both directors"
    assert gone < 1.0
    assert none <= DEADTIME + 0.5
    assert all(holders == ["dir2"] for t, holders in samples if t >= taken)
    assert dir2.state() == "MASTER"
    seen = watch.holding(killed_at, time.time())
    print(f"client's view: {seen}")
    assert seen.dual == 0 and seen.none <= DEADTIME + 0.5, seen
    log = dir1.log.read_text()
    assert "died without shutting down; removed VIP 10.77.0.100/24 from eth0" in log
    pids = ["ip", "netns", "pids", dir1.ns.name]
    wait_for(lambda: not subprocess.run(pids, capture_output=True).stdout.strip(), 5)  # no guard


GATEWAY = "10.77.0.254"  # a NAT gateway's VIP (on the public bridge here: one capture)
NAT_SERVICE = f"""
[[vips]]
address = "{GATEWAY}/24"
interface = "eth0"
garp_repeat = 3
garp_interval = "50ms"

[[services]]
name = "web"
protocol = "tcp"
address = "{VIP}"
port = 80
forward = "nat"

[[services.real_servers]]
address = "10.79.0.50"
"""
# Every ARP frame on an interface: sender MAC and sender IP, one line each, in order.
ARP_CAPTURE = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((sys.argv[1], 0x0806))
print("ready", flush=True)
while True:
    f = s.recv(128)
    print(f[22:28].hex(":"), socket.inet_ntoa(f[28:32]), flush=True)
"""


def test_a_takeover_announces_the_gateway_before_the_service_address(
    lab_factory: Callable[..., Lab],
) -> None:
    """Under NAT the real servers answer through a VIP of the directors' (their gateway),
    which no service listens on. The new MASTER announces it before it takes the service's
    VIP: a client it draws in before that would send SYNs whose SYN-ACKs went to the dead
    director's MAC (sent again only after 1 s). The config lists the service's VIP first."""
    lab = started(lab_factory(NAT_SERVICE))
    dir1, dir2 = lab.dirs
    capture = subprocess.Popen(
        ["ip", "netns", "exec", lab.client.name, sys.executable, "-c", ARP_CAPTURE, "eth0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert capture.stdout is not None and capture.stdout.readline() == "ready\n"
        dir1.signal(signal.SIGKILL)  # its VIP guard takes both VIPs off
        wait_for(lambda: dir2.holds_vip(), 15)
        time.sleep(0.5)  # the repeated announcements
    finally:
        capture.kill()
        out = capture.communicate()[0]
    mac = dir2.mac()
    announced = [ip for sender, ip in (row.split() for row in out.splitlines()) if sender == mac]
    print(f"{dir2.name}'s ARP frames, in order: {announced}")
    assert GATEWAY in announced and VIP in announced, announced
    assert announced.index(GATEWAY) < announced.index(VIP), announced
    assert dir2.ns.ip("-o", "addr", "show", "dev", "eth0").stdout.count(GATEWAY) == 1


def test_udp_cut_with_serial_up_is_no_takeover(lab: Lab) -> None:
    dir1, dir2 = lab.dirs
    watch = lab.watch()
    cut = time.time()
    dir1.ns.ip("link", "set", "eth1", "down")
    time.sleep(4 * DEADTIME)
    assert lab.masters() == ["dir1"] and lab.holders() == ["dir1"]
    seen = watch.holding(cut, time.time())
    assert seen.dual == 0 and seen.none == 0 and seen.holders == [["dir1"]], seen
    links = {link["type"]: link["alive"] for link in dir2.status()["peer"]["links"]}  # type: ignore[index]
    assert links == {"udp": False, "serial": True}


def test_both_links_cut_then_healed_leaves_one_master(lab: Lab) -> None:
    dir1, dir2 = lab.dirs
    dir1.ns.ip("link", "set", "eth1", "down")
    lab.cut_cable()
    wait_for(lambda: dir2.holds_vip(), 15)
    assert lab.holders() == ["dir1", "dir2"]  # split brain while they cannot hear each other
    watch = lab.watch()
    time.sleep(0.5)
    split = time.time()
    dir1.ns.ip("link", "set", "eth1", "up")
    lab.cable()
    healed = wait_for(lambda: lab.holders() == ["dir1"], 15)
    print(f"one VIP holder {healed:.2f}s after the links came back")
    assert lab.masters() == ["dir1"]
    wait_for(lambda: lab.client_mac_for_vip() == dir1.mac(), 5)  # the winner re-announced
    seen = watch.holding(split - 0.5, time.time() + 0.3)  # dir1 alone, settled
    print(f"client's view from 0.5 s before the links came back: {seen}")
    assert seen.holders[0] == ["dir1", "dir2"] and seen.holders[-1] == ["dir1"], seen
    assert seen.none == 0 and seen.dual <= 0.5 + healed + 0.2, seen


@pytest.mark.parametrize("preempt", [True, False])
def test_recovered_primary_and_preempt(lab_factory: Callable[..., Lab], preempt: bool) -> None:
    lab = started(lab_factory(preempt=preempt))
    dir1, dir2 = lab.dirs
    dir1.kill_with_guard()
    wait_for(lambda: dir2.holds_vip() and dir2.state() == "MASTER", 15)
    assert dir1.holds_vip()  # nothing could remove it; the agent's successor does, first
    watch = lab.watch()
    restarted = time.time()
    dir1.start()
    up = wait_for(lambda: dir1.state() is not None, 30)
    assert "left over from an earlier run" in dir1.log.read_text()
    seen: set[tuple[str, ...]] = set()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        seen.add(tuple(lab.holders()))
        time.sleep(0.02)
    assert ("dir1", "dir2") not in seen, "both held the VIP during the failback"
    if preempt:
        assert lab.masters() == ["dir1"] and lab.holders() == ["dir1"]
        wait_for(lambda: lab.client_mac_for_vip() == dir1.mac(), 5)
    else:
        assert lab.masters() == ["dir2"] and lab.holders() == ["dir2"]
        assert dir1.state() == "BACKUP"
    # Until dir1's agent removes it, dir1's kernel answers for the VIP it kept (the dual
    # time this test starts from); the failback itself adds none.
    seen = watch.holding(restarted, time.time())
    print(f"client's view from dir1's restart: {seen}")
    assert seen.holders[-1] == (["dir1"] if preempt else ["dir2"]), seen
    assert seen.none <= 0.2 and seen.dual <= up + 0.2, seen


def test_sigterm_hands_over_well_before_deadtime(lab_factory: Callable[..., Lab]) -> None:
    lab = started(lab_factory(deadtime=3.0, initdead=3.0))
    dir1, dir2 = lab.dirs
    watch = lab.watch()
    t0, sent = time.monotonic(), time.time()
    dir1.signal(signal.SIGTERM)
    took = wait_for(lambda: dir2.holds_vip(), 15, step=0.01)
    print(f"planned handover took {took * 1000:.0f} ms (deadtime 3 s)")
    assert took < 1.0
    assert dir1.proc is not None and dir1.proc.wait(10) == 0
    assert not dir1.holds_vip() and time.monotonic() - t0 < 3.0
    seen = watch.holding(sent, time.time() + 0.3)  # the new holder's answers too
    print(f"client's view: {seen}")
    assert seen.dual == 0 and seen.none < 1.0 and seen.holders[-1] == ["dir2"], seen


def test_release_from_the_cli(lab: Lab) -> None:
    dir1 = lab.dirs[0]
    watch = lab.watch()
    asked = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "hapair", "ctl", "release", "--socket", str(dir1.socket)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    wait_for(lambda: lab.holders() == ["dir2"], 5)
    time.sleep(1.0)  # and it does not preempt back
    assert lab.masters() == ["dir2"]
    seen = watch.holding(asked, time.time() + 0.3)  # the new holder's answers too
    print(f"client's view: {seen}")
    assert seen.dual == 0 and seen.none < 1.0 and seen.holders[-1] == ["dir2"], seen
    refused = subprocess.run(
        [sys.executable, "-m", "hapair", "ctl", "release", "--socket", str(dir1.socket)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1 and "not MASTER" in refused.stderr


def test_forgeries_replays_and_noise_change_nothing(
    lab: Lab, netns_factory: Callable[[str], Netns]
) -> None:
    dir1, dir2 = lab.dirs
    watch = lab.watch()
    attacked = time.time()
    # An attacker on the heartbeat network records what dir1 says, then replays it,
    # forges under a wrong key, and sends noise; the same over the serial line.
    attacker = dir2.ns  # it shares the heartbeat network; its sockets are not the agent's
    recorder = (
        "import socket, struct, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{GROUP}', 6694))\n"
        "s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,\n"
        f"             socket.inet_aton('{GROUP}') + socket.inet_aton('10.78.0.2'))\n"
        "s.settimeout(2)\n"
        "got = [s.recv(2048) for _ in range(10)]\n"
        "sys.stdout.write('\\n'.join(g.hex() for g in got))\n"
    )
    captured = [
        bytes.fromhex(h) for h in attacker.run(sys.executable, "-c", recorder).stdout.split()
    ]
    assert len(captured) == 10
    rng = random.Random(7)
    forged = encode(
        Heartbeat(77, "dir1", 254, State.STOPPED, Flag.YIELD, 2**62, 10**9, 0, b"\0" * 8), b"w" * 32
    )
    junk = [rng.randbytes(rng.randrange(0, 200)) for _ in range(300)]
    payloads = [forged] * 20 + captured * 5 + junk
    sender = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('10.78.0.1'))\n"
        "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)\n"
        "for line in sys.stdin.read().split():\n"
        f"    s.sendto(bytes.fromhex(line), ('{GROUP}', 6694))\n"
    )
    # From dir1's namespace, so that they arrive at dir2 like dir1's own heartbeats.
    subprocess.run(
        ["ip", "netns", "exec", dir1.ns.name, sys.executable, "-c", sender],
        input="\n".join(p.hex() for p in payloads),
        text=True,
        check=True,
        timeout=60,
    )
    # Serial: noise and replayed frames straight into dir2's end of the cable, by
    # writing to dir1's end (the pty pair carries them across).
    from hapair.core.framing import encode_frame

    with open(lab.tmp / "tty1", "wb", buffering=0) as tty:
        for p in payloads:
            tty.write(encode_frame(p) if p else b"\xa5\x7e\x00")
            tty.write(rng.randbytes(rng.randrange(0, 20)))
    time.sleep(2 * DEADTIME)
    assert lab.masters() == ["dir1"] and lab.holders() == ["dir1"]
    assert dir2.state() == "BACKUP"
    seen = watch.holding(attacked, time.time())
    assert seen.dual == 0 and seen.none == 0 and seen.holders == [["dir1"]], seen
    status = dir2.status()
    assert status is not None
    dropped = status["heartbeats"]["dropped"]  # type: ignore[index]
    assert dropped.get("mac", 0) >= 40 and dropped.get("replay", 0) >= 50, dropped
    assert dir1.proc is not None and dir1.proc.poll() is None
    assert dir2.proc is not None and dir2.proc.poll() is None


def test_vip_interface_down_is_fault(lab: Lab) -> None:
    dir1, dir2 = lab.dirs
    watch = lab.watch()
    down = time.time()
    dir1.ns.ip("link", "set", "eth0", "down")
    wait_for(lambda: dir1.state() == "FAULT" and dir2.holds_vip(), 10)
    assert not dir1.holds_vip()
    time.sleep(0.3)  # the client sees dir2 answer for a while
    dir1.ns.ip("link", "set", "eth0", "up")
    wait_for(lambda: lab.holders() == ["dir1"], 10)  # healthy again, and it preempts
    wait_for(lambda: lab.client_mac_for_vip() == dir1.mac(), 5)
    seen = watch.holding(down, time.time() + 0.3)
    print(f"client's view from dir1's eth0 going down until it is back: {seen}")
    assert seen.dual == 0 and seen.none <= DEADTIME + 0.5, seen
    assert seen.holders[-2:] == [["dir2"], ["dir1"]], seen


def test_all_links_cut_only_the_node_that_reaches_the_gateway_serves(
    lab_factory: Callable[..., Lab],
) -> None:
    gateway = "10.77.0.10"  # the client's address stands in for the gateway
    lab = lab_factory()
    for d in lab.dirs:
        with open(d.config, "a") as f:
            f.write(
                f'\n[[track]]\ntype = "icmp"\ntarget = "{gateway}"\ninterval = "200ms"\n'
                f'timeout = "150ms"\nrise = 2\nfall = 2\n'
            )
    lab = started(lab)
    dir1, dir2 = lab.dirs
    watch = lab.watch()
    # The gateway stops answering dir1 (its replies to dir1 vanish); then the links go.
    lab.client.ip("route", "add", "blackhole", "10.77.0.1/32")
    wait_for(lambda: dir1.state() == "FAULT" and lab.holders() == ["dir2"], 10)
    cut = time.time()
    dir1.ns.ip("link", "set", "eth1", "down")
    lab.cut_cable()
    time.sleep(4 * DEADTIME)
    assert lab.holders() == ["dir2"] and dir1.state() == "FAULT"
    wait_for(lambda: lab.client_mac_for_vip() == dir2.mac(), 5)
    seen = watch.holding(cut, time.time())
    print(f"client's view with every link cut: {seen}")
    assert seen.dual == 0 and seen.none == 0 and seen.holders == [["dir2"]], seen


def test_a_frozen_master_that_wakes_steps_down_at_once(lab_factory: Callable[..., Lab]) -> None:
    lab = started(lab_factory(preempt=False))
    dir1, dir2 = lab.dirs
    watch = lab.watch()
    frozen = time.time()
    dir1.signal(signal.SIGSTOP)
    wait_for(lambda: dir2.holds_vip(), 10)
    time.sleep(0.5)
    dir1.signal(signal.SIGCONT)
    woke = time.monotonic()
    single = wait_for(lambda: lab.holders() == ["dir2"], 5, step=0.01)
    print(f"two VIP holders for {single * 1000:.0f} ms after the frozen master woke")
    assert single < 1.0
    time.sleep(1.0)
    assert lab.holders() == ["dir2"] and lab.masters() == ["dir2"]
    assert time.monotonic() - woke < 10
    # A frozen agent cannot take the VIP off: its kernel answers beside dir2's from the
    # takeover until the agent wakes (0.5 s here) and steps down.
    seen = watch.holding(frozen, time.time())
    print(f"client's view: {seen}")
    assert seen.none == 0 and seen.dual <= 0.5 + single + 0.2, seen
    assert seen.holders[-1] == ["dir2"], seen
    assert "stalled" in dir1.log.read_text()


def test_sighup_reload_keeps_state_and_refuses_a_bad_config(lab: Lab) -> None:
    dir2 = lab.dirs[1]
    watch = lab.watch()
    reloaded = time.time()
    good = dir2.config.read_text()
    dir2.config.write_text(good.replace("priority = 100", "priority = 999"))
    dir2.signal(signal.SIGHUP)
    wait_for(lambda: "reload of" in dir2.log.read_text(), 5)
    assert "node.priority" in dir2.log.read_text()
    assert lab.masters() == ["dir1"] and dir2.state() == "BACKUP"  # running on as before
    # A valid change applies in place: priority 200 outranks dir1, which hands over.
    dir2.config.write_text(good.replace("priority = 100", "priority = 200"))
    dir2.signal(signal.SIGHUP)
    wait_for(lambda: lab.holders() == ["dir2"], 10)
    assert lab.masters() == ["dir2"]
    status = dir2.status()
    assert status is not None and status["priority"] == 200
    seen = watch.holding(reloaded, time.time() + 0.3)  # the new holder's answers too
    assert seen.dual == 0 and seen.none < 1.0 and seen.holders[-1] == ["dir2"], seen
    assert dir2.proc is not None and dir2.proc.poll() is None
