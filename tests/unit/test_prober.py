"""The prober against a real TCP server on 127.0.0.1: a server that dies is down within
fall x interval + timeout, back within rise x interval; unchanged targets keep state."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address

import pytest

from hapair.config.model import TcpProbe
from hapair.prober import Prober, Target

pytestmark = pytest.mark.unit

PROBE = TcpProbe(type="tcp", interval=0.2, timeout=0.2, rise=2, fall=3)
SLACK = 0.3  # event-loop scheduling on a loaded machine


def listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


async def until(verdicts: list[tuple[object, bool]], want: bool, limit: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not (verdicts and verdicts[-1][1] is want):
        assert loop.time() - start < limit, f"no {'up' if want else 'down'} verdict in {limit}s"
        await asyncio.sleep(0.01)
    return loop.time() - start


def test_down_and_up_within_their_bounds() -> None:
    async def main() -> tuple[float, float]:
        server = listener()
        port = server.getsockname()[1]
        verdicts: list[tuple[object, bool]] = []
        prober = Prober(lambda key, ok, reason: verdicts.append((key, ok)))
        prober.sync({"rs": Target(PROBE, ip_address("127.0.0.1"), port, True)})
        await asyncio.sleep(0.5)
        assert verdicts == [] and prober.verdicts() == {"rs": True}
        server.close()
        down = await until(verdicts, False, 5)
        server = listener(port)
        up = await until(verdicts, True, 5)
        assert prober.watches["rs"].last.ok
        await prober.close()
        server.close()
        return down, up

    down, up = asyncio.run(main())
    assert down <= PROBE.fall * PROBE.interval + PROBE.timeout + SLACK, down
    assert up <= PROBE.rise * PROBE.interval + SLACK, up


def test_sync_keeps_unchanged_targets_and_starts_new_ones_down_when_asked() -> None:
    async def main() -> None:
        prober = Prober(lambda *_: None)
        target = Target(PROBE, ip_address("127.0.0.1"), 9, True)
        prober.sync({"a": target})
        first = prober.watches["a"]
        prober.sync({"a": target, "b": Target(PROBE, ip_address("127.0.0.1"), 9, False)})
        assert prober.watches["a"] is first
        assert prober.verdicts() == {"a": True, "b": False}
        prober.sync({"b": prober.watches["b"].target})
        assert set(prober.watches) == {"b"} and first.task is not None
        await asyncio.sleep(0)
        assert first.task.cancelled() or first.task.done()
        await prober.close()

    asyncio.run(main())


def test_tcp_probes_keep_to_the_cap_and_every_target_gets_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener that never accepts (backlog full: further SYNs are dropped) makes every
    connect hang until its timeout; 20 targets under a cap of 4 never have more than 4
    in flight, yet each one is probed (a due probe waits for a slot, it is not lost)."""
    import hapair.prober as prober_module

    monkeypatch.setattr(prober_module, "MAX_CONCURRENT", 4)
    probe = TcpProbe(type="tcp", interval=0.5, timeout=0.2, rise=1, fall=1)

    async def main() -> tuple[int, int, list[object]]:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        prober = Prober(lambda *_: None)
        prober.sync({n: Target(probe, ip_address("127.0.0.1"), port, True) for n in range(20)})
        most = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 3.0
        while loop.time() < end and any(w.last is None for w in prober.watches.values()):
            if prober._connector is not None:
                most = max(most, len(prober._connector))
            await asyncio.sleep(0.005)
        last = [w.last for w in prober.watches.values()]
        timed_out = sum(1 for r in last if r is not None and "no answer within" in r.reason)
        await prober.close()
        server.close()
        return most, timed_out, last

    most, timed_out, last = asyncio.run(main())
    assert None not in last, "a target was never probed"
    assert most == 4, most
    assert timed_out >= 15, last  # the listener's queue takes at most a few
