"""`hapair config ...`: what it sends over the control socket and its exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hapair_cli import hapair
from test_cli import ETC, FakeAgent

pytestmark = pytest.mark.unit

V1 = "1" * 64


def served(tmp_path: Path, reply: dict[str, Any]) -> tuple[Path, FakeAgent]:
    path = tmp_path / "lvs1.sock"
    return path, FakeAgent(path, reply)


def test_show_and_history(tmp_path: Path) -> None:
    sock, fake = served(
        tmp_path,
        {
            "ok": True,
            "result": {
                "toml": "[node]\n",
                "versions": [
                    {"version": V1, "time": 1.0, "user": "alice", "summary": "service web added"}
                ],
            },
        },
    )
    done = hapair("config", "show", "--socket", str(sock))
    assert (done.returncode, done.stdout) == (0, "[node]\n")
    done = hapair("config", "history", "--socket", str(sock))
    assert done.returncode == 0 and V1 in done.stdout and "service web added" in done.stdout
    assert [r["cmd"] for r in fake.requests] == ["config_show", "config_history"]


def test_apply_exit_codes(tmp_path: Path) -> None:
    new = tmp_path / "new.toml"
    new.write_text("x = 1\n")
    sock, fake = served(
        tmp_path, {"ok": True, "result": {"version": V1, "applied": ["lvs1"], "changes": ["a"]}}
    )
    done = hapair("config", "apply", str(new), "--socket", str(sock))
    assert done.returncode == 0 and f"applied {V1} on lvs1" in done.stdout
    assert fake.requests[-1]["cmd"] == "config_apply" and fake.requests[-1]["toml"] == "x = 1\n"
    fake.reply = {"ok": False, "error": "bad", "reason": "invalid", "errors": ["a.b: no", "c: no"]}
    done = hapair("config", "apply", str(new), "--socket", str(sock))
    assert (done.returncode, done.stdout) == (2, "a.b: no\nc: no\n")
    fake.reply = {"ok": False, "error": "changed meanwhile", "reason": "stale", "errors": []}
    done = hapair("config", "rollback", V1, "--socket", str(sock))
    assert done.returncode == 1 and "changed meanwhile" in done.stderr
    assert fake.requests[-1] == {
        "cmd": "config_rollback",
        "version": V1,
        "user": fake.requests[-1]["user"],
    }
    done = hapair("config", "apply", str(tmp_path / "missing.toml"), "--socket", str(sock))
    assert done.returncode == 2
    done = hapair("config", "show", "--socket", str(tmp_path / "none.sock"))
    assert done.returncode == 1


def test_check_runs_without_an_agent_and_compares_with_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\npriority = 999\n")
    done = hapair("config", "check", str(bad), "--socket", str(tmp_path / "none.sock"))
    assert done.returncode == 2 and "node.priority: " in done.stdout
    good = tmp_path / "web-dr.toml"
    good.write_bytes((ETC / "web-dr.toml").read_bytes())
    (tmp_path / "authkey").write_bytes(b"k" * 32)
    (tmp_path / "authkey").chmod(0o600)
    done = hapair("config", "check", str(good), "--socket", str(tmp_path / "none.sock"))
    assert done.returncode == 0 and "no agent answers" in done.stdout
    sock, fake = served(tmp_path, {"ok": True, "result": {"changes": ["service web added"]}})
    done = hapair("config", "check", str(good), "--socket", str(sock))
    assert (done.returncode, done.stdout) == (0, "service web added\nok\n")
    assert fake.requests[-1]["cmd"] == "config_check"
