"""The `hapair` command as an operator runs it: a real process, its output and exit code."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import samples
from hapair_cli import hapair

from hapair.monitor.users import read_users, verify_password

pytestmark = pytest.mark.unit

ETC = Path(__file__).resolve().parents[2] / "etc"


@pytest.fixture
def etc_copy(tmp_path: Path) -> Path:
    for path in ETC.glob("*.toml"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    key = tmp_path / "authkey"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    return tmp_path


def test_check_ok(etc_copy: Path) -> None:
    result = hapair("check", "-c", str(etc_copy / "web-dr.toml"))
    assert (result.returncode, result.stdout) == (0, "ok\n")


def test_check_lists_every_error(etc_copy: Path) -> None:
    path = etc_copy / "web-dr.toml"
    text = path.read_text()
    text = text.replace("priority = 150", "priority = 255").replace(
        'scheduler = "wlc"', 'scheduler = "wcl"', 1
    )
    path.write_text(text.replace('deadtime = "1s"', 'deadtime = "100ms"'))
    result = hapair("check", "-c", str(path))
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["node.priority", "services.0.scheduler"]
    # The rules run once the schema holds: fix it, and the timing rule is reported.
    path.write_text(
        path.read_text().replace("priority = 255", "priority = 150").replace('"wcl"', '"wlc"')
    )
    result = hapair("check", "-c", str(path))
    assert (result.returncode, result.stdout.split(":")[0]) == (2, "cluster.deadtime")


@pytest.mark.parametrize(
    ("config", "args", "code", "stream", "words"),
    [
        pytest.param(
            "[node]\nname = 'a'\npriority = = 3\n",
            ("check", "-c", "{tmp}/bad.toml"),
            2,
            "stdout",
            "line 3",
            id="check_syntax_error_names_the_line",
        ),
        pytest.param(
            None,
            ("check", "-c", "{tmp}/none.toml"),
            2,
            "stdout",
            "No such file",
            id="check_missing_file",
        ),
        pytest.param(
            "[node]\n",
            ("run", "-c", "{tmp}/bad.toml"),
            2,
            "stderr",
            "cluster: required",
            id="run_refuses_bad_config_with_2",
        ),
        pytest.param(
            None,
            ("status", "--socket", "{tmp}/none.sock", "--json"),
            3,
            "stderr",
            "no agent answers",
            id="status_without_agent_exits_3",
        ),
        pytest.param(
            None,
            ("ctl", "drain", "web", "10.0.0.11:80", "--socket", "{tmp}/x.sock"),
            1,
            "stderr",
            "no agent",
            id="ctl_without_agent_is_refused",
        ),
    ],
)
def test_refusal_exit_code_and_reason(
    tmp_path: Path, config: str | None, args: tuple[str, ...], code: int, stream: str, words: str
) -> None:
    """`config`: what {tmp}/bad.toml holds (None: no such file); the refusal's exit code and
    words in its stdout or stderr."""
    if config is not None:
        (tmp_path / "bad.toml").write_text(config)
    result = hapair(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.returncode == code and words in getattr(result, stream), result


@pytest.mark.parametrize(
    "args",
    [[], ["ctl"], ["ctl", "drain", "web"], ["bogus"], ["check"], ["passwd", "alice"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = hapair(*args)
    assert result.returncode == 2 and "usage:" in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["ctl", "add", "--help"]])
def test_help(args: list[str]) -> None:
    result = hapair(*args)
    assert result.returncode == 0 and "usage: hapair" in result.stdout


class FakeAgent:
    """A control socket that answers like the agent, recording what it was asked."""

    def __init__(self, path: Path, reply: dict[str, Any]) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply = reply
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.makefile("rb").readline()
                self.requests.append(json.loads(data))
                conn.sendall(json.dumps(self.reply).encode() + b"\n")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Path, FakeAgent]]:
    path = tmp_path / "lvs1.sock"
    status = samples.status()
    fake = FakeAgent(path, {"ok": True, "result": status})
    yield path, fake
    fake.sock.close()


def test_status_json_and_table(agent: tuple[Path, FakeAgent]) -> None:
    path, fake = agent
    result = hapair("status", "--socket", str(path), "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["state"] == "MASTER"
    table = hapair("status", "--socket", str(path)).stdout
    assert "lvs1  MASTER  priority 150" in table
    assert re.search(r"-> 10\.0\.0\.11:80 +Route +1 +3 +12 +up +enabled", table)
    assert fake.requests == [{"cmd": "status"}, {"cmd": "status"}]


def test_ctl_sends_the_action(agent: tuple[Path, FakeAgent]) -> None:
    path, fake = agent
    fake.reply = {"ok": True, "result": "drained"}
    assert (
        hapair(
            "ctl", "add", "web", "10.0.0.12:80", "--weight", "3", "--socket", str(path)
        ).returncode
        == 0
    )
    fake.reply = {"ok": False, "error": "no such service 'mail'"}
    refused = hapair("ctl", "drain", "mail", "10.0.0.12:80", "--socket", str(path))
    assert refused.returncode == 1 and "no such service 'mail'" in refused.stderr
    assert fake.requests == [
        {"cmd": "add", "service": "web", "server": "10.0.0.12:80", "weight": 3},
        {"cmd": "drain", "service": "mail", "server": "10.0.0.12:80"},
    ]


def test_passwd_writes_a_private_salted_hash(tmp_path: Path) -> None:
    users = tmp_path / "users"
    assert hapair("passwd", "-f", str(users), "alice", stdin="correct horse\n").returncode == 0
    assert (
        hapair(
            "passwd", "-f", str(users), "bob", "--role", "viewer", stdin="battery staple\n"
        ).returncode
        == 0
    )
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert "correct horse" not in users.read_text()
    found = read_users(users)
    assert found["alice"].role == "admin" and found["bob"].role == "viewer"
    assert verify_password("correct horse", found["alice"].hash)
    assert not verify_password("correct horse", found["bob"].hash)
    # Same password again: a fresh salt, so a different hash.
    assert hapair("passwd", "-f", str(users), "alice", stdin="correct horse\n").returncode == 0
    assert read_users(users)["alice"].hash != found["alice"].hash


@pytest.mark.parametrize(
    ("user", "password"), [("alice", "short"), ("al:ice", "long enough"), ("alice", "")]
)
def test_passwd_bad_input(tmp_path: Path, user: str, password: str) -> None:
    result = hapair("passwd", "-f", str(tmp_path / "users"), user, stdin=f"{password}\n")
    assert result.returncode == 2 and not (tmp_path / "users").exists()


def test_gen_cert(tmp_path: Path) -> None:
    from cryptography import x509

    cert, key = tmp_path / "m.crt", tmp_path / "m.key"
    result = hapair("gen-cert", str(cert), str(key), "--cn", "lvs1.example.org")
    assert result.returncode == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["lvs1.example.org"]


def test_status_piped_into_head_ends_quietly(agent: tuple[Path, FakeAgent]) -> None:
    """`hapair status | head -1` on a status longer than a pipe holds: the CLI meets a
    closed pipe and ends without a traceback, exit 0."""
    path, fake = agent
    status = fake.reply["result"]
    servers = status["services"][0]["real_servers"]
    status["services"][0]["real_servers"] = [
        {**servers[0], "address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"}
        for i in range(5000)
    ]
    result = subprocess.run(
        [
            "bash",
            "-c",
            f'"{sys.executable}" -m hapair status --socket "{path}" | head -1; '
            'echo "exit ${PIPESTATUS[0]}" >&2',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.startswith("lvs1  MASTER")
    assert result.stderr == "exit 0\n", result.stderr
