"""`hapair config apply` against a real agent: the file is replaced, the agent reloads
(its status shows the new priority), an invalid change writes nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hapair_cli import hapair
from pair import Lab, started, wait_for

pytestmark = pytest.mark.netns


def test_apply_reloads_the_agent_and_keeps_the_old_version(lab_factory: Callable[..., Lab]) -> None:
    lab = started(lab_factory())
    dir1 = lab.dirs[0]
    old = dir1.config.read_text()
    assert "priority = 150" in old
    new = lab.tmp / "new.toml"
    new.write_text(old.replace("priority = 150", "priority = 120", 1))
    sock = ["--socket", str(dir1.socket)]
    done = hapair("config", "check", str(new), *sock)
    assert done.returncode == 0, done
    assert "node.priority: 150 -> 120" in done.stdout
    done = hapair("config", "apply", str(new), *sock)
    assert done.returncode == 0, done
    assert dir1.config.read_text() == new.read_text()
    wait_for(lambda: (dir1.status() or {}).get("priority") == 120, 10)
    history = hapair("config", "history", *sock)
    assert history.returncode == 0 and len(history.stdout.splitlines()) == 2
    shown = hapair("config", "show", *sock)
    assert shown.stdout == new.read_text()

    new.write_text(new.read_text().replace("priority = 120", "priority = 999", 1))
    done = hapair("config", "apply", str(new), *sock)
    assert done.returncode == 2 and "node.priority: " in done.stdout
    assert "priority = 120" in dir1.config.read_text()

    version = history.stdout.splitlines()[1].split()[0]
    done = hapair("config", "rollback", version, *sock)
    assert done.returncode == 0, done
    assert dir1.config.read_text() == old
    wait_for(lambda: (dir1.status() or {}).get("priority") == 150, 10)
