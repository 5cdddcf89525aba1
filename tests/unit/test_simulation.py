"""The HA core under thousands of random schedules on a simulated lossy network.

Safety: two MASTERs end within one interval once they hear each other. Liveness:
with a healthy node running, a MASTER serves within deadtime (or initdead) plus a
margin. Forged heartbeats are never accepted. A failing seed is printed with its
replay command: `python tests/simnet.py SEED`.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import simnet

from hapair.core.election import TRANSITIONS, Situation
from hapair.core.states import State

pytestmark = pytest.mark.unit

RUNS = int(os.environ.get("HAPAIR_SIM_RUNS", "10000"))
SEED0 = int(os.environ.get("HAPAIR_SIM_SEED0", "0"))


def test_random_schedules() -> None:
    workers = os.cpu_count() or 1
    chunk = max(1, RUNS // (workers * 8))
    ranges = [range(s, min(s + chunk, SEED0 + RUNS)) for s in range(SEED0, SEED0 + RUNS, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        failures = [f for part in pool.map(simnet.sweep, ranges) for f in part]
    report = "\n".join(
        f"seed {seed}: {'; '.join(problems)}  (replay: python tests/simnet.py {seed})"
        for seed, problems in failures[:20]
    )
    assert not failures, f"{len(failures)} of {RUNS} schedules failed:\n{report}"


def test_the_checker_catches_a_broken_election(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both nodes believe they outrank each other: a split brain that never heals.
    monkeypatch.setattr("hapair.core.election.outranks", lambda a, b: True)
    failures = simnet.sweep(range(100))
    assert any("two MASTERs" in p for _, problems in failures for p in problems)


def test_the_checker_catches_a_backup_that_never_takes_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(TRANSITIONS[State.BACKUP], Situation.ALONE, State.BACKUP)
    failures = simnet.sweep(range(100))
    assert any("no MASTER" in p for _, problems in failures for p in problems)


def test_a_schedule_replays_identically() -> None:
    first, _ = simnet.run(1234)
    again, _ = simnet.run(1234)
    assert first.log == again.log and len(first.log) > 5
