"""One pair file, a copy on each director, changed from one of them: two real agents
in namespaces, each with its monitor on the heartbeat network, where the change is
pushed to the peer. What an operator sees: both files, both agents' status, the CLI's
exit codes and messages."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from pair import Lab, wait_for
from pair_file_lab import config_of, hapair, pair_file_lab_factory, pair_text

from hapair.config import version_of

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
    assert done.stdout.splitlines()[0] == "director dir2.priority: 100 -> 110", done
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
