"""Hostile and careless input to a running MASTER (tests/pair.py, real agents in
namespaces): control-socket lines and floods, and reloads of every kind of broken file.
None of it may kill, move or silence the MASTER: it stays MASTER with the same process,
its VIP stays, its peer stays BACKUP, and the kernel's addresses and routes are what
they were, byte for byte."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pair import AGAINST_A_PAIR, VIP, Director, Lab, started, wait_for

from hapair import control, control_client
from lab.config import service

pytestmark = pytest.mark.netns

SAME_MOMENT = 0.05  # s: two `since` this close are the same state change

SERVICE = {"services": [service("web", VIP, 80, forward="dr", real_servers=["10.77.0.10"])]}


def kernel_view(d: Director) -> str:
    """What the kernel holds for the director: every address and route (not the links'
    carrier flags, which the bridges change on their own)."""
    return "\n".join(
        d.ns.ip(*args).stdout
        for args in (
            ("-o", "addr"),
            ("route", "show", "table", "all"),
            ("-6", "route", "show", "table", "all"),
        )
    )


@pytest.fixture
def pair(lab_factory: Callable[..., Lab]) -> Iterator[Lab]:
    lab = started(lab_factory(SERVICE))
    yield lab


def assert_undisturbed(lab: Lab, pid: int, since: float, kernel: str | None = None) -> None:
    dir1, dir2 = lab.dirs
    assert dir1.proc is not None and dir1.proc.poll() is None and dir1.proc.pid == pid
    status = dir1.status()
    assert status is not None and status["state"] == "MASTER", status
    # `since` is wall time computed from the loop's clock at each ask: it jitters by 1 ms.
    assert abs(status["since"] - since) < SAME_MOMENT, "dir1 changed state and back"
    assert dir2.state() == "BACKUP"
    assert lab.holders() == ["dir1"]
    if kernel is not None:
        assert kernel_view(dir1) == kernel


def raw_ask(path: Path, data: bytes, timeout: float = 10.0) -> dict[str, Any]:
    """Send raw bytes from a thread (a client that writes a lot) and read the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))

        def send() -> None:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        writer = threading.Thread(target=send)
        writer.start()
        line = sock.makefile("rb").readline()
        writer.join(timeout)
    return dict(json.loads(line))


KILLERS = [
    b'{"cmd":"drain","service":"web","server":"10.77.0.10:80","weight":1e999}\n',
    b'{"cmd":"drain","service":"web","server":"10.77.0.10:80","weight":NaN}\n',
    b'{"cmd":"add","service":"web","server":"10.77.0.11:80","weight":Infinity}\n',
    b'{"cmd":[]}\n',
    b'{"cmd":{}}\n',
    b"[" * 5000 + b"]" * 5000 + b"\n",
    b'{"cmd":"status","pad":"' + b"x" * (2 << 20) + b'"}\n',
    b"\x00\xff" * 1000 + b"\n",
]


def test_control_socket_answers_every_line_and_the_master_lives(pair: Lab) -> None:
    """The lines that once killed the MASTER (`int(inf)` in its control handler), or that
    closed the connection without an answer; then a few hundred generated ones."""
    dir1 = pair.dirs[0]
    assert dir1.proc is not None
    pid, since = dir1.proc.pid, dir1.status()["since"]  # type: ignore[index]
    for line in KILLERS:
        reply = raw_ask(dir1.socket, line)
        assert reply["ok"] is False and reply["error"], (line[:80], reply)
    asked = [0]

    @AGAINST_A_PAIR
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.fixed_dictionaries(
                {"cmd": st.sampled_from(sorted(control.COMMANDS - {"release"}))},
                optional={
                    "service": st.one_of(st.text(max_size=20), st.just("web"), st.integers()),
                    "server": st.one_of(
                        st.text(max_size=30), st.just("10.77.0.10:80"), st.floats()
                    ),
                    "weight": st.one_of(st.integers(), st.floats(), st.booleans(), st.none()),
                },
            ).map(lambda d: json.dumps(d).encode()),
        )
    )
    def line_gets_an_answer(data: bytes) -> None:
        reply = raw_ask(dir1.socket, data.replace(b"\n", b" ") + b"\n")
        assert isinstance(reply.get("ok"), bool)
        asked[0] += 1

    line_gets_an_answer()
    print(f"control socket: {len(KILLERS) + asked[0]} hostile lines answered")
    assert_undisturbed(pair, pid, since)
    # And the socket still does its job.
    done = control_client.request(
        dir1.socket, {"cmd": "drain", "service": "web", "server": "10.77.0.10"}
    )
    assert done == {"ok": True, "result": "10.77.0.10:80 of web drained"}, done


