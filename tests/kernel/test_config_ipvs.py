"""A pair file's change, applied from one director, reaches both kernels' IPVS tables:
two real agents in the guest running one pair file; `hapair config apply` on dir1 and
`hapair config rollback` on dir2, each read back with ipvsadm on both directors. The
MASTER keeps the VIP and its sync daemon role throughout."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from ipvsadm import ipvs_daemons, ipvs_table
from pair import VIP, Lab, wait_for
from pair_file_lab import config_of, hapair, pair_file_lab_factory, pair_text

from hapair.config import version_of
from lab.config import service

pytestmark = pytest.mark.kernel
__all__ = ["pair_file_lab_factory"]

BEFORE = [{"address": "10.77.0.21", "weight": 2}, {"address": "10.77.0.22", "weight": 1}]
AFTER = [
    {"address": "10.77.0.21", "weight": 2},
    {"address": "10.77.0.22", "weight": 5},
    {"address": "10.77.0.23", "weight": 3},
]
WEB = f"TCP {VIP}:80 wrr"
TIMING = {"interval": 0.5, "deadtime": 3.0, "initdead": 6.0}


def sections(real_servers: list[dict[str, object]]) -> dict[str, object]:
    return {
        "sync": {"interface": "eth1", "sync_id": 77},
        "services": [service("web", VIP, 80, "dr", real_servers, scheduler="wrr")],
    }


def dests(real_servers: list[dict[str, object]]) -> list[tuple[str, str, int]]:
    return [(f"{rs['address']}:80", "Route", int(str(rs["weight"]))) for rs in real_servers]


def test_a_change_reaches_both_ipvs_tables(pair_file_lab_factory: Callable[..., Lab]) -> None:
    lab = pair_file_lab_factory(sections(BEFORE), **TIMING)
    dir1, dir2 = lab.dirs
    for d in lab.dirs:
        assert ipvs_table(d.ns) == {WEB: dests(BEFORE)}, d.name
    wait_for(lambda: any("master sync daemon" in x for x in ipvs_daemons(dir1.ns)), 10)
    wait_for(lambda: config_of(dir1).get("in_sync") is True, 20)
    old = dir1.config.read_text()

    new = lab.tmp / "new.toml"
    new.write_text(pair_text(lab, sections=sections(AFTER), **TIMING))
    done = hapair("config", "apply", str(new), "--socket", str(dir1.socket))
    assert done.returncode == 0, done
    assert "service web: real server 10.77.0.23 added" in done.stdout, done
    assert done.stdout.rstrip().endswith("on dir2, dir1"), done
    for d in lab.dirs:  # the apply answers after both reloads: no waiting
        assert ipvs_table(d.ns) == {WEB: dests(AFTER)}, d.name
        assert d.config.read_text() == new.read_text()
    assert lab.holders() == ["dir1"] and lab.masters() == ["dir1"]
    assert any("master sync daemon" in x for x in ipvs_daemons(dir1.ns))
    assert any("backup sync daemon" in x for x in ipvs_daemons(dir2.ns))
    wait_for(lambda: config_of(dir2).get("in_sync") is True, 20)

    # Rolled back from the other director, to the version both keep.
    done = hapair("config", "rollback", version_of(old), "--socket", str(dir2.socket))
    assert done.returncode == 0, done
    assert done.stdout.rstrip().endswith("on dir1, dir2"), done
    for d in lab.dirs:
        assert ipvs_table(d.ns) == {WEB: dests(BEFORE)}, d.name
        assert d.config.read_text() == old
    assert lab.holders() == ["dir1"]
