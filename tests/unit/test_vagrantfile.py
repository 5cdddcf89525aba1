"""The Vagrantfile, without Vagrant (none here): Ruby parses it, and run against a stand-in
for Vagrant (tests/vagrant_stub.rb) it defines exactly the hosts of lab/topology.py's
TOPOLOGY, each on the networks it is on in the mode, with TOPOLOGY's addresses, provisioned
by scripts/setup and `scripts/lab provision HOST --mode MODE`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import lab.topology

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
VAGRANTFILE = ROOT / "Vagrantfile"
STUB = ROOT / "tests" / "vagrant_stub.rb"


def ruby() -> str:
    found = shutil.which("ruby")
    if found is None:
        pytest.fail("no ruby: scripts/setup installs it")
    return found


def vagrant(mode: str, dot: Path) -> subprocess.CompletedProcess[str]:
    """The Vagrantfile run against the stub, as `LAB_MODE=mode vagrant ...` would run it."""
    env = os.environ | {"LAB_MODE": mode, "VAGRANT_DOTFILE_PATH": str(dot)}
    return subprocess.run(
        [ruby(), "-r", str(STUB), str(VAGRANTFILE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ruby_parses_the_vagrantfile() -> None:
    out = subprocess.run([ruby(), "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (0, "Syntax OK"), out.stderr


def test_the_vagrantfile_writes_no_address_of_its_own() -> None:
    text = VAGRANTFILE.read_text()
    assert re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", text) == ["255.255.255.255"]  # a mask
    assert lab.topology.VIP not in text


@pytest.mark.parametrize("mode", lab.topology.MODES)
def test_the_vagrantfile_defines_the_topologys_hosts_on_their_networks(
    mode: str, tmp_path: Path
) -> None:
    out = vagrant(mode, tmp_path)
    assert out.returncode == 0, out.stderr
    record: dict[str, Any] = json.loads(out.stdout)
    assert record["version"] == "2"
    assert record["global"]["box"] == "debian/bookworm64"
    assert [(s, d, o["type"]) for s, d, o in record["global"]["synced_folders"]] == [
        (".", "/vagrant", "rsync")
    ]
    machines = record["machines"]
    assert list(machines) == list(lab.topology.HOSTS)

    lans: dict[str, set[str]] = {}  # network name in the providers -> lab networks on it
    for host, machine in machines.items():
        role = lab.topology.HOSTS[host]["role"]
        assert machine["hostname"] == host
        networks = machine["networks"]
        assert {n["type"] for n in networks} == {"private_network"}
        # TOPOLOGY's addresses, on the networks the host is on in this mode.
        got = {n["ip"]: n for n in networks}
        want = {
            lab.topology.HOSTS[host][net]: net for net in lab.topology.host_networks(host, mode)
        }
        assert sorted(got) == sorted(want), host
        if role == "real":
            assert list(want.values()) == ["private" if mode == "nat" else "public"]
        if role == "director":
            nets = {"public", "heartbeat", "management"} | ({"private"} if mode == "nat" else set())
            assert set(want.values()) == nets
        for address, n in got.items():
            network = want[address]
            assert n["netmask"] == "255.255.255.0"
            assert n["libvirt__dhcp_enabled"] is False
            lan = n["libvirt__network_name"]
            lans.setdefault(lan, set()).add(network)
            if network == "management":  # reaches the Vagrant host, .1: one per director
                assert lan == f"hapair-management-{host}" and "virtualbox__intnet" not in n
                assert n["libvirt__forward_mode"] == "none"
                assert (
                    lab.topology.mgmt_root_address(host).rsplit(".", 1)[0]
                    == address.rsplit(".", 1)[0]
                )
            else:  # the VMs alone, on one network per lab network
                assert lan == n["virtualbox__intnet"] == f"hapair-{network}"
                assert n["libvirt__forward_mode"] == "veryisolated"

        for provider in ("libvirt", "virtualbox"):
            settings = machine["providers"][provider]
            assert settings["memory"] >= 512 and settings["cpus"] >= 1, (host, settings)

        steps = machine["provisioners"]
        names = ["setup", "authkey", "lab"] if role == "director" else ["setup", "lab"]
        assert [s["name"] for s in steps] == names
        setup, run = steps[0], steps[-1]
        assert setup["type"] == run["type"] == "shell"
        assert setup["inline"] == "bash /vagrant/scripts/setup --vm"
        assert run["inline"].startswith(f"bash /vagrant/scripts/lab provision {host} --mode {mode}")
        assert setup["env"] == run["env"] == {"HAPAIR_VENV": "/opt/hapair-venv"}
        if role == "director":
            key = tmp_path / "hapair-lab-authkey"
            assert steps[1] == {
                "name": "authkey",
                "type": "file",
                "source": str(key),
                "destination": "/tmp/hapair-lab-authkey",
            }
            assert "--authkey /tmp/hapair-lab-authkey" in run["inline"]
            assert "--serial" not in run["inline"]  # UDP heartbeats only in the VMs

    assert all(len(nets) == 1 for nets in lans.values()), lans


def test_the_directors_key_is_made_once_private(tmp_path: Path) -> None:
    assert vagrant("dr", tmp_path).returncode == 0
    key = tmp_path / "hapair-lab-authkey"
    first = key.read_bytes()
    assert len(first) == 32 and key.stat().st_mode & 0o777 == 0o600
    assert vagrant("nat", tmp_path).returncode == 0
    assert key.read_bytes() == first


def test_an_unknown_mode_stops_the_vagrantfile(tmp_path: Path) -> None:
    out = vagrant("bogus", tmp_path)
    assert out.returncode != 0 and out.stdout == ""
    assert "python3 -m lab topology --mode bogus failed" in out.stderr
    assert "invalid choice: 'bogus'" in out.stderr
