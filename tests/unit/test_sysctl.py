"""[sysctl]: only the configured keys are written, as the kernel reads them; a key the
kernel lacks (no IPVS yet) is a clear problem, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from hapair import sysctl
from hapair.config.model import Sysctl

pytestmark = pytest.mark.unit


def proc(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, value in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return tmp_path


def test_only_configured_keys_are_written(tmp_path: Path) -> None:
    root = proc(
        tmp_path,
        {
            "net/ipv4/ip_forward": "0",
            "net/ipv6/conf/all/forwarding": "0",
            "net/ipv4/vs/conntrack": "0",
            "net/ipv4/vs/expire_nodest_conn": "0",
            "net/ipv4/vs/sync_threshold": "3\t50",
        },
    )
    cfg = Sysctl(ip_forward=True, expire_nodest_conn=True, sync_threshold=(2, 20))
    assert sysctl.apply(cfg, ipv6=False, root=root) == []
    assert (root / "net/ipv4/ip_forward").read_text() == "1\n"
    assert (root / "net/ipv6/conf/all/forwarding").read_text() == "0\n"  # no IPv6 service
    assert (root / "net/ipv4/vs/expire_nodest_conn").read_text() == "1\n"
    assert (root / "net/ipv4/vs/sync_threshold").read_text() == "2\t20\n"
    assert (root / "net/ipv4/vs/conntrack").read_text() == "0\n"  # not configured: untouched
    sysctl.apply(cfg, ipv6=True, root=root)
    assert (root / "net/ipv6/conf/all/forwarding").read_text() == "1\n"


def test_nothing_configured_writes_nothing(tmp_path: Path) -> None:
    assert sysctl.wanted(None, ipv6=True) == {}
    assert sysctl.wanted(Sysctl(), ipv6=True) == {}


def test_a_missing_key_is_reported(tmp_path: Path) -> None:
    problems = sysctl.apply(Sysctl(conntrack=True, sync_refresh_period=1.5), False, tmp_path)
    assert len(problems) == 2
    assert "net.ipv4.vs.conntrack" in problems[0]
    assert sysctl.wanted(Sysctl(sync_refresh_period=1.5), False) == {
        "net/ipv4/vs/sync_refresh_period": "2"
    }
