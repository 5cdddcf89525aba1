"""The agent's log bounds repeats (a flood of one message costs a few lines a minute), and
its styles: text, the journal's, JSON; the VIP guard's lines in the same."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from hapair.logs import (
    BURST,
    WINDOW,
    JournalFormatter,
    JsonFormatter,
    RepeatFilter,
    event,
    style_of,
    under_journal,
)
from hapair.vipguard import Guard

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


# The styles of line (`run --log-format`, and the journal's under systemd).


def _formatted(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    return formatter.format(record)


@pytest.mark.parametrize(
    ("level", "prefix"),
    [(logging.CRITICAL, "<2>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"),
     (logging.INFO, "<6>"), (logging.DEBUG, "<7>")],
)  # fmt: skip
def test_the_journal_gets_a_priority_on_every_line_and_no_time(level: int, prefix: str) -> None:
    record = _record("reload refused:\n%s", "cluster.id: required", level=level)
    assert _formatted(JournalFormatter("%(message)s"), record) == (
        f"{prefix}reload refused:\n{prefix}cluster.id: required"
    )


def test_json_is_one_object_a_line_with_the_event_and_its_fields() -> None:
    record = _record("%s: %s", "peer_lost", "lvs2 silent\non every link", level=logging.WARNING)
    record.__dict__.update(event("peer_lost", link="udp:eth1"))
    line = _formatted(JsonFormatter("lvs1"), record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry == {
        "time": round(record.created, 3),
        "level": "warning",
        "event": "peer_lost",
        "node": "lvs1",
        "message": "peer_lost: lvs2 silent\non every link",
        "fields": {"link": "udp:eth1"},
    }
    plain = json.loads(_formatted(JsonFormatter("lvs1"), _record("started")))
    assert plain["event"] == "log" and plain["fields"] == {}


def test_the_journal_is_told_by_the_stream_not_by_the_variable_alone(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with open(path, "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        mine = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journal(mine, stream.fileno())
        assert not under_journal(mine, other.fileno())  # a child's own stderr
        for value in ("", "1", "a:b", f"{st.st_dev}:{st.st_ino}:0"):
            assert not under_journal({"JOURNAL_STREAM": value}, stream.fileno())
        assert style_of("json") == "json"


@pytest.mark.parametrize(
    ("style", "pattern"),
    [
        ("text", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR hapair vipguard: gone"),
        ("journal", r"<3>hapair vipguard: gone"),
        ("json", r'\{"time": [\d.]+, "level": "error", "event": "vip_guard", "node": "lvs1", '
         r'"message": "hapair vipguard: gone", "fields": \{\}\}'),
    ],
)  # fmt: skip
def test_the_vip_guard_logs_in_the_agents_style(
    style: str, pattern: str, capfd: pytest.CaptureFixture[str]
) -> None:
    Guard(1, "/usr/sbin/ip", style, "lvs1").say("ERROR", "hapair vipguard: gone")
    assert re.fullmatch(pattern + "\n", capfd.readouterr().err)