def test_a_connect_flood_leaves_the_cli_its_answer(pair: Lab) -> None:
    """Four processes connect to the control socket as fast as they can, holding what
    they open: `hapair status` still answers (it once said "no agent", exit 3, because a
    full listen backlog made connect() fail at once)."""
    dir1 = pair.dirs[0]
    assert dir1.proc is not None
    pid, since = dir1.proc.pid, dir1.status()["since"]  # type: ignore[index]
    flood = f"""
import socket, time
held, end = [], time.monotonic() + 8
while time.monotonic() < end:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect({str(dir1.socket)!r})
        held.append(s)
    except OSError:
        s.close()
    if len(held) > 400:
        held.pop(0).close()
"""
    flooders = [subprocess.Popen([sys.executable, "-c", flood]) for _ in range(4)]
    try:
        time.sleep(1)
        codes = []
        for _ in range(5):
            result = subprocess.run(
                [sys.executable, "-m", "hapair", "status", "--socket", str(dir1.socket)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            codes.append(result.returncode)
            assert result.returncode == 0, result.stderr
    finally:
        for proc in flooders:
            proc.kill()
            proc.wait()
    assert codes == [0] * 5
    assert_undisturbed(pair, pid, since)


# The SIGHUP matrix: (name, what to do to the config text (or the files), what the
# refusal names). Each leaves the running config, state and kernel as they were.
Break = Callable[[str, Director, Path], str | None]


def _text(change: Callable[[str], str]) -> Break:
    return lambda text, d, tmp: change(text)


def _sub(old: str, new: str) -> Break:
    def change(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return _text(change)


def _missing(text: str, d: Director, tmp: Path) -> None:
    d.config.unlink()


def _a_directory(text: str, d: Director, tmp: Path) -> None:
    d.config.unlink()
    d.config.mkdir()


def _key_readable_by_all(text: str, d: Director, tmp: Path) -> str:
    key = tmp / "open-key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    return text.replace(f'auth_key_file = "{tmp / "authkey"}"', f'auth_key_file = "{key}"')


def _vip(address: str, interface: str = "eth0") -> str:
    return f'\n[[vips]]\naddress = "{address}"\ninterface = "{interface}"\n'


def _ipv6_refused(text: str, d: Director, tmp: Path) -> str:
    """A new IPv4 VIP that the kernel takes, then an IPv6 one it refuses (IPv6 is off):
    applying fails midway, and the IPv4 one must go again."""
    return text + _vip("10.77.0.102/24") + _vip("fd77::100/64")


SIGHUPS: list[tuple[str, Break, str]] = [
    ("syntax", _text(lambda t: t + "\n[[[\n"), "toml: syntax error"),
    ("schema", _sub("[cluster]", "[cluster]\nintervall = 1"), "cluster.intervall: unknown key"),
    ("rules", _sub("deadtime = 0.6", "deadtime = 0.05"), "cluster.deadtime:"),
    ("nesting", _text(lambda t: t + "x = " + "[" * 3000 + "]" * 3000 + "\n"), "nested"),
    ("401-digit duration", _sub("interval = 0.1", "interval = " + "9" * 401), "64 bits"),
    ("5000-digit integer", _text(lambda t: t + "z = " + "9" * 5000 + "\n"), "4300 digits"),
    ("missing file", _missing, "No such file"),
    ("a directory", _a_directory, "Is a directory"),
    ("missing key", _sub('auth_key_file = "', 'auth_key_file = "/nonexistent'), "auth_key_file"),
    ("key readable by all", _key_readable_by_all, "world-readable"),
    ("VIP on a missing interface", _text(lambda t: t + _vip("10.77.0.101/24", "eth9")), "eth9"),
    ("VIP that is the host's own", _text(lambda t: t + _vip("10.77.0.1/24")), "already an address"),
    ("link port", _sub("port = 6694", "port = 6695"), "cluster.links.0.port: 6694 -> 6695"),
    ("node name", _sub('name = "dir1"', 'name = "dir9"'), "node.name: 'dir1' -> 'dir9'"),
    (
        "monitor added",
        _text(
            lambda t: (
                t
                + '\n[monitor]\nlisten = "127.0.0.1:8443"\ntls_cert = "c"\ntls_key = "k"\n'
                + 'users_file = "u"\n'
            )
        ),
        "monitor: (none) -> {'listen': '127.0.0.1:8443'",
    ),
    ("applying fails midway", _ipv6_refused, "VIP fd77::100/64 on eth0: cannot add"),
]


def test_sighup_with_a_broken_file_keeps_the_running_config(pair: Lab, tmp_path: Path) -> None:
    dir1, _dir2 = pair.dirs
    assert dir1.proc is not None
    pid, since = dir1.proc.pid, dir1.status()["since"]  # type: ignore[index]
    good = dir1.config.read_text()
    # No IPv6 on dir1: its link-local addresses would come and go on their own, and the
    # kernel then refuses the IPv6 VIP of the case that fails midway.
    for ifname in ("all", "default", "eth0", "eth1", "lo"):
        dir1.ns.run("sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1")
    kernel = kernel_view(dir1)

    def reload(why: str) -> dict[str, Any]:
        before = (dir1.status() or {}).get("reload")
        dir1.signal(signal.SIGHUP)
        wait_for(lambda: (dir1.status() or {}).get("reload") != before, 10)
        outcome = (dir1.status() or {})["reload"]
        print(f"{why}: {outcome}")
        return dict(outcome)

    for name, breaks, reason in SIGHUPS:
        text = breaks(good, dir1, tmp_path)
        if text is not None:
            dir1.config.write_text(text)
        outcome = reload(name)
        assert outcome["ok"] is False and reason in outcome["error"], (name, outcome)
        assert_undisturbed(pair, pid, since, kernel)
        if dir1.config.is_dir():
            dir1.config.rmdir()
        dir1.config.write_text(good)

    # A good reload still does its job: the new VIP is taken at once.
    dir1.config.write_text(good + _vip("10.77.0.103/24"))
    outcome = reload("a good file")
    assert outcome["ok"] is True and outcome["error"] is None
    assert " 10.77.0.103/24 " in dir1.ns.ip("-o", "addr", "show", "dev", "eth0").stdout
    assert_undisturbed(pair, pid, since)
