"""A pair file's change, applied from one director, reaches both kernels' IPVS tables
and breaks no connection: two real agents in the guest running one pair file, three
real servers (DR), long-lived TCP connections through the MASTER. `hapair config apply`
on dir1 changes the echo service's weights and adds a real server; `hapair config
rollback` on dir2 puts it back. Each step is read with ipvsadm on both directors, and
every connection keeps talking to the server it had (the table is edited in place)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from hapair_cli import hapair
from ipvsadm import ipvs_daemons, ipvs_table
from pair import SLOWDOWN, VIP, Lab, talking_since, wait_for
from pair_file_lab import config_of, pair_file_lab_factory, pair_text
from topology import Netns

from hapair.config import version_of
from lab.config import service
from lab.traffic import Holder, Servers

pytestmark = pytest.mark.kernel
__all__ = ["pair_file_lab_factory"]

CONNECTIONS = 40
BEFORE = {"rs1": 1, "rs2": 1}
AFTER = {"rs1": 3, "rs2": 2, "rs3": 1}
ECHO = f"TCP {VIP}:7 wrr"
TIMING = {"interval": 0.5, "deadtime": 3.0, "initdead": 6.0}


def address(name: str) -> str:
    return f"10.77.0.2{name[-1]}"


def sections(weights: dict[str, int]) -> dict[str, object]:
    reals = [{"address": address(rs), "weight": w} for rs, w in weights.items()]
    return {
        "sync": {"interface": "eth1", "sync_id": 77},
        "services": [service("echo", VIP, 7, "dr", reals, scheduler="wrr")],
    }


def dests(weights: dict[str, int]) -> list[tuple[str, str, int]]:
    return [(f"{address(rs)}:7", "Route", w) for rs, w in weights.items()]


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


def test_a_change_reaches_both_ipvs_tables_and_breaks_no_connection(
    pair_file_lab_factory: Callable[..., Lab],
    netns_factory: Callable[[str], Netns],
    servers: Servers,
) -> None:
    lab = pair_file_lab_factory(sections(BEFORE), **TIMING)
    dir1, dir2 = lab.dirs
    for name in AFTER:  # the VIP on lo, never answered for in ARP
        rs = netns_factory(name)
        lab.public.attach(rs, "eth0", f"{address(name)}/24")
        rs.run("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
        rs.run("sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2")
        rs.ip("addr", "add", f"{VIP}/32", "dev", "lo")
        servers.start(name, rs.name, timeout=30 * SLOWDOWN)
    for d in lab.dirs:
        assert ipvs_table(d.ns) == {ECHO: dests(BEFORE)}, d.name
    wait_for(lambda: any("master sync daemon" in x for x in ipvs_daemons(dir1.ns)), 10)
    wait_for(lambda: config_of(dir1).get("in_sync") is True, 20)
    old = dir1.config.read_text()

    holder = Holder(lab.client.name, VIP, 7, CONNECTIONS, timeout=60 * SLOWDOWN)
    try:
        talking_since(holder, time.time())
        new = lab.tmp / "new.toml"
        new.write_text(pair_text(lab, sections=sections(AFTER), **TIMING))
        applied = time.time()
        done = hapair("config", "apply", str(new), "--socket", str(dir1.socket))
        assert done.returncode == 0, done
        assert "service echo: real server 10.77.0.23 added (weight 1)" in done.stdout, done
        assert done.stdout.rstrip().endswith("on dir2, dir1"), done
        for d in lab.dirs:  # the apply answers after both reloads: no waiting
            assert ipvs_table(d.ns) == {ECHO: dests(AFTER)}, d.name
            assert d.config.read_text() == new.read_text()
        talking_since(holder, applied)
        assert lab.holders() == ["dir1"] and lab.masters() == ["dir1"]
        assert any("master sync daemon" in x for x in ipvs_daemons(dir1.ns))
        assert any("backup sync daemon" in x for x in ipvs_daemons(dir2.ns))
        wait_for(lambda: config_of(dir2).get("in_sync") is True, 20)

        # Rolled back from the other director, to the version both keep.
        back = time.time()
        done = hapair("config", "rollback", version_of(old), "--socket", str(dir2.socket))
        assert done.returncode == 0, done
        assert done.stdout.rstrip().endswith("on dir1, dir2"), done
        for d in lab.dirs:
            assert ipvs_table(d.ns) == {ECHO: dests(BEFORE)}, d.name
            assert d.config.read_text() == old
        talking_since(holder, back)
        assert lab.holders() == ["dir1"]
    finally:
        holder.close()
