"""The failover lab (the `lab` package) end to end, as `scripts/lab demo` runs it: the
topology, real servers, both agents with monitor and alerts, a client polling the VIP and
holding 200 long-lived connections, lvs1 killed, lvs2 taking over, lvs1 back with a warm
failback; then everything is gone: namespaces, links, processes, the lab directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import lab.build
import lab.commands
import lab.topology

pytestmark = pytest.mark.kernel

CONNECTIONS = 200


def processes_mentioning(*needles: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.parametrize("mode", ["dr", "nat", "tun"])
def test_the_lab_demo_fails_over_and_back_keeping_the_connections(
    mode: str, tmp_path: Path
) -> None:
    lab_dir = tmp_path / "lab"
    result = lab.commands.cmd_demo(mode, lab_dir, connections=CONNECTIONS)

    assert not result.error, result.error
    assert result.failover_ok and result.failback_ok
    # Measured, not configured: bounded by the deadtime plus a margin for the slow guest.
    margin = 0.5 * lab.topology.SLOWDOWN
    assert result.master_after is not None and 0 < result.master_after < result.deadtime + margin
    assert result.outage is not None and result.outage < result.deadtime + margin
    assert result.survived >= 0.995 * CONNECTIONS, result
    assert result.failback_survived >= 0.995 * CONNECTIONS, result
    assert result.learned is not None and result.learned >= CONNECTIONS
    assert result.failback_outage is not None and result.failback_outage < margin
    # As the client sees it (who answers its ARP requests for the VIP): never two
    # directors; neither only until lvs2 takes over, and not at all in the failback.
    assert result.dual == 0 and result.failback_dual == 0, result
    assert result.no_master is not None and result.no_master < result.deadtime + margin
    assert result.failback_no_master is not None and result.failback_no_master < margin
    assert any(" lvs2 state_change: lvs2 is now MASTER" in s for s in result.alerts)
    assert all("answers:" in line for line in result.monitor), result.monitor
    assert result.config.endswith("on lvs2, lvs1"), result.config  # pushed to lvs2 first

    assert result.leftovers == [] and lab.build.leftovers(lab_dir) == []
    leftover = processes_mentioning(
        str(lab_dir), "-m lab _poll", "-m lab _arpwatch", f"-m lab.traffic hold {lab.topology.VIP}"
    )
    assert leftover == []
