"""`hapair check`'s warnings (config/risks.py): valid but risky configs are said so on
standard error, with what to change, and still exit 0; the example configs give none."""

from __future__ import annotations

from pathlib import Path

import pytest
from hapair_cli import hapair
from test_cli import ETC

from hapair.config import parse
from hapair.config.risks import risks

pytestmark = pytest.mark.unit

BASE = """
[node]
name = "lvs1"
priority = 150

[cluster]
id = 51
auth_key_file = "{key}"
interval = "200ms"
deadtime = "{deadtime}"

[[cluster.links]]
type = "udp"
interface = "eth1"
group = "239.0.0.51"
"""
SERIAL = """
[[cluster.links]]
type = "serial"
device = "/dev/ttyS1"
"""
NAT = """
[[services]]
name = "mail"
protocol = "tcp"
address = "10.0.0.100"
port = 25
forward = "nat"

[[services.real_servers]]
address = "10.1.0.11"
port = 25
"""
MONITOR = """
[monitor]
listen = "{listen}"
tls_cert = "monitor.crt"
tls_key = "monitor.key"
users_file = "users"
"""


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "authkey"
    path.write_bytes(bytes(32))
    path.chmod(0o600)
    return path


def said(text: str, forwarding: bool | None = None) -> list[str]:
    return [str(p) for p in risks(parse(text), forwarding)]


@pytest.mark.parametrize(
    ("deadtime", "extra", "warned"),
    [("1s", "", True), ("1990ms", "", True), ("2s", "", False), ("1s", SERIAL, False)],
)
def test_a_single_link_needs_ten_intervals_of_deadtime(
    key: Path, deadtime: str, extra: str, warned: bool
) -> None:
    warnings = said(BASE.format(key=key, deadtime=deadtime) + extra)
    if warned:
        assert len(warnings) == 1 and warnings[0].startswith("cluster.deadtime: "), warnings
        assert "single link" in warnings[0] and "at least 10 intervals (2s)" in warnings[0]
    else:
        assert warnings == []


@pytest.mark.parametrize(
    ("sysctl", "forwarding", "warned"),
    [
        ("", None, "is not set"),
        ("", False, "is off on this host"),
        ("", True, None),
        ("\n[sysctl]\nip_forward = true\n", False, None),
        ("\n[sysctl]\nip_forward = false\n", None, "is not set"),
    ],
)
def test_nat_needs_forwarding(
    key: Path, sysctl: str, forwarding: bool | None, warned: str | None
) -> None:
    text = BASE.format(key=key, deadtime="1s") + SERIAL + NAT + sysctl
    warnings = said(text, forwarding)
    if warned is None:
        assert warnings == []
    else:
        assert warnings == [
            "services.0.forward: NAT: the real servers' replies are routed through the "
            f"director, but IP forwarding {warned}; set [sysctl] ip_forward = true"
        ]


@pytest.mark.parametrize(
    ("listen", "warned"),
    [("0.0.0.0:8443", True), ("[::]:8443", True), ("198.18.1.2:8443", False)],
)
def test_a_monitor_on_every_address(key: Path, listen: str, warned: bool) -> None:
    text = BASE.format(key=key, deadtime="1s") + SERIAL + MONITOR.format(listen=listen)
    warnings = said(text)
    assert bool(warnings) == warned, warnings
    if warned:
        assert warnings[0].startswith(f"monitor.listen: {listen} listens on every address")


def test_check_warns_on_standard_error_and_exits_0(key: Path, tmp_path: Path) -> None:
    path = tmp_path / "risky.toml"
    path.write_text(BASE.format(key=key, deadtime="1s") + MONITOR.format(listen="0.0.0.0:8443"))
    done = hapair("check", "-c", str(path))
    assert (done.returncode, done.stdout) == (0, "ok\n")
    lines = done.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["cluster.deadtime", "monitor.listen"]
    assert all(line.startswith("warning: ") for line in lines), lines


@pytest.mark.parametrize("name", sorted(p.name for p in ETC.glob("*.toml")))
def test_the_examples_give_no_warning(name: str, key: Path, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text((ETC / name).read_text())
    (tmp_path / "authkey").write_bytes(key.read_bytes())
    done = hapair("check", "-c", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
