"""Footprint benchmark: what one idle director costs, against keepalived in the same run.

A network namespace with a veth pair; on v0, a node with one UDP multicast heartbeat
link and one VIP (no peer: it becomes MASTER). For each run: the agent is started, the
first heartbeat is captured on the wire (an AF_PACKET socket on the veth's other end),
the node idles for --idle seconds, and the proportional set size (PSS, from
/proc/PID/smaps_rollup) of each of its processes is read, with what they would weigh alone
(anonymous memory and each file's pages once: PSS moves with whatever else maps the same
libraries), then it is stopped. keepalived with one VRRP instance on the same veth is
measured the same way (its first VRRP advertisement, its two processes).

Targets (issue: a lean footprint): the VIP guard <= 8 MB PSS, the whole node <= 40 MB
PSS, the first heartbeat <= 0.4 s after exec. A node that probes real servers has one
process more, the checker (hapair/checker/): it is measured the same way with one
service and one TCP probe ("hapair, probing"), and its PSS is in that node's figure.

Root, `ip`; keepalived for the baseline (scripts/setup installs it; without it the
baseline is skipped). Exit 0 when the benchmark ran, 1 when it broke.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORT = 6999
GROUP = "239.0.0.99"
VRRP = 112  # IP protocol


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def alone_mb(pids: list[int]) -> float:
    """What `pids` would weigh with nothing else on the machine mapping their files: their
    anonymous memory, plus each file's resident pages once. PSS splits a file's pages among
    every process that maps them, so the same node measured 40.3 and 48.2 MB PSS in one day
    as other Pythons came and went (2026-12-02); this figure does not move with them."""
    anon = 0
    files: dict[str, int] = {}
    for pid in pids:
        name, rss, mine = "", 0, {}
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head, _, rest = line.partition(" ")
            if not head.endswith(":"):  # a mapping's first line: range perms offset dev inode path
                name = rest.split(maxsplit=4)[4].strip() if len(rest.split()) > 4 else ""
            elif head == "Rss:":
                rss = int(rest.split()[0])
            elif head == "Anonymous:":
                anonymous = int(rest.split()[0])
                anon += anonymous
                if name and not name.startswith("["):
                    mine[name] = mine.get(name, 0) + rss - anonymous
        for name, kb in mine.items():
            files[name] = max(files.get(name, 0), kb)
    return (anon + sum(files.values())) / 1024


def family(pid: int) -> list[int]:
    """`pid` and its descendants."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            out += family(int(child))
    return out


CAPTURE = """
import socket, struct, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
sock.bind(("v1", 0))
sock.settimeout(20)
print("ready", flush=True)
while True:
    packet = sock.recv(2048)[14:]
    ihl = (packet[0] & 15) * 4
    udp = packet[9] == 17 and struct.unpack("!H", packet[ihl + 2 : ihl + 4])[0] == int(sys.argv[1])
    if udp or (sys.argv[1] == "vrrp" and packet[9] == 112):
        print(time.monotonic(), flush=True)
        break
"""


def first_packet(ns: str, what: str, start: Callable[[], object]) -> float:
    """Seconds from start() to the first heartbeat (`what`: its UDP port) or VRRP
    advertisement (`vrrp`) on v1, as a capture in the namespace saw it (the monotonic
    clock is the machine's, in every namespace)."""
    capture = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CAPTURE, what],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert capture.stdout is not None
    try:
        if capture.stdout.readline() != "ready\n":
            raise RuntimeError("the capture did not start")
        began = time.monotonic()
        start()
        return float(capture.stdout.readline()) - began
    finally:
        capture.kill()
        capture.wait()


def hapair_config(tmp: Path, probing: bool = False) -> Path:
    key = tmp / "authkey"
    key.write_bytes(secrets.token_bytes(32))
    key.chmod(0o600)
    config = tmp / ("fp-probing.toml" if probing else "fp.toml")
    service = """
[[services]]
name = "web"
protocol = "tcp"
address = "10.99.0.100"
port = 80
forward = "dr"
probe = { type = "tcp", interval = "1s", timeout = "1s" }
real_servers = [{ address = "10.99.0.1" }]
"""
    config.write_text(f"""
[node]
name = "fp1"
priority = 100
control_socket = "{tmp}/fp1.sock"
state_dir = "{tmp}"

[cluster]
id = 99
auth_key_file = "{key}"

[[cluster.links]]
type = "udp"
interface = "v0"
group = "{GROUP}"
port = {PORT}

[[vips]]
address = "10.99.0.100/24"
interface = "v0"
{service if probing else ""}""")
    return config


