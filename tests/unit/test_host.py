"""The agent's chores on its host, in real processes and files: the open-file limit is
raised to the hard one (systemd's soft 1,024 let a flood starve the agent), a state file
is replaced whole, and the heartbeat epoch never goes back."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from hapair.host import atomic_write, next_epoch

pytestmark = pytest.mark.unit


def test_the_soft_file_limit_is_raised_to_the_hard_one() -> None:
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource; from hapair.host import raise_file_limit; raise_file_limit(); "
            "print(*resource.getrlimit(resource.RLIMIT_NOFILE))",
        ],
        capture_output=True,
        text=True,
        preexec_fn=limits,
        timeout=30,
    )
    assert result.stdout.split() == ["2048", "2048"], result.stderr


def test_a_state_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "state" / "lvs1.roster.json"
    atomic_write(path, "first")
    atomic_write(path, "second, longer")
    assert path.read_text() == "second, longer"
    assert sorted(os.listdir(path.parent)) == ["lvs1.roster.json"]  # no temporary left


def test_the_epoch_never_goes_back(tmp_path: Path) -> None:
    (tmp_path / "lvs1.epoch").write_text(str(10**20))  # a clock that was far ahead once
    first = next_epoch("lvs1", tmp_path)
    assert first == 10**20 + 1
    assert next_epoch("lvs1", tmp_path) == first + 1
