"""The checker in a process of its own: one probe per distinct check and its verdict fanned
out to every (service, real server) that names it, the messages between the agent and
the checker, when a checker that died is started again, and a real checker process
probing a real TCP server on 127.0.0.1 for the services side."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import samples
from hypothesis import given, settings
from hypothesis import strategies as st

from hapair.alerts import Alerter
from hapair.checker import channel
from hapair.checker.client import HANG, RESULTS_FRESH
from hapair.config import validate
from hapair.config.checks import HttpProbe, TcpProbe
from hapair.core import respawn
from hapair.core.shared_probes import SharedProbes, Target
from hapair.ipvs.table import DestKey
from hapair.services import Services

pytestmark = pytest.mark.unit

TCP = TcpProbe(type="tcp", interval=0.2, timeout=0.5, rise=1, fall=1)
RS = ip_address("10.0.0.11")


# Sharing: pure.


def test_two_services_naming_one_server_with_one_probe_share_it() -> None:
    shared: SharedProbes[str] = SharedProbes()
    plan = shared.plan({"web": Target(TCP, RS, 80, True), "api": Target(TCP, RS, 80, True)})
    assert len(plan) == 1
    ((pid, target),) = plan.items()
    assert target == Target(TCP, RS, 80, True)
    assert shared.users == {pid: ("web", "api")}
    assert shared.id_of_pair == {"web": pid, "api": pid}


@pytest.mark.parametrize(
    "other",
    [
        Target(TcpProbe(type="tcp", interval=0.2, timeout=0.4, rise=1, fall=1), RS, 80, True),
        Target(TCP, RS, 81, True),
        Target(TCP, ip_address("10.0.0.12"), 80, True),
        Target(TCP, RS, 80, False),  # another start-up verdict
        Target(HttpProbe(type="http", interval=0.2, timeout=0.5, rise=1, fall=1), RS, 80, True),
    ],
    ids=["timeout", "port", "address", "start_up", "type"],
)
def test_a_different_check_of_the_same_server_is_a_probe_of_its_own(other: Target) -> None:
    shared: SharedProbes[str] = SharedProbes()
    plan = shared.plan({"web": Target(TCP, RS, 80, True), "api": other})
    assert len(plan) == 2
    assert shared.id_of_pair["web"] != shared.id_of_pair["api"]
    assert sorted(len(users) for users in shared.users.values()) == [1, 1]


def test_a_kept_check_keeps_its_id_and_a_gone_one_is_never_reused() -> None:
    shared: SharedProbes[str] = SharedProbes()
    a, b = Target(TCP, RS, 80, True), Target(TCP, RS, 81, True)
    first = shared.plan({"web": a, "api": b})
    assert shared.plan({"web": a, "other": a}) == {shared.id_of_pair["web"]: a}
    assert shared.id_of_pair["web"] == next(pid for pid, t in first.items() if t == a)
    again = shared.plan({"api": b})  # b left and comes back: a new id, not its old one
    assert set(again).isdisjoint(first)


# Starting a dead checker again: pure.


def test_a_checker_that_keeps_dying_waits_longer_each_time() -> None:
    r = respawn.Respawn()
    delays = [r.died(float(t)) for t in range(8)]
    assert delays[: respawn.BURST] == [0.0] * respawn.BURST
    assert delays[respawn.BURST :] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert r.died(9.0) == 32.0 and r.died(10.0) == respawn.LONGEST_DELAY
    assert r.count == 10
    calm = respawn.Respawn()
    for t in range(respawn.BURST):
        calm.died(t * respawn.WINDOW)  # one death a window: each restarted at once
    assert calm.died(respawn.BURST * respawn.WINDOW) == 0.0


# The messages.


def frame(msg: channel.Message) -> channel.Message:
    data = channel.encode(msg)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    return channel.decode(data[4:])


def test_every_message_reads_back_as_it_was_sent() -> None:
    http = HttpProbe(type="https", path="/health", expect_status="200-204", sni="www.example.org")
    targets = {
        1: Target(TCP, RS, 80, True),
        2: Target(TCP, ip_address("fd00::11"), 443, False),
        7: Target(http, RS, 443, True),
    }
    assert frame(channel.Targets(targets)) == channel.Targets(targets)
    entries: list[channel.Entry] = [(1, True, "connected", 0.001), (2, None, "not counted", 0.0)]
    assert frame(channel.Verdicts(entries)) == channel.Verdicts(entries)
    assert frame(channel.Results(entries)) == channel.Results(entries)
    assert frame(channel.Alive(3)) == channel.Alive(3)
    assert frame(channel.AskResults()) == channel.AskResults()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'{"t": "reboot"}',
        b'{"t": "alive"}',
        b'{"t": "alive", "n": -1}',
        b'{"t": "alive", "n": true}',
        b'{"t": "verdicts", "e": [[1, "yes", "r", 0.1]]}',
        b'{"t": "verdicts", "e": [["1", true, "r", 0.1]]}',
        b'{"t": "results", "e": [[1, true, "r"]]}',
        b'{"t": "targets", "probes": [{"type": "tcp", "rise": 0}], "rows": []}',
        b'{"t": "targets", "probes": [{"type": "tcp"}], "rows": [[1, 1, "10.0.0.1", 80, true]]}',
        b'{"t": "targets", "probes": [{"type": "tcp"}], "rows": [[1, -1, "10.0.0.1", 80, true]]}',
        b'{"t": "targets", "probes": [{"type": "tcp"}], "rows": [[1, 0, "10.0.0.1", 0, true]]}',
        b'{"t": "targets", "probes": [{"type": "tcp"}], "rows": [[1, 0, "nowhere", 80, true]]}',
    ],
)
def test_what_is_not_a_message_is_said_to_be_so(data: bytes) -> None:
    with pytest.raises(channel.BadMessage):
        channel.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.from_regex(rb'\A\{"t": ?"(verdicts|results|targets)".*'))
def test_any_bytes_are_a_message_or_bad_never_an_error(data: bytes) -> None:
    with contextlib.suppress(channel.BadMessage):
        channel.decode(data)


def test_a_length_beyond_the_bound_is_refused_before_it_is_read() -> None:
    async def main() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data((channel.MAX_MESSAGE + 1).to_bytes(4, "big"))
        with pytest.raises(channel.BadMessage, match="at most"):
            await channel.receive(reader)

    asyncio.run(main())


# A real checker process, for the services side.


@pytest.fixture
def server() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(512)
    yield s
    s.close()


def two_services_config(tmp_path: Path, port: int) -> Any:
    key = tmp_path / "authkey"
    key.write_bytes(bytes(32))
    key.chmod(0o600)
    probe = {"type": "tcp", "interval": "0.2s", "timeout": "0.2s", "rise": 1, "fall": 1}
    slower = probe | {"interval": "0.3s"}
    rs = [{"address": "127.0.0.1", "port": port}]
    return validate(
        samples.config(
            key,
            services=[
                {"name": n, "protocol": "tcp", "address": "10.0.0.100", "port": p, "forward": "nat"}
                | {"probe": pr, "real_servers": rs}
                for n, p, pr in (("web", 80, probe), ("api", 8080, probe), ("admin", 81, slower))
            ],
        )
        | {"node": {"name": "lvs1", "priority": 150, "state_dir": str(tmp_path)}}
    )


async def started(cfg: Any, tmp_path: Path, on_restart: Any = None) -> Services:
    """The services side with its checker, started (no IPVS here: the views follow the
    probes); `on_restart` in place of the alert."""
    services = Services(cfg, Alerter("lvs1", cfg.alerts, tmp_path))
    services.apply_sysctls = lambda: None  # type: ignore[method-assign]
    if on_restart is not None:
        services.checker.on_restart = on_restart
    await services.start()
    return services


async def until(what: Any, limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not what():
        assert loop.time() < deadline, "not in time"
        await asyncio.sleep(0.02)


def test_one_probe_per_distinct_check_and_its_verdict_for_every_service(
    tmp_path: Path, server: socket.socket
) -> None:
    """web and api name 127.0.0.1 with the same probe: one probe; admin probes it every
    0.3 s: its own. A verdict of the shared one is both services' (history, alerts)."""
    port = server.getsockname()[1]
    cfg = two_services_config(tmp_path, port)
    dest = DestKey(ip_address("127.0.0.1"), port)

    async def main() -> None:
        services = await started(cfg, tmp_path)  # no IPVS here: the views follow the probes
        try:
            checker = services.checker
            await until(lambda: checker.state == "running")
            assert checker.status()["probes"] == 2
            assert len(services.shared.users) == 2
            web_id = services.shared.id_of_pair[("web", dest)]
            assert services.shared.users[web_id] == (("web", dest), ("api", dest))
            await asyncio.sleep(0.5)  # each probe has run (the first within one interval)
            await checker.refresh()
            statuses = {s["name"]: s["real_servers"][0] for s in services.status()}
            for name in ("web", "api", "admin"):
                probe = statuses[name]["probe"]
                assert probe is not None and probe["ok"], (name, probe)
            server.close()  # the server dies: every service sees it, by two probes
            await until(lambda: not any(services.healthy.values()))
            await asyncio.sleep(RESULTS_FRESH)  # the results held are stale by now
            assert {k[0] for k, h in services.history.items() if not h[-1]["up"]} == {
                "web",
                "api",
                "admin",
            }
            downs = [a for a in services.alerter.status()["recent"] if a["event"] == "server_down"]
            assert sorted(a["subject"].split()[0] for a in downs) == ["admin", "api", "web"]
            await checker.refresh()
            statuses = {s["name"]: s["real_servers"][0] for s in services.status()}
            assert all(not statuses[n]["healthy"] for n in statuses)
            assert statuses["web"]["probe"] == statuses["api"]["probe"]  # one probe's result
            assert "refused" in statuses["web"]["probe"]["reason"]
        finally:
            pid = services.checker.pid
            await services.close()
        assert pid is not None and zombie(pid), "the checker outlived the services side"

    asyncio.run(main())


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_checker_that_dies_or_hangs_is_replaced_and_the_verdicts_stay(
    tmp_path: Path, server: socket.socket, how: str
) -> None:
    port = server.getsockname()[1]
    cfg = two_services_config(tmp_path, port)

    async def main() -> None:
        services = await started(cfg, tmp_path)
        checker = services.checker
        try:
            await until(lambda: checker.state == "running")
            first = checker.pid
            assert first is not None
            healthy = dict(services.healthy)
            assert all(healthy.values())
            loop = asyncio.get_running_loop()
            os.kill(first, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
            start = loop.time()
            seen: list[bool] = []
            while not (checker.pid not in (None, first) and checker.state == "running"):
                seen.append(services.healthy == healthy)
                assert loop.time() - start < HANG + 5, "the checker was not replaced"
                await asyncio.sleep(0.01)
            took = loop.time() - start
            assert all(seen), "a verdict changed while the checker was replaced"
            assert took < (1.0 if how == "kill" else HANG + 1.0), took
            assert checker.respawn.count == 1
            last = checker.status()["last_restart"]
            assert last is not None
            assert ("SIGKILL" in last["reason"]) and (how == "kill" or "hung" in last["reason"])
            restarted = [
                a for a in services.alerter.status()["recent"] if a["event"] == "checker_restarted"
            ]
            assert len(restarted) == 1, restarted
            await asyncio.sleep(1.0)  # the new checker probes on from the verdicts held
            assert services.healthy == healthy
            assert not any(a["event"] == "server_down" for a in services.alerter.status()["recent"])
            assert zombie(first)
        finally:
            await services.close()

    asyncio.run(main())


def test_a_checker_slow_to_start_is_given_time_and_is_not_a_hang(
    tmp_path: Path, server: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new checker's first word may come late (a slow VM imports Python for seconds),
    and so may the end of a take of targets (a probe type's library imported, 100,000
    targets): the agent waits up to START_LIMIT for those, else holds it to HANG."""
    import subprocess
    import sys

    from hapair import logs
    from hapair.checker import client

    monkeypatch.setattr(client, "HANG", 0.3)
    monkeypatch.setattr(client, "START_LIMIT", 5.0)
    slow = (
        "import sys, time; time.sleep(1.5); from hapair.checker import process; "
        "take = process.Checker.take; "
        "process.Checker.take = lambda self, msg: (time.sleep(1.0), take(self, msg))[1]; "
        "raise SystemExit(process.main(sys.argv[1:]))"
    )

    def spawn(fd: int) -> subprocess.Popen[bytes]:
        style, node = logs.configured
        return subprocess.Popen([sys.executable, "-c", slow, str(fd), style, node], pass_fds=(fd,))

    monkeypatch.setattr(client, "_spawn", spawn)
    cfg = two_services_config(tmp_path, server.getsockname()[1])

    async def main() -> None:
        services = await started(cfg, tmp_path)
        checker = services.checker
        try:
            await until(lambda: checker.state == "running")
            assert checker.respawn.count == 0, checker.status()["last_restart"]
            first = checker.pid
            assert first is not None
            checker.sync(dict(checker.targets))  # a reload: another take of 1 s, > HANG
            await asyncio.sleep(1.5)
            assert checker.respawn.count == 0, checker.status()["last_restart"]
            assert checker.pid == first
            os.kill(first, signal.SIGSTOP)  # between takes, HANG holds
            await until(lambda: checker.respawn.count == 1, limit=3.0)
            last = checker.status()["last_restart"]
            assert last is not None and "hung" in last["reason"], last
        finally:
            await services.close()

    asyncio.run(main())


def test_a_checker_that_keeps_dying_is_reported_not_restarted_in_a_tight_loop(
    tmp_path: Path, server: socket.socket
) -> None:
    cfg = two_services_config(tmp_path, server.getsockname()[1])

    async def main() -> None:
        told: list[tuple[str, float]] = []
        services = await started(
            cfg, tmp_path, on_restart=lambda why, delay: told.append((why, delay))
        )
        checker = services.checker
        try:
            for n in range(respawn.BURST + 1):
                await until(lambda: checker.state == "running")
                pid = checker.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await until(lambda n=n: len(told) == n + 1)
            assert [delay for _, delay in told] == [0.0] * respawn.BURST + [respawn.FIRST_DELAY]
            assert checker.state == "waiting" and checker.pid is None
            loop = asyncio.get_running_loop()
            waited = loop.time()
            await until(lambda: checker.state == "running")
            assert loop.time() - waited >= 0.8 * respawn.FIRST_DELAY
            assert all(services.healthy.values()), "the deaths moved a verdict"
        finally:
            await services.close()

    asyncio.run(main())


def test_a_checker_whose_agent_closes_unread_words_exits_quietly() -> None:
    """The agent closes its end with the checker's Alive words unread (the kernel says
    ECONNRESET, not end of file): the checker exits 0 without a traceback."""
    import subprocess
    import sys
    import time

    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hapair.checker", str(theirs.fileno()), "text", "t"],
        pass_fds=(theirs.fileno(),),
        stderr=subprocess.PIPE,
    )
    theirs.close()
    try:
        ours.settimeout(30)
        assert ours.recv(4)  # its first Alive: it is up
        time.sleep(3 * channel.ALIVE_EVERY)  # and more of them, left unread
        ours.close()
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()
