"""The prober against a real TCP server on 127.0.0.1: a server that dies is down within
fall x interval + timeout, back within rise x interval; unchanged targets keep state."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from ipaddress import ip_address

import pytest

from hapair.config.checks import TcpProbe
from hapair.probes.prober import Prober, Target

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


def test_probes_of_other_types_run_beside_tcp_ones() -> None:
    """TCP probes run from callbacks, every other type from its own task: in one prober
    each kind reaches its verdict (a real process for the script probe, a real listener
    for the TCP one)."""
    from hapair.config.checks import ScriptProbe

    def script(command: str) -> ScriptProbe:
        return ScriptProbe(type="script", command=command, interval=0.1, rise=1, fall=1)

    async def main() -> dict[object, bool]:
        server = listener()
        verdicts: dict[object, bool] = {}
        prober = Prober(lambda key, up, _reason: verdicts.__setitem__(key, up))
        address, port = server.getsockname()
        prober.sync(
            {
                "tcp": Target(PROBE, ip_address(address), port, False),
                "ok": Target(script("true"), ip_address(address), port, False),
                "fails": Target(script("false"), ip_address(address), port, True),
            }
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        while len(verdicts) < 3 and loop.time() - start < 10:
            await asyncio.sleep(0.05)
        await prober.close()
        server.close()
        return verdicts

    assert asyncio.run(main()) == {"tcp": True, "ok": True, "fails": False}


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
    import hapair.probes.prober as prober_module

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


def test_a_flood_of_tcp_probes_leaves_the_event_loop_free_for_heartbeats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Far more probes due than one core can make (3,000 targets every 0.1 s, to a port
    that refuses at once): no turn of the event loop may spend more than a few slices
    of CPU on probes, or the agent's heartbeat timers would wait behind a thousand
    connects (seconds in a slow VM). Measured in CPU time of this thread, so a busy
    machine that preempts the test does not count against it. The slice is set short
    here: a turn that ignored it (one callback for every completion and start, as
    before) took 55 ms on the development host."""
    import hapair.probes.tcp as tcp

    monkeypatch.setattr(tcp, "SLICE", 0.005)
    probe = TcpProbe(type="tcp", interval=0.1, timeout=0.5, rise=1, fall=1)

    async def main() -> tuple[float, int]:
        closed = listener()
        port = closed.getsockname()[1]
        closed.close()  # nothing listens there: each connect is refused at once
        prober = Prober(lambda *_: None)
        prober.sync({n: Target(probe, ip_address("127.0.0.1"), port, True) for n in range(3000)})
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.2)  # the targets' tasks have run and made their state
        gc.collect()
        gc.freeze()  # as the agent does once started: no full collection of that state
        try:
            worst, last = 0.0, time.thread_time()
            end = loop.time() + 2.5
            while loop.time() < end:
                await asyncio.sleep(0)  # one turn of the loop per step
                now = time.thread_time()
                if loop.time() > end - 2.0:  # after the first interval's spread
                    worst = max(worst, now - last)
                last = now
        finally:
            gc.unfreeze()
        probed = sum(1 for w in prober.watches.values() if w.last is not None)
        await prober.close()
        return worst, probed

    worst, probed = asyncio.run(main())
    assert probed == 3000, probed
    # Four callbacks may share a turn (completions, starts, the sweep, its starts).
    assert worst < 4 * tcp.SLICE + 0.01, f"one turn of the loop took {worst * 1000:.0f} ms"


def test_a_connect_that_completed_while_the_loop_was_busy_is_up_not_timed_out() -> None:
    """The deadline sweep can come round before the loop has looked at a completion that
    waits in the epoll set (a saturated director): that probe answered, so it is up.
    One the server never answered is still a timeout."""
    import hapair.probes.tcp as tcp

    async def main() -> list[object]:
        answering = listener()
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        filler = socket.create_connection(silent.getsockname())  # its queue is full now
        connector = tcp.Connector()
        results: list[object] = []
        for server in (answering, silent):
            address, port = server.getsockname()
            connector.start(tcp.prepare(ip_address(address), port), 0.05, results.append)
        time.sleep(0.2)  # busy: past both deadlines, and the loop has looked at nothing
        connector._sweep()
        connector.close()
        for s in (filler, answering, silent):
            s.close()
        return results

    up, silent = asyncio.run(main())
    assert up.ok and up.reason.endswith("connected"), up  # type: ignore[attr-defined]
    assert not silent.ok and "no answer within 0.05s" in silent.reason, silent  # type: ignore[attr-defined]


def test_connects_answered_in_time_do_not_wake_the_loop_at_their_deadlines() -> None:
    """Every start leaves a deadline behind; once its connect is answered, that deadline
    needs no sweep. A start every 10 ms for 1 s, timeout 0.3 s, all answered: a sweep at
    each deadline would be ~100 wake-ups; one per timeout span is enough (the code before
    swept at every one)."""
    import hapair.probes.tcp as tcp

    async def main() -> tuple[int, list[object]]:
        server = listener()
        server.listen(512)  # nobody accepts: the queue holds every connect
        address, port = server.getsockname()
        target = tcp.prepare(ip_address(address), port)
        connector = tcp.Connector()
        sweeps = 0
        sweep = connector._sweep

        def counted() -> None:
            nonlocal sweeps
            sweeps += 1
            sweep()

        connector._sweep = counted  # type: ignore[method-assign]
        results: list[object] = []
        for _ in range(100):
            connector.start(target, 0.3, results.append)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.4)
        connector.close()
        server.close()
        return sweeps, results

    sweeps, results = asyncio.run(main())
    assert len(results) == 100 and all(r.ok for r in results), results  # type: ignore[attr-defined]
    assert sweeps <= 10, f"{sweeps} sweeps for 100 connects answered in time"
