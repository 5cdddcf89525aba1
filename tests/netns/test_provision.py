"""`scripts/lab provision HOST`, the Vagrant VMs' provisioning, run in namespaces that
stand in for the VMs: each on a bridge per network, holding its addresses from TOPOLOGY on
interfaces named unlike the lab's (vnet3, vnet2, ...: the interfaces must be found by
address), provisioned with --root TMP --no-start (no systemd here). The directors'
configs pass `hapair check` and name the interfaces found; a second run changes nothing;
a real server gets its VIP and ARP settings (dr, tun) or its route (nat) in its own
namespace and serves from its unit's command; two provisioned directors, started with
their units' command, elect lvs1 and fail over to lvs2."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from topology import Bridge, Netns

import lab.topology
from hapair import control_client
from lab.config import write_authkey
from lab.shell import LabError, sh, stop, wait_for

pytestmark = pytest.mark.netns


HOSTS: dict[str, dict[str, Any]] = lab.topology.HOSTS


@dataclass
class Machine:
    """A namespace standing in for lab host `name`'s VM."""

    name: str
    ns: Netns
    root: Path  # provision's --root
    interfaces: dict[str, str]  # network -> the interface holding the host's address

    def provision(self, mode: str, *extra: str, check: bool = True) -> str:
        cmd = [sys.executable, "-m", "lab", "provision", self.name, "--mode", mode]
        proc = self.ns.run(
            *cmd, "--root", str(self.root), "--no-start", *extra, check=False, timeout=120
        )
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    @property
    def log(self) -> Path:
        """Where what `units` starts in it logs."""
        return self.root.parent / f"{self.name}.log"

    def unit(self, name: str) -> dict[str, list[str]]:
        """The unit file's Exec lines, {key: [command line, ...]}."""
        text = (self.root / "etc" / "systemd" / "system" / name).read_text()
        lines: dict[str, list[str]] = {}
        for line in text.splitlines():
            key, eq, value = line.partition("=")
            if eq and key.startswith("Exec"):
                lines.setdefault(key, []).append(value)
        return lines

    def files(self) -> dict[str, tuple[bytes, int, int]]:
        """Every file under its root: content, mode, mtime."""
        out = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                out[str(path)] = (path.read_bytes(), st.st_mode, st.st_mtime_ns)
        return out


@pytest.fixture
def machines(
    netns_factory: Callable[[str], Netns],
    bridge_factory: Callable[..., Bridge],
    tmp_path: Path,
) -> Callable[..., Machine]:
    """`make(host, mode, without=())` -> a Machine on the networks `host` is on in `mode`
    (one bridge per network, shared by the test's machines), but those in `without`."""
    bridges: dict[str, Bridge] = {}

    def make(host: str, mode: str, without: tuple[str, ...] = ()) -> Machine:
        ns = netns_factory(host)
        interfaces = {}
        networks = lab.topology.host_networks(host, mode)
        for i, (network, address) in enumerate(networks.items()):
            if network in without:
                continue
            ifname = f"vnet{len(networks) - i}"  # the lab's eth0 is vnet3 here, ...
            if network not in bridges:
                bridges[network] = bridge_factory(network[:3])
            bridges[network].attach(ns, ifname, f"{address}/{lab.topology.PREFIXLEN}")
            interfaces[network] = ifname
        root = tmp_path / host
        root.mkdir()
        return Machine(host, ns, root, interfaces)

    return make


@pytest.fixture
def authkey(tmp_path: Path) -> Path:
    return write_authkey(tmp_path / "pair-key")


@pytest.fixture
def units() -> Iterator[Callable[[Machine, str], subprocess.Popen[bytes]]]:
    """`start(machine, unit)`: what systemd would run for the unit (its ExecStart), in the
    machine's namespace, logging to `machine.log`; at teardown every process in those
    namespaces is killed (an agent's helpers too)."""
    started: list[tuple[Machine, subprocess.Popen[bytes]]] = []

    def start(machine: Machine, unit: str) -> subprocess.Popen[bytes]:
        argv = shlex.split(machine.unit(unit)["ExecStart"][0])
        with open(machine.log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", machine.ns.name, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ | {"HAPAIR_LOG": "INFO"},
            )
        started.append((machine, proc))
        return proc

    yield start
    for _, proc in started:
        stop(proc)
    for machine, _ in started:
        kill_all_in(machine.ns)


