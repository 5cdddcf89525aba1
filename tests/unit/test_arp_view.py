"""The client's ARP view of who holds the VIP (lab/measure.py's `holding`, which every
failover test and the failover bench assert on), from request and answer timelines."""

from __future__ import annotations

import pytest

import lab.measure

pytestmark = pytest.mark.unit

PERIOD = 0.2


def requests(start: float, end: float, skip: tuple[float, float] = (0.0, 0.0)) -> list[float]:
    """A request every PERIOD from `start` to `end`, none inside `skip`."""
    times = [round(start + i * PERIOD, 3) for i in range(int((end - start) / PERIOD))]
    return [t for t in times if not skip[0] < t < skip[1]]


def answers(
    asked: list[float], who: str, unless: tuple[float, float] = (0.0, 0.0)
) -> list[tuple[float, str]]:
    return [(t + 0.001, who) for t in asked if not unless[0] <= t < unless[1]]


def test_a_steady_master_is_one_holder_no_dual_no_silence() -> None:
    asked = requests(0, 10)
    seen = lab.measure.holding(asked, answers(asked, "dir1"), 0, 10, PERIOD)
    assert (seen.dual, seen.none, seen.holders) == (0.0, 0.0, [["dir1"]])


def test_a_stalled_watch_is_not_a_silent_master() -> None:
    """The watch itself did not run for 0.42 s (a busy guest): no request, no answer. The
    view before counted that as 20 ms with no master."""
    asked = sorted([*requests(0, 10, skip=(5.0, 5.42)), 5.42])
    seen = lab.measure.holding(asked, answers(asked, "dir1"), 0, 10, PERIOD)
    assert seen.none == 0.0, seen


def test_one_lost_answer_is_within_the_slack() -> None:
    asked = requests(0, 10)
    seen = lab.measure.holding(asked, answers(asked, "dir1", unless=(5.0, 5.1)), 0, 10, PERIOD)
    assert seen.none == 0.0, seen


def test_requests_asked_in_vain_are_a_silence_and_two_answering_are_dual() -> None:
    asked = requests(0, 10)
    replies = answers(asked, "dir1", unless=(5.0, 8.0)) + answers(
        [t for t in asked if 2.0 <= t < 3.0], "dir2"
    )
    seen = lab.measure.holding(asked, sorted(replies), 0, 10, PERIOD)
    # Answers at 4.801 and then 8.001: 3.2 s, less two periods of slack.
    assert seen.none == pytest.approx(2.8, abs=0.01), seen
    assert seen.dual == pytest.approx(1.0, abs=0.01), seen
    assert seen.holders == [["dir1"], ["dir1", "dir2"], ["dir1"]], seen
