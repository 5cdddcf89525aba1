"""One pair file, a copy on each director, changed from one of them: two real agents
in namespaces, each with its monitor on a management network, where the change is
pushed to the peer. What an operator sees: both files, both agents' status, the CLI's
exit codes and messages, the API's answers."""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from hapair_cli import hapair
from monitor_lab import VIEWER, Monitor
from pair import Lab, wait_for
from pair_file_lab import config_of, monitor_address, pair_file_lab_factory, pair_text

from hapair.config import version_of
from hapair.core import push
from hapair.monitor.peer import PATH

pytestmark = pytest.mark.netns
__all__ = ["pair_file_lab_factory"]


@pytest.fixture
def pair_lab(pair_file_lab_factory: Callable[..., Lab]) -> Lab:
    return pair_file_lab_factory()


def test_a_change_reaches_both_directors_or_neither(pair_lab: Lab) -> None:
    dir1, dir2 = pair_lab.dirs
    old = dir1.config.read_text()
    running = version_of(old)
    wait_for(lambda: config_of(dir1).get("in_sync") is True, 10)
    assert config_of(dir1) == {"version": running, "peer_version": running, "in_sync": True}
    assert config_of(dir2)["version"] == running
    shown = hapair("status", "--socket", str(dir1.socket))
    assert f"config  {running[:12]}  peer the same" in shown.stdout, shown

    # A new priority for dir2, applied from dir1: dir2 takes it first, then dir1.
    new = pair_lab.tmp / "new.toml"
    new.write_text(pair_text(pair_lab, (150, 110)))
    done = hapair("config", "apply", str(new), "--socket", str(dir1.socket))
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[0] == "director dir2 priority: 100 -> 110", done
    assert f"applied {version_of(new.read_text())} on dir2, dir1" in done.stdout
    assert dir1.config.read_text() == dir2.config.read_text() == new.read_text()
    wait_for(lambda: (dir2.status() or {}).get("priority") == 110, 10)
    wait_for(lambda: config_of(dir1).get("version") == version_of(new.read_text()), 10)
    wait_for(lambda: config_of(dir1).get("in_sync") is True, 10)
    history = hapair("config", "history", "--socket", str(dir2.socket))
    assert "via dir1" in history.stdout.splitlines()[0], history

    # dir2 frozen: the push waits for it, then nothing changes on either director.
    before = dir1.config.read_text()
    third = pair_lab.tmp / "third.toml"
    third.write_text(pair_text(pair_lab, (150, 120)))
    dir2.signal(signal.SIGSTOP)
    try:
        done = hapair("config", "apply", str(third), "--socket", str(dir1.socket))
    finally:
        dir2.signal(signal.SIGCONT)
    assert done.returncode == 1, done
    assert "dir2 cannot be reached" in done.stderr + done.stdout, done
    assert "nothing was changed on either director" in done.stderr + done.stdout
    assert dir1.config.read_text() == dir2.config.read_text() == before
    assert (dir1.status() or {}).get("priority") == 150


def test_a_director_back_with_its_old_file_is_shown_and_brought_in_line(
    pair_lab: Lab,
) -> None:
    dir1, dir2 = pair_lab.dirs
    old = dir1.config.read_text()
    wait_for(lambda: config_of(dir1).get("in_sync") is True, 10)
    # dir2 is down while dir1's file is changed (by hand here, and reloaded).
    assert dir2.stop() == 0
    changed = pair_text(pair_lab, (140, 100))
    dir1.config.write_text(changed)
    dir1.signal(signal.SIGHUP)
    wait_for(lambda: (dir1.status() or {}).get("priority") == 140, 10)
    dir2.start()  # with its old file: nothing is applied on reconnect
    wait_for(lambda: config_of(dir1).get("in_sync") is False, 20)
    assert dir2.config.read_text() == old
    assert config_of(dir1)["peer_version"] is None  # the heartbeats say only: another

    def shown() -> bool:
        """`config show` asks dir2 which version it runs (once its monitor is up)."""
        done = hapair("config", "show", "--socket", str(dir1.socket))
        assert done.returncode == 0 and done.stdout == changed, done
        return config_of(dir1)["peer_version"] == version_of(old)

    wait_for(shown, 20, step=0.5)
    table = hapair("status", "--socket", str(dir1.socket)).stdout
    assert f"PEER RUNS {version_of(old)[:12]}: OUT OF SYNC" in table, table

    # One command brings it in line: dir1's own file applied from dir1.
    done = hapair("config", "apply", str(dir1.config), "--socket", str(dir1.socket))
    assert done.returncode == 0, done
    assert done.stdout.rstrip().endswith("on dir2, dir1"), done
    assert dir2.config.read_text() == changed
    wait_for(lambda: config_of(dir1).get("in_sync") is True, 10)
    assert config_of(dir2) == {
        "version": version_of(changed),
        "peer_version": version_of(changed),
        "in_sync": True,
    }


