"""The agent's log bounds repeats: a flood of one message costs a few lines a minute."""

from __future__ import annotations

import logging

import pytest

from hapair.logs import BURST, WINDOW, RepeatFilter

pytestmark = pytest.mark.unit


def _record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("hapair", level, __file__, 1, msg, args, None)


def test_a_repeating_message_is_written_a_few_times_then_once_a_window() -> None:
    now = [0.0]
    repeats = RepeatFilter(lambda: now[0])
    written = []
    for i in range(100_000):  # ~1,700 a second for a minute, then a second minute
        now[0] = i * 120 / 100_000
        record = _record("accept failed: %s", f"try {i}")
        if repeats.filter(record):
            written.append((now[0], record.getMessage()))
    assert len(written) == BURST + 1  # the burst, then one line in the second window
    assert written[BURST][0] == WINDOW
    assert written[BURST][1].endswith(
        f"[and {100_000 // 2 - BURST} more like this in the last minute]"
    ), written[BURST]


def test_other_messages_and_levels_pass_beside_a_flood() -> None:
    repeats = RepeatFilter(lambda: 0.0)
    for _ in range(1000):
        repeats.filter(_record("flood"))
    assert repeats.filter(_record("something else"))
    assert repeats.filter(_record("flood", level=logging.WARNING))
    assert not repeats.filter(_record("flood"))