def kill_all_in(ns: Netns) -> None:
    for pid in sh("ip", "netns", "pids", ns.name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def addresses(ns: Netns, dev: str) -> list[str]:
    links = json.loads(ns.ip("-j", "-4", "addr", "show", "dev", dev).stdout)
    return [f"{a['local']}/{a['prefixlen']}" for link in links for a in link["addr_info"]]


def sysctl(ns: Netns, *keys: str) -> list[str]:
    return ns.run("sysctl", "-n", *keys).stdout.split()


def arp_sysctls(ns: Netns) -> list[str]:
    """net.ipv4.conf.all.arp_ignore and arp_announce in `ns`."""
    return sysctl(ns, "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce")


# --- directors ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", lab.topology.MODES)
def test_director_configs_name_the_interfaces_found_and_a_second_run_changes_nothing(
    mode: str, machines: Callable[..., Machine], authkey: Path
) -> None:
    pair = [machines(d, mode) for d in lab.topology.DIRECTORS]
    for m in pair:
        out = m.provision(mode, "--authkey", str(authkey))
        assert f"public {HOSTS[m.name]['public']} on {m.interfaces['public']}" in out, out
        etc = m.root / "etc" / "hapair"
        config = etc / "hapair.toml"
        check = sh(sys.executable, "-m", "hapair", "check", "-c", str(config), check=False)
        assert (check.returncode, check.stdout) == (0, "ok\n"), check.stdout
        cfg = tomllib.loads(config.read_text())

        # One pair file: both directors' entries, this one's as its own.
        names = [e["name"] for e in cfg["nodes"]]
        assert names == list(lab.topology.DIRECTORS) and "node" not in cfg, cfg
        node = cfg["nodes"][names.index(m.name)]
        assert node["priority"] == HOSTS[m.name]["priority"]
        assert cfg["cluster"]["links"] == [
            {"type": "udp", "interface": m.interfaces["heartbeat"], "group": lab.topology.GROUP}
            | {"port": lab.topology.HB_PORT}
        ]  # no serial link unless --serial names a device
        vips = {v["address"]: v["interface"] for v in cfg["vips"]}
        expected = {f"{lab.topology.VIP}/24": m.interfaces["public"]}
        if mode == "nat":
            expected[f"{lab.topology.NAT_GATEWAY}/24"] = m.interfaces["private"]
        assert vips == expected
        assert cfg["sync"]["interface"] == m.interfaces["heartbeat"]
        for entry in cfg["nodes"]:  # the push between the directors goes there
            where = f"{HOSTS[entry['name']]['management']}:{lab.topology.MONITOR_PORT}"
            assert entry["monitor_listen"] == where
        assert "listen" not in cfg["monitor"]
        servers = {rs["address"] for s in cfg["services"] for rs in s["real_servers"]}
        assert servers == {lab.topology.real_address(mode, rs) for rs in lab.topology.REALS}
        assert {s["forward"] for s in cfg["services"]} == {mode}
        for key in ("control_socket", "state_dir"):
            assert node[key].startswith(f"{m.root}/"), node[key]

        assert (etc / "authkey").read_bytes() == authkey.read_bytes()
        for private in ("authkey", "monitor.key", "users", "monitor-password"):
            assert (etc / private).stat().st_mode & 0o777 == 0o600, private
        unit = m.unit("hapair.service")
        command = f"{sys.executable} -m hapair run -c {config} --node {m.name}"
        assert unit["ExecStart"] == [command], unit
        assert (
            os.readlink(m.root / "usr/local/bin/hapair") == f"{Path(sys.executable).parent}/hapair"
        )

    for m in pair:
        before = m.files()
        out = m.provision(mode, "--authkey", str(authkey))
        assert "nothing changed" in out and "wrote" not in out, out
        assert m.files() == before


def test_a_serial_device_adds_the_serial_link(
    machines: Callable[..., Machine], authkey: Path
) -> None:
    m = machines("lvs2", "dr")
    m.provision("dr", "--authkey", str(authkey), "--serial", "/dev/ttyS1")
    config = m.root / "etc/hapair/hapair.toml"
    links = tomllib.loads(config.read_text())["cluster"]["links"]
    assert [(lk["type"], lk.get("device")) for lk in links] == [
        ("udp", None),
        ("serial", "/dev/ttyS1"),
    ]
    assert sh(sys.executable, "-m", "hapair", "check", "-c", str(config)).stdout == "ok\n"


def test_a_missing_address_or_key_is_refused_before_anything_is_written(
    machines: Callable[..., Machine], authkey: Path
) -> None:
    off = machines("lvs1", "nat", without=("heartbeat",))
    out = off.provision("nat", "--authkey", str(authkey), check=False)
    assert f"no interface here holds {HOSTS['lvs1']['heartbeat']} (heartbeat)" in out, out
    assert "FAILED" in out and list(off.root.iterdir()) == []

    keyless = machines("lvs2", "nat")
    out = keyless.provision("nat", check=False)
    assert "--authkey FILE" in out and "FAILED" in out, out
    assert not (keyless.root / "etc/hapair/hapair.toml").exists()

    # Not a root prefix's place to start anything; nor a client's to have a serial line.
    cmd = [sys.executable, "-m", "lab", "provision", "client", "--root", str(off.root)]
    assert "--root needs --no-start" in sh(*cmd, check=False).stdout
    cmd = [*cmd, "--no-start", "--serial", "/dev/ttyS1"]
    assert "--serial is for the directors" in sh(*cmd, check=False).stdout


def test_two_provisioned_directors_elect_lvs1_and_fail_over_to_lvs2(
    machines: Callable[..., Machine],
    authkey: Path,
    units: Callable[[Machine, str], subprocess.Popen[bytes]],
) -> None:
    pair = [machines(d, "dr") for d in lab.topology.DIRECTORS]
    for m in pair:
        m.provision("dr", "--authkey", str(authkey))
    lvs1, lvs2 = pair
    for m in pair:
        units(m, "hapair.service")

    def status(m: Machine) -> dict[str, Any] | None:
        sock = m.root / "run" / "hapair" / f"{m.name}.sock"
        try:
            reply = control_client.request(sock, {"cmd": "status"}, timeout=5)
        except (control_client.NoAgent, OSError):
            return None
        return reply.get("result") if reply.get("ok") else None

    def states() -> tuple[str | None, ...]:
        return tuple(None if (s := status(m)) is None else s["state"] for m in pair)

    def logs() -> str:
        return "\n".join(m.log.read_text(errors="replace")[-3000:] for m in pair)

    vip = f"{lab.topology.VIP}/24"
    try:
        wait_for("lvs1 MASTER, lvs2 BACKUP", lambda: states() == ("MASTER", "BACKUP"), 30)
    except LabError:
        raise AssertionError(f"states {states()}\n{logs()}") from None
    assert vip in addresses(lvs1.ns, lvs1.interfaces["public"])
    assert vip not in addresses(lvs2.ns, lvs2.interfaces["public"])
    s2 = status(lvs2)
    assert s2 is not None and s2["peer"]["alive"], s2
    assert [lk["name"] for lk in s2["peer"]["links"]] == [lvs2.interfaces["heartbeat"]]

    # lvs1's machine dies: every process in it killed, its links down.
    kill_all_in(lvs1.ns)
    for ifname in lvs1.interfaces.values():
        lvs1.ns.ip("link", "set", ifname, "down")
    wait_for("lvs2 MASTER", lambda: states()[1] == "MASTER", 15)
    wait_for("the VIP on lvs2", lambda: vip in addresses(lvs2.ns, lvs2.interfaces["public"]), 5)


# --- real servers, ops, client -----------------------------------------------------------


def test_a_dr_real_server_holds_the_vip_on_lo_hidden_from_arp_and_serves(
    machines: Callable[..., Machine],
    units: Callable[[Machine, str], subprocess.Popen[bytes]],
) -> None:
    rs, client = machines("rs1", "dr"), machines("client", "dr")
    host_sysctls = [
        Path(f"/proc/sys/net/ipv4/conf/all/{k}").read_text() for k in ("arp_ignore", "arp_announce")
    ]
    out = rs.provision("dr")
    assert f"public {HOSTS['rs1']['public']} on {rs.interfaces['public']}" in out, out
    assert addresses(rs.ns, "lo") == ["127.0.0.1/8", f"{lab.topology.VIP}/32"]
    assert arp_sysctls(rs.ns) == ["1", "2"]
    # ... in that namespace alone
    assert host_sysctls == [
        Path(f"/proc/sys/net/ipv4/conf/all/{k}").read_text() for k in ("arp_ignore", "arp_announce")
    ]
    unit = rs.unit("hapair-lab-real.service")
    assert unit["ExecStartPre"] == [
        f"{sys.executable} -m lab provision rs1 --mode dr --net-only"
    ], unit
    assert unit["ExecStart"] == [f"{sys.executable} -m lab _serve-host rs1"], unit

    before = rs.files()
    assert "nothing changed" in rs.provision("dr")
    assert rs.files() == before
    assert addresses(rs.ns, "lo") == ["127.0.0.1/8", f"{lab.topology.VIP}/32"]
    assert "nothing to install" in client.provision("dr")

    # What the unit runs at boot: the network settings again, then the services.
    pre = rs.ns.run(*shlex.split(unit["ExecStartPre"][0]), timeout=60)
    assert "network: VIP" in pre.stdout, pre.stdout
    proc = units(rs, "hapair-lab-real.service")
    wait_for("rs1 ready", lambda: "ready" in rs.log.read_text(), 30)
    assert proc.poll() is None
    address = HOSTS["rs1"]["public"]
    ask = (
        "import smtplib, socket, urllib.request\n"
        f"print(urllib.request.urlopen('http://{address}/', timeout=10).read().decode())\n"
        f"s = smtplib.SMTP({address!r}, 25, timeout=10)\n"
        "print(s.ehlo()[1].split()[0].decode()); s.quit()\n"
        f"c = socket.create_connection(({address!r}, 7), timeout=10)\n"
        "c.sendall(b'hello\\n'); print(c.makefile().readline().strip())\n"
    )
    assert client.ns.run(sys.executable, "-c", ask).stdout.split("\n")[:3] == [
        "rs1",
        "rs1",
        "rs1 hello",
    ]


def test_a_nat_real_server_routes_through_the_nat_gateway(
    machines: Callable[..., Machine],
) -> None:
    rs = machines("rs2", "nat")
    assert list(rs.interfaces) == ["private"]
    for _ in range(2):
        rs.provision("nat")
        routes = json.loads(rs.ns.ip("-j", "route", "show", "default").stdout)
        assert [(r["gateway"], r["dev"]) for r in routes] == [
            (lab.topology.NAT_GATEWAY, rs.interfaces["private"])
        ]
    assert addresses(rs.ns, "lo") == ["127.0.0.1/8"]
    assert arp_sysctls(rs.ns) == ["0", "0"]


def test_a_tun_real_server_takes_the_vip_on_tunl0_or_names_the_missing_ipip(
    machines: Callable[..., Machine],
) -> None:
    rs = machines("rs3", "tun")
    out = rs.provision("tun", check=False)
    if rs.ns.ip("link", "show", "tunl0", check=False).returncode != 0:
        assert "no tunl0 for the tun mode: this kernel has no ipip module" in out, out
        return
    assert "network: VIP" in out, out
    assert addresses(rs.ns, "tunl0") == [f"{lab.topology.VIP}/32"]
    keys = ("all.arp_ignore", "all.arp_announce", "all.rp_filter", "tunl0.rp_filter")
    assert sysctl(rs.ns, *(f"net.ipv4.conf.{k}" for k in keys)) == ["1", "2", "0", "0"]


def test_the_ops_host_receives_alerts_from_its_units_command(
    machines: Callable[..., Machine],
    units: Callable[[Machine, str], subprocess.Popen[bytes]],
) -> None:
    ops, client = machines("ops", "dr"), machines("client", "dr")
    ops.provision("dr")
    unit = ops.unit("hapair-lab-ops.service")
    alerts = ops.root / "var/lib/hapair-lab/alerts.jsonl"
    assert unit["ExecStart"] == [f"{sys.executable} -m lab _serve-host ops --alerts {alerts}"]
    units(ops, "hapair-lab-ops.service")
    wait_for("ops ready", lambda: "ready" in ops.log.read_text(), 30)
    url = f"http://{HOSTS['ops']['public']}:{lab.topology.PAGER_PORT}/alert"
    post = (
        "import json, urllib.request\n"
        "body = json.dumps({'id': 'x1', 'event': 'test', 'node': 'lvs1'}).encode()\n"
        f"r = urllib.request.Request({url!r}, body, {{'Content-Type': 'application/json'}})\n"
        "print(urllib.request.urlopen(r, timeout=10).status)\n"
    )
    assert client.ns.run(sys.executable, "-c", post).stdout.strip() == "200"
    received = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert [(a["channel"], a["id"], a["event"]) for a in received] == [("pager", "x1", "test")]