def alerted(d: Any, event: str) -> list[str]:
    status = d.status() or {}
    return [a["summary"] for a in status["alerts"]["recent"] if a["event"] == event]


def test_a_hand_edit_is_out_of_sync_on_both_and_alerted_after_a_minute(pair_lab: Lab) -> None:
    dir1, dir2 = pair_lab.dirs
    wait_for(lambda: config_of(dir2).get("in_sync") is True, 10)
    dir2.config.write_text(dir2.config.read_text() + "# edited by hand on dir2\n")
    dir2.signal(signal.SIGHUP)
    for d in pair_lab.dirs:
        wait_for(lambda d=d: config_of(d).get("in_sync") is False, 10)
    assert alerted(dir1, "config_mismatch") == alerted(dir2, "config_mismatch") == []
    both = lambda: alerted(dir1, "config_mismatch") and alerted(dir2, "config_mismatch")  # noqa: E731
    took = wait_for(both, 75, step=0.5)
    assert took > 50, took  # a minute apart, not at once
    assert alerted(dir1, "config_mismatch") == ["dir2's config differs from ours for 60s"]


def test_the_api_of_both_monitors(pair_lab: Lab) -> None:
    dir1, dir2 = pair_lab.dirs
    cert = pair_lab.tmp / "monitor.crt"
    one = Monitor(monitor_address(1, pair_lab.net), cert)
    two = Monitor(monitor_address(2, pair_lab.net), cert)
    old = dir1.config.read_text()
    running = version_of(old)
    wait_for(lambda: config_of(dir1).get("in_sync") is True, 10)
    code, shown = one.request("GET", "/api/config")
    assert code == 200 and shown["toml"] == old and shown["pair"] is True, shown
    assert shown["peer"] == {"node": "dir2", "version": running, "in_sync": True}

    def nothing_changed() -> None:
        assert dir1.config.read_text() == dir2.config.read_text() == old
        for monitor in (one, two):
            assert monitor.request("GET", "/api/config/history") == (200, {"versions": []})

    new = pair_text(pair_lab, (150, 110))
    code, answer = one.request("PUT", "/api/config", VIEWER, {"toml": new, "version": running})
    assert code == 403, answer
    bad = {"toml": old + "[x]\n", "version": running}
    code, answer = one.request("PUT", "/api/config", body=bad)
    assert code == 422 and answer["errors"] == ["x: unknown key (a typo?)"], answer
    code, answer = one.request("PUT", "/api/config", body={"toml": new, "version": "f" * 64})
    assert code == 409, answer
    nothing_changed()

    code, answer = one.request("PUT", "/api/config", body={"toml": new, "version": running})
    assert code == 200 and answer["applied"] == ["dir2", "dir1"], answer
    assert dir1.config.read_text() == dir2.config.read_text() == new
    wait_for(lambda: (dir2.status() or {}).get("priority") == 110, 10)
    code, history = two.request("GET", "/api/config/history")
    assert [v["version"] for v in history["versions"]] == [version_of(new), running]
    assert history["versions"][0]["user"] == "alice via dir1"

    # Rolled back from dir2's monitor: dir1 first.
    code, answer = two.request("POST", "/api/config/rollback", body={"version": running})
    assert code == 200 and answer["applied"] == ["dir1", "dir2"], answer
    assert dir1.config.read_text() == dir2.config.read_text() == old
    wait_for(lambda: (dir2.status() or {}).get("priority") == 100, 10)

    # A push recorded on the wire and sent again is refused; it was taken once.
    third = pair_text(pair_lab, (150, 120))
    body = json.dumps(
        {"cmd": "config_apply_here", "toml": third, "version": running, "user": "x"}
    ).encode()
    key = (pair_lab.tmp / "authkey").read_bytes()
    header = push.sign(key, "dir1", "dir2", PATH, body, time.time(), secrets.token_hex(16))
    for expected in (200, 403):
        code, answer = two.raw("POST", PATH, body, {push.HEADER: header})
        assert code == expected, answer
    assert "a replay" in answer["error"]
    assert dir2.config.read_text() == third and dir1.config.read_text() == old
