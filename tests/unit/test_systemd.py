"""systemd's notify protocol (hapair/systemd.py) against a real AF_UNIX datagram socket,
by path and in the abstract namespace, as systemd listens for it."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hapair.systemd import MAX_STATUS, Notifier, status_line

pytestmark = pytest.mark.unit


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """systemd's end: a bound datagram socket and the NOTIFY_SOCKET that names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting, in order."""
    out = []
    sock.settimeout(0.2)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            return out


def test_each_message_is_one_datagram_to_the_path(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notify = Notifier({"NOTIFY_SOCKET": path})
    assert notify.enabled and not notify.ready_sent
    notify.ready()
    notify.status("MASTER, peer lvs2 BACKUP, 2 VIPs held")
    notify.watchdog()
    notify.stopping()
    assert received(sock) == [
        "READY=1",
        "STATUS=MASTER, peer lvs2 BACKUP, 2 VIPs held",
        "WATCHDOG=1",
        "STOPPING=1",
    ]
    assert notify.ready_sent
    notify.close()


def test_an_abstract_socket_is_named_with_an_at() -> None:
    name = f"hapair-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        notify = Notifier({"NOTIFY_SOCKET": "@" + name})
        notify.ready()
        assert sock.recv(64) == b"READY=1"
        notify.close()


def test_reloading_says_when_then_ready_even_if_the_reload_fails(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notify = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with pytest.raises(RuntimeError), notify.reloading():
        raise RuntimeError("the reload broke")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = received(sock)
    lines = dict(line.split("=", 1) for line in first.split("\n"))
    assert lines.keys() == {"RELOADING", "MONOTONIC_USEC"} and lines["RELOADING"] == "1"
    assert before <= int(lines["MONOTONIC_USEC"]) <= after
    assert second == "READY=1"


def test_status_is_one_line_bounded_and_sent_when_it_changes(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notify = Notifier({"NOTIFY_SOCKET": path})
    notify.status("BACKUP,\npeer lvs1\nMASTER")
    notify.status("BACKUP, peer lvs1 MASTER")  # the same line: nothing sent
    notify.status("x" * 1000)
    assert received(sock) == ["STATUS=BACKUP, peer lvs1 MASTER", "STATUS=" + "x" * MAX_STATUS]


@pytest.mark.parametrize(
    ("env", "every"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 0.5),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_is_petted_four_times_a_period(env: dict[str, str], every: Any) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/run/x", **env}).watchdog_every == every


@pytest.mark.parametrize("value", ["", "relative/path", "@", "vsock:2:1234"])
def test_without_a_socket_it_speaks_the_agent_says_nothing(value: str) -> None:
    notify = Notifier({"NOTIFY_SOCKET": value})
    assert not notify.enabled
    notify.ready()  # nothing to send it to, and no error
    notify.watchdog()


def test_a_socket_gone_is_logged_once_and_never_raised(
    listener: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, path = listener
    notify = Notifier({"NOTIFY_SOCKET": path})
    os.unlink(path)
    with caplog.at_level(logging.WARNING, logger="hapair"):
        for _ in range(5):
            notify.watchdog()
    assert len([r for r in caplog.records if "notify" in r.getMessage()]) == 1


def node(state: str, peer: str | None, peer_state: str | None, alive: bool) -> Any:
    heartbeat = SimpleNamespace(state=peer_state) if peer_state else None
    return SimpleNamespace(
        state=state,
        peer=SimpleNamespace(name=peer, heartbeat=heartbeat),
        detector=SimpleNamespace(peer_alive=alive),
    )


@pytest.mark.parametrize(
    ("state", "held", "vips", "line"),
    [
        (("MASTER", "lvs2", "BACKUP", True), True, 2, "MASTER, peer lvs2 BACKUP, 2 VIPs held"),
        (("BACKUP", "lvs1", "MASTER", True), False, 2, "BACKUP, peer lvs1 MASTER, 0 VIPs held"),
        (("MASTER", "lvs2", "BACKUP", False), True, 1, "MASTER, peer lvs2 not heard, 1 VIP held"),
        (("INIT", None, None, False), False, 1, "INIT, no peer heard, 0 VIPs held"),
    ],
)
def test_the_status_line(
    state: tuple[str, str | None, str | None, bool], held: bool, vips: int, line: str
) -> None:
    assert status_line(node(*state), held, vips) == line
