"""Two real agents in the guest kernel: both load the IPVS table at start, the sync
daemon roles follow the election, and a rule deleted behind hapair's back comes back.
Everything is read with ipvsadm, not with hapair's own view."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from ipvsadm import ipvs_daemons, ipvs_table
from pair import VIP, Lab, started, wait_for

from lab.config import service

pytestmark = pytest.mark.kernel

REAL_SERVERS = [{"address": "10.77.0.21", "weight": 2}, {"address": "10.77.0.22", "weight": 1}]
SERVICES = {
    "sync": {"interface": "eth1", "sync_id": 77},
    "services": [service("web", VIP, 80, "dr", REAL_SERVERS, scheduler="wrr")],
}
WEB = f"TCP {VIP}:80 wrr"
DESTS = [("10.77.0.21:80", "Route", 2), ("10.77.0.22:80", "Route", 1)]


def test_table_sync_roles_and_drift(lab_factory: Callable[..., Lab]) -> None:
    lab = started(lab_factory(SERVICES, interval=0.5, deadtime=3.0, initdead=6.0))
    dir1, dir2 = lab.dirs
    for d in lab.dirs:  # both directors hold the table: a takeover only moves the VIP
        assert ipvs_table(d.ns) == {WEB: DESTS}, d.name
    wait_for(
        lambda: any(
            "master sync daemon (mcast=eth1, syncid=77" in x for x in ipvs_daemons(dir1.ns)
        ),
        10,
    )
    wait_for(
        lambda: any(
            "backup sync daemon (mcast=eth1, syncid=77" in x for x in ipvs_daemons(dir2.ns)
        ),
        10,
    )
    assert not any("backup" in x for x in ipvs_daemons(dir1.ns))

    # Drift: a destination deleted and a weight changed with ipvsadm are put back; a
    # service hapair does not own is left alone.
    dir2.ns.run("ipvsadm", "-d", "-t", f"{VIP}:80", "-r", "10.77.0.22:80")
    dir2.ns.run("ipvsadm", "-e", "-t", f"{VIP}:80", "-r", "10.77.0.21:80", "-g", "-w", "9")
    dir2.ns.run("ipvsadm", "-A", "-u", "10.77.0.200:53", "-s", "rr")
    took = wait_for(lambda: ipvs_table(dir2.ns).get(WEB) == DESTS, 3)  # period 5 s, x slowdown
    print(f"drift repaired after {took:.1f}s")
    assert ipvs_table(dir2.ns)["UDP 10.77.0.200:53 rr"] == []
    assert "IPVS table differed" in dir2.log.read_text()

    # The master leaves: the backup becomes master and runs the master sync daemon.
    dir1.signal(signal.SIGTERM)
    wait_for(lambda: dir2.holds_vip(), 10)
    wait_for(lambda: any("master sync daemon" in x for x in ipvs_daemons(dir2.ns)), 10)
    assert dir1.proc is not None and dir1.proc.wait(60) == 0
    assert ipvs_daemons(dir1.ns) == []  # a stopped agent leaves no sync daemon behind
    assert ipvs_table(dir1.ns) == {WEB: DESTS}  # and keeps its table for a quick return
