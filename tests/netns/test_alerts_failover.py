"""Alerts from two real agents in namespaces: a handover reaches a real SMTP server and a
real pager endpoint (lab/alert_sinks.py in a namespace of its own on the public bridge),
and each director's notify scripts run for its own state changes, in order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pair import Lab, started, wait_for
from topology import Netns

from lab import shell

pytestmark = pytest.mark.netns

SINK = "10.77.0.50"  # on the directors' public network


def alerts_toml(notify_log: Path) -> str:
    script = json.dumps(f"/bin/sh -c 'echo $HAPAIR_NODE $HAPAIR_STATE >> {notify_log}'")
    return f"""
[alerts]
min_interval = "0s"
[alerts.email]
smtp = "{SINK}:2525"
from = "hapair@example.org"
to = ["oncall@example.org"]
[alerts.pager]
url = "http://{SINK}:8080/alert"
timeout = "2s"
[alerts.scripts]
on_master = {script}
on_backup = {script}
"""


def start_sinks(lab: Lab, ns: Netns, received: Path) -> None:
    lab.public.attach(ns, "eth0", f"{SINK}/24")
    argv = [sys.executable, "-m", "lab.alert_sinks", SINK, "2525", "8080", str(received)]
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *argv], stdout=subprocess.PIPE)
    # Stopped at the lab's teardown, after the agents stopped.
    lab.extra.append(lambda: shell.stop(proc))
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"


def test_a_handover_alerts_by_email_and_pager_and_runs_the_notify_scripts(
    lab_factory: Callable[..., Lab], netns_factory: Callable[[str], Netns], tmp_path: Path
) -> None:
    notify_log, received = tmp_path / "notify.log", tmp_path / "received.jsonl"
    lab = lab_factory(alerts_toml(notify_log))
    start_sinks(lab, netns_factory("sinks"), received)
    started(lab)
    dir1, dir2 = lab.dirs

    def alerts() -> list[dict[str, Any]]:
        text = received.read_text() if received.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def got(channel: str, node: str, state: str) -> bool:
        return any(
            a["channel"] == channel
            and (
                a.get("node") == node and a.get("details", {}).get("state") == state
                if channel == "pager"
                else a["subject"].startswith(f"[hapair] {node} state_change: {node} is now {state}")
            )
            for a in alerts()
        )

    dir1.signal(signal.SIGTERM)  # a MASTER leaving: dir2 takes over at once
    wait_for(lambda: dir2.state() == "MASTER", 15)
    wait_for(lambda: got("email", "dir2", "MASTER") and got("pager", "dir2", "MASTER"), 15)
    # dir1's own last word, sent while it stopped (close waits a moment for it).
    assert dir1.proc is not None and dir1.proc.wait(10) == 0
    assert got("email", "dir1", "STOPPED") and got("pager", "dir1", "STOPPED")

    both = {"email", "pager"}
    ids = {(a["channel"], a["id"]) for a in alerts()}
    assert len(ids) == len(alerts())  # the sinks dedup by id; nothing was received twice
    pager = {a["id"]: a for a in alerts() if a["channel"] == "pager"}
    email = {a["id"] for a in alerts() if a["channel"] == "email"}
    assert set(pager) == email  # every alert on both channels, under one id
    [master] = [a for a in pager.values() if (a["node"], a["subject"]) == ("dir2", "MASTER")]
    assert (master["event"], master["severity"]) == ("state_change", "warning")
    assert master["details"]["old_state"] == "BACKUP"

    wait_for(lambda: notify_log.exists() and "dir2 MASTER" in notify_log.read_text(), 10)
    status: Any = dir2.status()
    assert status["alerts"]["queued"] == 0
    [took_over] = [r for r in status["alerts"]["recent"] if r["id"] == master["id"]]
    assert took_over["delivered"] == {"email": True, "pager": True, "script": True}

    lines = notify_log.read_text().splitlines()
    assert [line for line in lines if line.startswith("dir2")] == ["dir2 BACKUP", "dir2 MASTER"]
    assert "dir1 MASTER" in lines

    # A refused reload is an alert too (and dir2 runs on as before).
    dir2.config.write_text(dir2.config.read_text().replace("priority = 100", "priority = 999"))
    dir2.signal(signal.SIGHUP)
    wait_for(lambda: {a["channel"] for a in alerts() if "reload_failed" in str(a)} == both, 10)
    [refused] = [a for a in alerts() if a.get("event") == "reload_failed"]
    assert refused["severity"] == "warning" and "node.priority" in refused["summary"]
    assert dir2.state() == "MASTER"


def test_alerts_of_a_failover_while_the_sinks_are_down_arrive_once_they_are_back(
    lab_factory: Callable[..., Lab], netns_factory: Callable[[str], Netns], tmp_path: Path
) -> None:
    notify_log, received = tmp_path / "notify.log", tmp_path / "received.jsonl"
    lab = started(lab_factory(alerts_toml(notify_log)))  # no SMTP server, no pager yet
    dir1, dir2 = lab.dirs
    dir1.signal(signal.SIGKILL)  # an unplanned failover: dir1 says nothing
    wait_for(lambda: dir2.state() == "MASTER", 15)
    status: Any = dir2.status()
    owed = status["alerts"]["queued"]
    assert owed > 0  # spooled, not lost

    time.sleep(2)
    start_sinks(lab, netns_factory("sinks"), received)
    alerts: list[dict[str, Any]] = []

    def delivered() -> bool:
        nonlocal alerts
        text = received.read_text() if received.exists() else ""
        alerts = [json.loads(line) for line in text.splitlines()]
        now: Any = dir2.status()
        return now is not None and now["alerts"]["queued"] == 0

    took = wait_for(delivered, 90, step=0.5)
    print(f"{owed} alerts owed at the takeover; all delivered {took:.1f} s after the sinks came up")
    subjects = [a["subject"] for a in alerts if a["channel"] == "email"]
    assert any(s.startswith("[hapair] dir2 state_change: dir2 is now MASTER") for s in subjects)
    assert any(a["channel"] == "pager" and a.get("event") == "peer_lost" for a in alerts)
    ids = [(a["channel"], a["id"]) for a in alerts]
    assert len(ids) == len(set(ids))  # each once
    assert {i for c, i in ids if c == "email"} == {i for c, i in ids if c == "pager"}
