"""A real agent under systemd's notify protocol, as systemd would see it: the datagrams on
a socket of the test's with each sender's credentials (SO_PASSCRED, as systemd reads them
for NotifyAccess=main), while the agent fails over, reloads, freezes and stops."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pair import Lab, wait_for

pytestmark = pytest.mark.netns

WATCHDOG_USEC = 400_000  # pets every 0.1 s


class Systemd:
    """systemd's end of NOTIFY_SOCKET: every datagram, its sender's pid and when it came
    (read by a thread of its own as it arrives)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.1)
        self.seen: list[tuple[float, int, str]] = []
        self.running = True
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while self.running:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, size)
            except TimeoutError:
                continue
            pid = -1
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", value[: struct.calcsize("3i")])[0]
            self.seen.append((time.monotonic(), pid, data.decode()))

    def read(self) -> list[tuple[float, int, str]]:
        return list(self.seen)

    def messages(self, since: float = 0.0) -> list[str]:
        return [m for t, _, m in self.read() if t >= since]

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    end = Systemd(tmp_path / "notify")
    yield end
    end.close()


def test_ready_status_watchdog_reload_and_stop(
    lab_factory: Callable[..., Lab],
    systemd: Systemd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = lab_factory()
    dir1, dir2 = lab.dirs
    # dir1 runs under "systemd": its standard error is the journal's stream (its log file
    # here); dir2 does not, and logs JSON.
    dir1.log.touch()
    stream = os.stat(dir1.log)
    monkeypatch.setenv("JOURNAL_STREAM", f"{stream.st_dev}:{stream.st_ino}")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    dir1.start()
    for name in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(name)
    dir2.options = ("--log-format", "json")
    wait_for(lambda: "READY=1" in systemd.messages(), 30)
    assert dir1.socket.exists()  # READY once the control socket listens
    dir2.start()
    wait_for(lambda: lab.masters() == ["dir1"] and dir2.state() == "BACKUP", 30)
    line = "STATUS=MASTER, peer dir2 BACKUP, 1 VIP held"
    wait_for(lambda: line in systemd.messages(), 10)
    assert dir1.proc is not None
    senders = {pid for _, pid, _ in systemd.read()}
    assert senders == {dir1.proc.pid}, senders  # the main process only: NotifyAccess=main

    # The watchdog: at least every WATCHDOG_USEC / 2 while the loop runs, never when not.
    start = time.monotonic()
    time.sleep(1.0)
    pets = [t for t, _, m in systemd.read() if m == "WATCHDOG=1" and t >= start]
    assert len(pets) >= 5, pets
    gaps = [b - a for a, b in zip([start, *pets], pets, strict=False)]
    assert max(gaps) < WATCHDOG_USEC / 2e6, gaps

    # SIGHUP: RELOADING=1 with the time, then READY=1 again; the state stays.
    hup = time.monotonic()
    dir1.signal(signal.SIGHUP)
    wait_for(lambda: "READY=1" in systemd.messages(hup), 10)
    after = [m for m in systemd.messages(hup) if m != "WATCHDOG=1"]
    assert after[0].startswith("RELOADING=1\nMONOTONIC_USEC="), after
    assert after.index("READY=1") > 0 and dir1.state() == "MASTER"

    # Frozen (SIGSTOP), the loop says nothing; thawed, it pets again.
    dir1.signal(signal.SIGSTOP)
    frozen = time.monotonic()
    time.sleep(0.6)
    assert "WATCHDOG=1" not in systemd.messages(frozen + 0.05)
    dir1.signal(signal.SIGCONT)
    thawed = time.monotonic()
    wait_for(lambda: "WATCHDOG=1" in systemd.messages(thawed), 5)
    # Frozen past the deadtime, it woke to a peer that had taken over: it stepped down.
    wait_for(lambda: "STATUS=BACKUP, peer dir2 MASTER, 0 VIPs held" in systemd.messages(), 10)

    # dir2 dies: the status says so. Then SIGTERM: STOPPING=1.
    dir2.signal(signal.SIGKILL)
    wait_for(lambda: "STATUS=MASTER, peer dir2 not heard, 1 VIP held" in systemd.messages(), 10)
    term = time.monotonic()
    dir1.signal(signal.SIGTERM)
    assert dir1.proc.wait(10) == 0
    last = [m for m in systemd.messages(term) if m != "WATCHDOG=1"]
    assert last[0] == "STOPPING=1", last

    # The journal's lines: a syslog priority each, no time of hapair's own.
    lines = dir1.log.read_text().splitlines()
    assert lines and all(re.fullmatch(r"<[2-7]>\S.*", line) for line in lines), lines
    assert any(line.startswith("<4>peer_lost: dir2") for line in lines), lines
    assert "<6>dir1 stopped" in lines
    # dir2's: one JSON object a line, its events named as its alerts are.
    entries = [json.loads(line) for line in dir2.log.read_text().splitlines()]
    assert {e["node"] for e in entries} == {"dir2"}
    events = [e["event"] for e in entries]
    assert {"state_change", "peer_lost", "log"} <= set(events), events
    took = next(
        e for e in entries if e["event"] == "state_change" and e["fields"].get("new") == "MASTER"
    )
    assert took["level"] == "info" and took["fields"]["old"] == "BACKUP", took
