"""The line of each config error in its text (config/lines.py), for the page's editor:
from real `hapair check` problems of a real pair file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hapair.config import ConfigError, parse_all
from hapair.config.lines import line_of, lines_of_problems

pytestmark = pytest.mark.unit

PAIR = """\
# a pair file with mistakes
[[nodes]]
name = "lvs1"
priority = 150

[[nodes]]
name = "lvs2"
priority = 999

[cluster]
id = 51
auth_key_file = "authkey"
deadtime = "100ms"

[[cluster.links]]
type = "udp"
interface = "lo"
peer = "127.0.0.2"

[[services]]
name = "web"
protocol = "tcp"
address = "10.0.0.100"
port = 80

[services.probe]
type = "tcp"
timeout = "-1s"

[[services.real_servers]]
address = "10.0.0.11"
port = 80

[[services.real_servers]]
address = "10.0.0.12"
port = 99999
"""


def numbered(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def test_each_problem_of_a_real_check_is_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "authkey").write_bytes(b"k" * 32)
    (tmp_path / "authkey").chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        parse_all(PAIR, base_dir=tmp_path)
    problems = [str(p) for p in caught.value.problems]
    where = dict(zip(problems, lines_of_problems(PAIR, problems), strict=True))
    by_path = {p.split(": ", 1)[0]: line for p, line in where.items()}
    assert by_path["nodes.1.priority"] == numbered(PAIR, "priority = 999"), where
    assert by_path["services.0.real_servers.1.port"] == numbered(PAIR, "port = 99999"), where
    assert by_path["services.0.probe.timeout"] == numbered(PAIR, 'timeout = "-1s"'), where


def test_a_syntax_error_says_its_own_line(tmp_path: Path) -> None:
    broken = PAIR.replace("[cluster]", "[cluster")
    with pytest.raises(ConfigError) as caught:
        parse_all(broken, base_dir=tmp_path)
    problems = [str(p) for p in caught.value.problems]
    assert problems[0].startswith("toml: syntax error")
    assert lines_of_problems(broken, problems) == [numbered(broken, "[cluster")]


def test_what_is_not_written_gets_its_table_or_nothing() -> None:
    assert line_of(PAIR, "services.0.probe.interval") == numbered(PAIR, "[services.probe]")
    assert line_of(PAIR, "cluster.links.0.group") == numbered(PAIR, "[[cluster.links]]")
    assert line_of(PAIR, "monitor.listen") is None
    assert line_of(PAIR, "(top)") is None


@given(st.text(max_size=300), st.lists(st.text(max_size=40), max_size=5))
@settings(max_examples=400, deadline=None)
def test_any_text_and_problems_give_a_line_or_none(text: str, problems: list[str]) -> None:
    lines = lines_of_problems(text, problems)
    count = len(text.splitlines())
    assert len(lines) == len(problems)
    assert all(
        n is None or 1 <= n <= max(count, 1) or "(at line" in p
        for n, p in zip(lines, problems, strict=True)
    )