def keepalived_config(tmp: Path) -> Path:
    config = tmp / "keepalived.conf"
    config.write_text("""
global_defs {
    router_id fp1
}
vrrp_instance fp {
    state BACKUP
    interface v0
    virtual_router_id 99
    priority 100
    advert_int 1
    virtual_ipaddress {
        10.99.0.100/24
    }
}
""")
    return config


Sizes = dict[int, tuple[str, float]]  # pid -> (comm, PSS in MB)


def measure(ns: str, argv: list[str], what: str, idle: float) -> tuple[float, Sizes, float]:
    proc: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        proc.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    try:
        first = first_packet(ns, what, start)
        time.sleep(idle)
        pids = family(proc[0].pid)
        sizes: Sizes = {
            pid: (Path(f"/proc/{pid}/comm").read_text().strip(), pss_mb(pid)) for pid in pids
        }
        alone = alone_mb(pids)
    finally:
        for p in proc:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return first, sizes, alone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds before measuring")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/footprint: run as root (network namespaces)", file=sys.stderr)
        return 1
    ns = f"hpfp{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="hapair-footprint-"))
    try:
        sh("ip", "netns", "add", ns)
        for cmd in (
            ("link", "add", "v0", "type", "veth", "peer", "name", "v1"),
            ("link", "set", "lo", "up"),
            ("link", "set", "v0", "up"),
            ("link", "set", "v1", "up"),
            ("addr", "add", "10.99.0.1/24", "dev", "v0"),
        ):
            sh("ip", "-n", ns, *cmd)
        hapair = [sys.executable, "-m", "hapair", "run", "-c", str(hapair_config(tmp))]
        probing = [sys.executable, "-m", "hapair", "run", "-c", str(hapair_config(tmp, True))]
        rows: dict[str, list[tuple[float, Sizes, float]]] = {"hapair": [], "hapair, probing": []}
        keepalived = shutil.which("keepalived")
        if keepalived:
            rows["keepalived"] = []
            k_argv = [keepalived, "-n", "-l", "-D", "-f", str(keepalived_config(tmp))]
            k_argv += ["-p", str(tmp / "k.pid"), "-r", str(tmp / "v.pid")]
        for _ in range(args.runs):
            rows["hapair"].append(measure(ns, hapair, str(PORT), args.idle))
            rows["hapair, probing"].append(measure(ns, probing, str(PORT), args.idle))
            if keepalived:
                rows["keepalived"].append(measure(ns, k_argv, "vrrp", args.idle))
        for name, runs in rows.items():
            firsts = [first for first, _, _ in runs]
            totals = [sum(mb for _, mb in sizes.values()) for _, sizes, _ in runs]
            print(
                f"{name}: first packet {statistics.median(firsts):.3f} s after exec (median of "
                f"{len(runs)}, worst {max(firsts):.3f}); PSS in all {statistics.median(totals):.1f}"
                f" MB (median), by process of the last run: "
                + ", ".join(f"{comm} {mb:.1f} MB" for comm, mb in runs[-1][1].values())
                + f"; alone {statistics.median(alone for _, _, alone in runs):.1f} MB (median; "
                "anonymous memory and each file's pages once, as if nothing else shared them)"
            )
        node = statistics.median(sum(mb for _, mb in s.values()) for _, s, _ in rows["hapair"])
        guard = max(
            (
                mb
                for _, s, _ in rows["hapair"]
                for comm, mb in s.values()
                if comm == "hapair-vipguard"
            ),
            default=0.0,
        )
        first = statistics.median(f for f, _, _ in rows["hapair"])
        probing_node = statistics.median(
            sum(mb for _, mb in s.values()) for _, s, _ in rows["hapair, probing"]
        )
        checker = statistics.median(
            sum(mb for comm, mb in s.values() if comm == "hapair-checker")
            for _, s, _ in rows["hapair, probing"]
        )
        print(
            f"probing node PSS: {probing_node:.2f} MB, of which the checker {checker:.2f} MB"
            " (median)"
        )
        for what, value, target in (
            ("VIP guard PSS", guard, 8.0),
            ("node PSS", node, 40.0),
            ("first heartbeat", first, 0.4),
        ):
            print(
                f"{what}: {value:.2f} (target <= {target}): {'PASS' if value <= target else 'MISS'}"
            )
        if keepalived:
            k_node = statistics.median(
                sum(mb for _, mb in s.values()) for _, s, _ in rows["keepalived"]
            )
            print(f"node PSS hapair / keepalived: {node / k_node:.2f}x")
        return 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
