"""`scripts/lab up` and `demo` refuse while a lab is up, and leave that lab alone (they
used to tear it down on the way out of their refusal)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import lab.commands
import lab.shell
import lab.topology

pytestmark = pytest.mark.netns


def test_up_and_demo_refuse_a_second_lab_and_leave_the_first_alone(tmp_path: Path) -> None:
    running = lab.topology.ns_name("client")  # one namespace of a lab that is up
    if running in lab.shell.existing_namespaces():
        pytest.skip(f"a real lab is up here ({running})")
    subprocess.run(["ip", "netns", "add", running], check=True)
    marker = tmp_path / "lab" / "in-use"
    marker.parent.mkdir()
    marker.write_text("the running lab's files")
    try:
        with pytest.raises(lab.shell.LabError, match="already up"):
            lab.commands.cmd_up("dr", tmp_path / "lab")
        assert running in lab.shell.existing_namespaces()
        assert marker.exists()

        result = lab.commands.cmd_demo("dr", tmp_path / "lab", connections=2)
        assert "already up" in (result.error or "")
        assert not result.failover_ok
        assert running in lab.shell.existing_namespaces()
        assert marker.exists()
        assert result.leftovers == []
    finally:
        subprocess.run(["ip", "netns", "del", running], check=False)
