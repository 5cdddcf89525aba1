"""The heartbeat links on real interfaces and real ptys: UDP multicast and unicast between two
namespaces on a bridge, an interface going down and up, and a serial "cable" (a socat pty
pair) that is cut and reconnected.

The UDP adapters run inside the namespaces, each in its own Python process (`NsPython`)
that executes the snippets the test sends it in one event loop, as the agent would.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from topology import Bridge, Netns

from hapair.config.model import SerialLink
from hapair.links import LinkError
from hapair.links.serial import SerialHeartbeatLink

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]

# Runs inside a namespace: each stdin line is a JSON string of Python source, run with
# top-level await in one persistent event loop; it answers with one JSON line.
DRIVER = r"""
import ast, asyncio, json, logging, sys, traceback
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    env = {"asyncio": asyncio}
    while line := await reader.readline():
        try:
            code = compile(json.loads(line), "<test>", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            env.pop("result", None)
            pending = eval(code, env)
            if pending is not None:
                await pending
            reply = {"ok": True, "result": env.get("result")}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        print(json.dumps(reply, default=repr), flush=True)
asyncio.run(main())
"""


class NsPython:
    """A Python process in `netns` (or here, if None) running snippets in one event loop."""

    def __init__(self, netns: Netns | None, log_path: Path) -> None:
        prefix = ["ip", "netns", "exec", netns.name] if netns else []
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", DRIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO,
        )

    def __call__(self, source: str, timeout: float = 20) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(textwrap.dedent(source)) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise AssertionError(f"no answer within {timeout}s; log:\n{self.log_path.read_text()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AssertionError(f"{reply['error']}\nlog:\n{self.log_path.read_text()}")
        return reply["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def ns_python(tmp_path: Path) -> Iterator[Callable[[Netns | None], NsPython]]:
    """`start(netns) -> NsPython`; every process is killed at teardown (before the
    namespaces are deleted, since this fixture is set up after them)."""
    started: list[NsPython] = []

    def start(netns: Netns | None) -> NsPython:
        proc = NsPython(netns, tmp_path / f"driver-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


class UdpPair(NamedTuple):
    a: Netns
    switch: Bridge
    pa: NsPython  # a's process, its link started
    pb: NsPython


@pytest.fixture
def udp_pair(
    netns_factory: Callable[[str], Netns],
    bridge_factory: Callable[..., Bridge],
    ns_python: Callable[[Netns | None], NsPython],
) -> Callable[..., UdpPair]:
    """`start(port, group=...)`: namespaces a (10.77.0.1) and b (10.77.0.2) on one bridge,
    each with a UDP link started in its own process; with no group each side's link has
    the other as its unicast peer."""

    def start(port: int, group: str | None = None) -> UdpPair:
        a, b = netns_factory("a"), netns_factory("b")
        switch = bridge_factory()
        switch.attach(a, "eth0", "10.77.0.1/24")
        switch.attach(b, "eth0", "10.77.0.2/24")
        pa, pb = ns_python(a), ns_python(b)
        if group is None:
            _start_udp(pa, peer="10.77.0.2", port=port)
            _start_udp(pb, peer="10.77.0.1", port=port)
        else:
            _start_udp(pa, group=group, port=port)
            _start_udp(pb, group=group, port=port)
        return UdpPair(a, switch, pa, pb)

    return start


def _start_udp(py: NsPython, **link: Any) -> None:
    py(
        f"""
        from hapair.config.model import UdpLink
        from hapair.links.udp import UdpHeartbeatLink
        got = []
        link = UdpHeartbeatLink(UdpLink(type="udp", interface="eth0", **{link!r}), got.append)
        await link.start()
        """
    )


def _send_until_received(
    sender: NsPython, receiver: NsPython, payload: bytes, timeout: float = 5.0
) -> None:
    """Send every 50 ms until the receiver has `payload` (a fresh link may need a moment)."""
    receiver("got.clear()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sender(f"link.send({payload!r})")
        if receiver(f"result = {payload!r} in got"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{payload!r} never arrived; receiver has {receiver('result = got')}")


def _counters(py: NsPython) -> dict[str, int]:
    return dict(py("result = dict(link.counters)"))


@pytest.mark.parametrize(
    ("group", "v6"),
    [("239.0.0.18", False), ("ff02::18", True)],
    ids=["ipv4", "ipv6"],
)
def test_multicast_heartbeat_reaches_the_peer_and_not_the_sender(
    udp_pair: Callable[..., UdpPair], group: str, v6: bool
) -> None:
    _, _, pa, pb = udp_pair(6940, group)

    _send_until_received(pa, pb, b"from a")
    _send_until_received(pb, pa, b"from b")
    time.sleep(0.2)
    # Loop off: each side received only what the other sent, never its own heartbeats.
    assert pa("result = [p for p in got if p != b'from b']") == []
    assert pb("result = [p for p in got if p != b'from a']") == []
    if v6:  # until DAD of the link-local source address is done (~1 s), sends fail, counted
        assert "EADDRNOTAVAIL" in (pa("result = link.last_error") or "EADDRNOTAVAIL")
    else:
        assert "send_errors" not in _counters(pa)


def test_unicast_peer_mode(udp_pair: Callable[..., UdpPair]) -> None:
    _, _, pa, pb = udp_pair(6941)

    _send_until_received(pa, pb, b"unicast from a")
    _send_until_received(pb, pa, b"unicast from b")
    assert pa("result = [p for p in got if p != b'unicast from b']") == []


def test_interface_down_is_counted_and_the_link_recovers(
    udp_pair: Callable[..., UdpPair],
) -> None:
    a, _, pa, pb = udp_pair(6942, "239.0.0.18")
    _send_until_received(pa, pb, b"before")

    a.ip("link", "set", "dev", "eth0", "down")
    pa("for _ in range(5): link.send(b'while down')")  # must not raise
    down = _counters(pa)
    assert down["send_errors"] == 5
    assert "Network is unreachable" in pa("result = link.last_error")

    a.ip("link", "set", "dev", "eth0", "up")
    _send_until_received(pa, pb, b"after up")
    _send_until_received(pb, pa, b"to a after up")  # a's group membership survived
    assert pb("result = b'while down' in got") is False


def test_interface_recreated_under_a_new_index_reopens_the_socket(
    udp_pair: Callable[..., UdpPair],
) -> None:
    a, switch, pa, pb = udp_pair(6943, "239.0.0.18")
    _send_until_received(pa, pb, b"before")

    a.ip("link", "del", "eth0")
    pa("link.send(b'gone')")
    assert _counters(pa)["send_errors"] == 1
    switch.attach(a, "eth0", "10.77.0.1/24")
    _send_until_received(pa, pb, b"on the new eth0")
    _send_until_received(pb, pa, b"back to a")  # the membership was renewed too
    assert _counters(pa)["rebuilds"] == 1


def test_missing_interface_is_a_clear_error_at_start(
    netns_factory: Callable[[str], Netns], ns_python: Callable[[Netns | None], NsPython]
) -> None:
    py = ns_python(netns_factory("a"))
    with pytest.raises(AssertionError, match="LinkError: udp link on eth9: interface 'eth9'"):
        py(
            """
            from hapair.config.model import UdpLink
            from hapair.links.udp import UdpHeartbeatLink
            link = UdpHeartbeatLink(UdpLink(type="udp", interface="eth9", group="239.0.0.18"),
                                    print)
            await link.start()
            """
        )


# --- serial -------------------------------------------------------------------------------


class Cable:
    """A null-modem cable: a socat pty pair with stable link names `a` and `b`."""

    def __init__(self, folder: Path) -> None:
        self.a, self.b = folder / "a", folder / "b"
        self.proc: subprocess.Popen[bytes] | None = None

    def plug(self) -> None:
        self.proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while not (self.a.exists() and self.b.exists()):
            assert time.monotonic() < deadline, "socat made no ptys"
            time.sleep(0.02)

    def cut(self) -> None:
        """SIGTERM: socat closes the pty masters (the links see EIO) and removes the names.
        (After SIGKILL the names would dangle towards /dev/pts numbers the next pair may
        reuse the other way round.)"""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


@pytest.fixture
def cable(tmp_path: Path) -> Iterator[Cable]:
    made = Cable(tmp_path)
    made.plug()
    yield made
    made.cut()


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _deliver(sender: SerialHeartbeatLink, got: list[bytes], payload: bytes) -> None:
    """Send until `payload` arrives (a freshly reopened port discards what was queued)."""
    deadline = time.monotonic() + 5
    while payload not in got:
        assert time.monotonic() < deadline, f"{payload!r} never arrived; got {got}"
        sender.send(payload)
        await asyncio.sleep(0.05)


def test_serial_frames_both_ways_and_the_link_survives_a_cut_cable(cable: Cable) -> None:
    async def scenario() -> None:
        ga: list[bytes] = []
        gb: list[bytes] = []
        la = SerialHeartbeatLink(
            SerialLink(type="serial", device=cable.a), ga.append, reopen_interval=0.2
        )
        lb = SerialHeartbeatLink(
            SerialLink(type="serial", device=cable.b), gb.append, reopen_interval=0.2
        )
        await la.start()
        await lb.start()
        try:
            await _deliver(la, gb, b"a to b")
            await _deliver(lb, ga, b"b to a")
            for i in range(20):
                la.send(b"burst %d" % i)
            await _until(lambda: b"burst 19" in gb)
            assert [p for p in gb if p.startswith(b"burst")] == [b"burst %d" % i for i in range(20)]

            cable.cut()
            await _until(lambda: not la.connected and not lb.connected)
            la.send(b"into the void")  # must not raise
            await asyncio.sleep(0.5)  # a few reopen attempts against missing devices
            assert la.counters["disconnects"] == 1 and lb.counters["disconnects"] == 1
            assert la.counters["send_errors"] >= 1
            assert la.counters["open_failures"] >= 1

            cable.plug()
            await _deliver(la, gb, b"a to b again")
            await _deliver(lb, ga, b"b to a again")
            assert la.counters["reopens"] == 1 and lb.counters["reopens"] == 1
            assert not la.dropped and not lb.dropped
        finally:
            await la.close()
            await lb.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_serial_device_missing_at_start_is_a_clear_error(tmp_path: Path) -> None:
    link = SerialHeartbeatLink(SerialLink(type="serial", device=tmp_path / "nope"), print)
    with pytest.raises(LinkError, match=r"serial link .*/nope: cannot open"):
        asyncio.run(link.start())
    assert not os.path.exists(tmp_path / "nope")
