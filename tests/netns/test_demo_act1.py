"""Act 1 of `scripts/lab demo` (`--act 1`): the lab's two directors and its client on this
machine's kernel at real timing print the client-visible outage of an unplanned failover, a
failback and a planned handover, and leave nothing behind: no namespace, no process, no
directory; also when interrupted (Ctrl-C, SIGTERM) and, after the sweep `scripts/lab down`
runs, when the run itself was SIGKILLed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import host_act
from lab.shell import existing_namespaces

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
BOUND_MS = 2000  # generous: the deadtime is 150 ms, a handover takes a few ms
FIGURE = re.compile(
    r"^  act 1 (unplanned failover|failback|planned handover): client-visible outage (\d+) ms$",
    re.M,
)


def start_act1() -> subprocess.Popen[str]:
    """`scripts/lab demo --act 1` as scripts/lab runs it (python -m lab), from this tree."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "lab", "demo", "--act", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"PYTHONPATH": path},
    )


def left_of(pid: int) -> list[str]:
    """What of run `pid` exists, found without the act's own bookkeeping: namespaces named
    for it, processes carrying its mark, its directory."""
    run = f"act1-{pid}"
    left = [n for n in existing_namespaces() if n.startswith(f"{run}-")]
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"HAPAIR_LAB_RUN={run}".encode() in environ and state != "Z":
            left.append(f"process {entry.name}: {(entry / 'cmdline').read_bytes()[:80]!r}")
    if Path(f"/run/hapair-{run}").exists():
        left.append(f"/run/hapair-{run}")
    return left


def test_act1_prints_three_outages_under_the_bound_and_leaves_nothing() -> None:
    act = start_act1()
    out, _ = act.communicate(timeout=180)
    assert act.returncode == 0, out
    figures = {kind: int(ms) for kind, ms in FIGURE.findall(out)}
    assert set(figures) == {"unplanned failover", "failback", "planned handover"}, out
    for kind, ms in figures.items():
        assert 0 < ms < BOUND_MS, f"{kind}: {ms} ms\n{out}"
    assert "released: the peer takes the VIPs" in out  # hapair ctl release said so
    assert "taken down: nothing left" in out
    assert left_of(act.pid) == [], out
    assert host_act.leftovers(act.pid) == []


@pytest.mark.parametrize(
    ("sig", "after"),
    [(signal.SIGINT, "lvs1 MASTER holding the VIP"), (signal.SIGTERM, "UNPLANNED: lvs1 killed")],
)
def test_act1_interrupted_takes_everything_down(sig: signal.Signals, after: str) -> None:
    act = start_act1()
    assert act.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    for line in act.stdout:  # up to the moment the pair is running
        seen.append(line)
        if after in line or time.monotonic() > deadline:
            break
    assert any(after in line for line in seen), "".join(seen)
    assert left_of(act.pid), "nothing running to take down"
    act.send_signal(sig)
    rest, _ = act.communicate(timeout=60)
    assert act.returncode == 130, "".join(seen) + rest
    assert "interrupted; everything was taken down" in rest
    assert left_of(act.pid) == [], "".join(seen) + rest


def test_the_sweep_of_lab_down_removes_what_a_killed_act1_left() -> None:
    act = start_act1()
    assert act.stdout is not None
    for line in act.stdout:
        if "both configs pass `hapair check`" in line:
            break
    act.kill()  # no teardown: namespaces, agents, socat stay
    act.communicate(timeout=30)
    assert left_of(act.pid), "the killed run left nothing to sweep"
    # `scripts/lab down` runs this after taking a lab down; not run whole here, as it would
    # take down a lab (or another test's lab-* namespaces) on this machine.
    done = host_act.sweep()
    assert f"deleted namespace act1-{act.pid}-lvs1" in done
    assert left_of(act.pid) == [], done
