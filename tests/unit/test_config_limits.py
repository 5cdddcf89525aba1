"""Values no config holds, as an attacker or a careless operator writes them: deep
nesting, huge numbers, control characters, booleans for numbers, durations and counts
out of range. Each is refused at its path with a message (exit 2), never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hapair.config import ConfigError, parse

pytestmark = pytest.mark.unit

ETC = Path(__file__).resolve().parents[2] / "etc"
BASE = (ETC / "web-dr.toml").read_text()
PROBLEM = re.compile(r"[^\s:]+: \S.*")


def _with(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


# (id, config text, path of the error, a word of its message)
HOSTILE: list[tuple[str, str, str, str]] = [
    ("arrays nested 600 deep", BASE + "x = " + "[" * 600 + "]" * 600 + "\n", "toml", "nested"),
    (
        "inline tables nested 3000 deep",
        BASE + "y = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
        "toml",
        "nested",
    ),
    ("dotted header 1000 deep", BASE + "[" + ".".join(["a"] * 1000) + "]\n", "a.a.a", "nested"),
    (
        "integer duration too large for a float",
        _with('interval = "200ms"', "interval = " + "9" * 401),
        "cluster.interval",
        "64 bits",
    ),
    ("integer of 5000 digits", BASE + "z = " + "9" * 5000 + "\n", "toml", "4300 digits"),
    (
        "heartbeat interval 1 ns",
        _with('interval = "200ms"', "interval = 1e-9"),
        "cluster.interval",
        "10ms",
    ),
    (
        "probe interval of 1e9 hours",
        _with('interval = "2s"', 'interval = "1000000000h"'),
        "services.0.probe.interval",
        "1 day",
    ),
    (
        "probe interval 1 ns",
        _with('interval = "2s"\ntimeout = "1s"', "interval = 1e-9\ntimeout = 1e-9"),
        "services.0.probe.interval",
        "10ms",
    ),
    (
        "persistence beyond 32 bits",
        _with('persistence = "5m"', "persistence = 5000000000"),
        "services.1.persistence",
        "31 days",
    ),
    (
        "connection threshold beyond 32 bits",
        _with("weight = 2 ", "upper_threshold = 4294967296\nweight = 2 "),
        "services.0.real_servers.2.upper_threshold",
        "4294967295",
    ),
    (
        "node name ending in a newline",
        _with('name = "lvs1"', 'name = "lvs1\\n"'),
        "node.name",
        "not a name",
    ),
    (
        "node name holding a NUL",
        _with('name = "lvs1"', 'name = "lv\\u0000s1"'),
        "node.name",
        "not a name",
    ),
    (
        "interface ending in a newline",
        _with('interface = "eth0"', 'interface = "eth0\\n"'),
        "vips.0.interface",
        "not an interface name",
    ),
    (
        "interface holding a NUL",
        _with('interface = "eth0"', 'interface = "et\\u0000h0"'),
        "vips.0.interface",
        "not an interface name",
    ),
    (
        "HTTP probe host with CR/LF",
        _with('path = "/health"', 'path = "/health"\nhost = "www\\r\\nX-Injected: 1"'),
        "services.0.probe.host",
        "not a host name",
    ),
    (
        "sni with CR/LF",
        _with('path = "/health"', 'path = "/health"\nsni = "www\\r\\n"'),
        "services.0.probe.sni",
        "not a host name",
    ),
    (
        "HTTP path with a control character",
        _with('path = "/health"', 'path = "/health\\u0000"'),
        "services.0.probe.path",
        "printable",
    ),
    ("priority = true", _with("priority = 150", "priority = true"), "node.priority", "integer"),
    (
        "weight = true",
        _with("weight = 1", "weight = true"),
        "services.0.real_servers.0.weight",
        "integer",
    ),
    ("preempt = 1", _with("preempt = true", "preempt = 1"), "cluster.preempt", "boolean"),
    ("VIP with prefix /0", _with("/24", "/0"), "vips.0.address", "/0"),
    (
        "gratuitous ARP refresh every nanosecond",
        _with('garp_refresh = "60s"', "garp_refresh = 1e-9"),
        "vips.0.garp_refresh",
        "at least 1s",
    ),
    (
        "gratuitous ARPs a nanosecond apart",
        _with('garp_interval = "100ms"', "garp_interval = 1e-9"),
        "vips.0.garp_interval",
        "at least 1ms",
    ),
    (
        "control socket path too long for a Unix socket",
        _with(
            'control_socket = "/run/hapair/lvs1.sock"',
            f'control_socket = "/run/hapair/{"x" * 100}.sock"',
        ),
        "node.control_socket",
        "Unix socket",
    ),
    (
        "metrics_listen equal to listen",
        _with(
            'listen = "127.0.0.1:8443"',
            'listen = "127.0.0.1:8443"\nmetrics_listen = "0.0.0.0:8443"',
        ),
        "monitor.metrics_listen",
        "already listens",
    ),
    (
        "pager URL with a NUL",
        _with('url = "http://127.0.0.1:9000/alert"', 'url = "http://x/\\u0000"'),
        "alerts.pager.url",
        "URL",
    ),
    (
        "notify script of two lines",
        _with("[monitor]", '[alerts.scripts]\non_master = "a\\nrm -rf /"\n\n[monitor]'),
        "alerts.scripts.on_master",
        "one line",
    ),
    (
        "key file path with a NUL",
        _with('auth_key_file = "authkey"', 'auth_key_file = "auth\\u0000key"'),
        "cluster.auth_key_file",
        "file path",
    ),
]


def test_the_base_is_valid(etc: Path) -> None:
    for _, text, _, _ in HOSTILE:
        assert text != BASE
    parse(BASE, base_dir=etc)


@pytest.mark.parametrize(
    ("text", "path", "word"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_value_is_refused_at_its_path(etc: Path, text: str, path: str, word: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir=etc)
    problems = [str(p) for p in info.value.problems]
    assert all(PROBLEM.fullmatch(p) for p in problems), problems
    matching = [p for p in problems if p.startswith(f"{path}")]
    assert matching, f"no error at {path}: {problems}"
    assert any(word in p for p in matching), f"{word!r} not in {matching}"


def test_check_exits_2_with_every_error_and_no_traceback(etc: Path) -> None:
    """`hapair check`, a real process, on each hostile file: exit 2, `path: message` lines."""
    for name, text, path, _ in HOSTILE:
        config = etc / "hostile.toml"
        config.write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "hapair", "check", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        lines = result.stdout.splitlines()
        assert lines and all(PROBLEM.fullmatch(line) for line in lines), (name, lines)
        assert any(line.startswith(path) for line in lines), (name, lines)
