"""Alerts: the policy on a virtual clock, the spool on a real disk, and the senders against
real receivers on 127.0.0.1 (aiosmtpd, an aiohttp endpoint, real notify scripts).

Each async test runs in a fresh loop (asyncio.run) and stops what it started.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import stat
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hapair.alerts import Alerter
from hapair.alerts.email import EmailChannel
from hapair.alerts.pager import PagerChannel, PagerError
from hapair.alerts.policy import Alert, AlertPolicy, Backoff, make_alert, script_for
from hapair.alerts.scripts import ScriptRunner, run_script
from hapair.alerts.spool import Spool
from hapair.config.model import Alerts
from hapair.monitor.cert import write_self_signed
from lab.alert_sinks import PagerSink, SmtpSink

pytestmark = pytest.mark.unit

T = TypeVar("T")
NODE = "lvs1"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def alert(event: str = "server_down", subject: str = "web 10.0.0.11:80", **details: str) -> Alert:
    return make_alert(NODE, event, subject, f"{event} {subject}", time.time(), details)


def alerts_config(**raw: Any) -> Alerts:
    return Alerts.model_validate(raw)


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {predicate}")
        await asyncio.sleep(0.02)


# --- policy (virtual clock) ----------------------------------------------------------


def test_a_repeat_within_min_interval_is_held_back_then_sent_with_the_count() -> None:
    policy = AlertPolicy(min_interval=60)
    assert policy.admit(alert("server_down"), now=0) is not None
    assert policy.admit(alert("server_up"), now=1) is not None  # not a repeat: news
    assert policy.admit(alert("server_down"), now=2) is None
    assert policy.admit(alert("server_down"), now=2.5) is None  # the latest is kept
    assert policy.admit(alert("server_down", subject="web 10.0.0.12:80"), now=3) is not None
    assert policy.next_deadline() == 60
    assert policy.due(59.9) == []
    [late] = policy.due(60)
    assert (late.event, late.suppressed) == ("server_down", 1)
    assert "1 similar alert(s) held back" in late.summary
    assert policy.next_deadline() is None
    assert policy.admit(alert("server_up"), now=61) is not None  # its window ended at 61


def test_a_flapping_server_costs_a_bounded_number_of_messages_and_ends_on_its_state() -> None:
    policy = AlertPolicy(min_interval=60)
    sent: list[tuple[float, Alert]] = []
    now = 0.0
    for i in range(1000):  # down/up every 0.1 s for 100 s, then it stays down
        now = i * 0.1
        a = policy.admit(alert("server_up" if i % 2 else "server_down"), now)
        sent += [(now, a)] if a else []
        sent += [(now, x) for x in policy.due(now)]
    while (deadline := policy.next_deadline()) is not None:
        now = deadline
        sent += [(now, x) for x in policy.due(now)]
    # At most one message per event per min_interval: 100 s of flapping is 2 windows.
    assert len(sent) <= 2 * 2 + 1, [(t, a.event) for t, a in sent]
    assert sent[-1][1].event == "server_up"  # i = 999: the last word is the last state
    assert sum(a.suppressed for _, a in sent) + len(sent) == 1000
    for event in ("server_down", "server_up"):
        times = [t for t, a in sent if a.event == event]
        assert all(b - a >= 60 - 1e-9 for a, b in itertools.pairwise(times))


def test_a_recovery_is_news_only_after_its_loss() -> None:
    policy = AlertPolicy(min_interval=0)
    assert policy.admit(alert("server_up"), 0) is None  # up at start: never reported down
    assert policy.admit(alert("peer_back", "lvs2"), 0) is None
    assert policy.admit(alert("link_back", "udp:eth1"), 0) is None
    assert policy.admit(alert("quorum_back", "web"), 0) is None
    assert policy.admit(alert("server_down"), 1) is not None
    assert policy.admit(alert("server_up"), 2) is not None
    assert policy.admit(alert("server_up"), 3) is None  # already said
    assert policy.admit(alert("link_lost", "udp:eth1"), 4) is not None
    assert policy.admit(alert("link_back", "serial:ttyS1"), 5) is None  # another link


def test_severities_and_scripts() -> None:
    def severity(event: str, **details: str) -> str:
        return alert(event, **details).severity

    assert severity("state_change", state="MASTER") == "warning"
    assert severity("state_change", state="BACKUP") == "info"
    assert severity("state_change", state="FAULT") == "critical"
    assert severity("peer_lost") == severity("quorum_lost") == "critical"
    assert severity("link_lost") == severity("server_down") == severity("reload_failed")
    assert severity("link_lost") == "warning"
    for back in ("peer_back", "link_back", "server_up", "quorum_back"):
        assert severity(back) == "info"
    with pytest.raises(KeyError):
        alert("heartbeat_late")  # logged, not an alert
    assert [script_for(s) for s in ("MASTER", "BACKUP", "FAULT", "STOPPED", "INIT")] == [
        "on_master",
        "on_backup",
        "on_fault",
        None,
        None,
    ]


def test_state_changes_to_different_states_are_not_repeats() -> None:
    policy = AlertPolicy(min_interval=60)
    for i, state in enumerate(["BACKUP", "MASTER", "BACKUP", "MASTER"]):
        a = make_alert(NODE, "state_change", state, state, 0, {"state": state})
        assert (policy.admit(a, i) is not None) == (i < 2)
    [last] = policy.due(61)
    assert last.subject == "MASTER" and last.suppressed == 1


def test_backoff_doubles_up_to_its_cap_and_a_success_starts_over() -> None:
    backoff = Backoff(first=1, cap=60)
    assert [backoff.failed() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    backoff.succeeded()
    assert backoff.failed() == 1


def test_an_alert_survives_json_and_junk_is_refused() -> None:
    a = alert(reason="connect refused")
    assert Alert.from_json(json.loads(json.dumps(a.to_json()))) == a
    for junk in (
        [],
        {**a.to_json(), "extra": 1},
        {**a.to_json(), "id": "../../etc/passwd"},
        {**a.to_json(), "event": "nope"},
        {**a.to_json(), "severity": "fatal"},
        {**a.to_json(), "time": "yesterday"},
        {**a.to_json(), "details": {"a": 1}},
    ):
        with pytest.raises(ValueError):
            Alert.from_json(junk)


# --- spool ---------------------------------------------------------------------------


def test_the_spool_keeps_what_is_owed_atomically_and_readable_by_root_only(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "alerts", NODE)
    first, second = alert(), alert("peer_lost", "lvs2")
    spool.save(first, {"email", "pager"})
    spool.save(second, {"pager"})
    assert stat.S_IMODE((tmp_path / "alerts").stat().st_mode) == 0o700
    files = sorted(p.name for p in (tmp_path / "alerts").iterdir())
    assert files == sorted(f"{NODE}.{a.id}.json" for a in (first, second))  # no tmp left
    assert all(stat.S_IMODE(spool.path(a.id).stat().st_mode) == 0o600 for a in (first, second))
    spool.save(first, {"pager"})  # email accepted it
    spool.save(second, set())  # the pager accepted it: forgotten
    # A new Spool over the same folder is a restart.
    assert Spool(tmp_path / "alerts", NODE).load() == [(first, {"pager"})]
    assert Spool(tmp_path / "alerts", "lvs2").load() == []  # another node's are not ours


def test_damaged_spool_files_are_set_aside_and_the_rest_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, NODE)
    good = alert()
    spool.save(good, {"email"})
    other = alert()
    damaged = {
        "garbage": b"\x00\xff not json",
        "truncated": json.dumps({"format": 1, "alert": good.to_json()}).encode()[:40],
        "wrongid": json.dumps(
            {"format": 1, "alert": other.to_json(), "pending": ["email"]}
        ).encode(),
        "nopending": json.dumps({"format": 1, "alert": good.to_json()}).encode(),
    }
    for name, data in damaged.items():
        (tmp_path / f"{NODE}.{name}.json").write_bytes(data)
    (tmp_path / f".{NODE}.{other.id}.json.tmp").write_bytes(b"{")  # a write cut short
    assert spool.load() == [(good, {"email"})]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{NODE}.{good.id}.json", *(f"{NODE}.{name}.corrupt" for name in damaged)]
    )
    assert caplog.text.count("is damaged") == len(damaged)


# --- email (a real SMTP server) ------------------------------------------------------


def email_config(port: int, **extra: Any) -> Any:
    cfg = alerts_config(
        email={"smtp": f"127.0.0.1:{port}", "from": "hapair@example.org", "to": ["a@x.org"]} | extra
    )
    return cfg.email


def test_an_email_reaches_a_real_smtp_server() -> None:
    async def main() -> None:
        sink = SmtpSink()
        await sink.start()
        try:
            a = make_alert(NODE, "peer_lost", "lvs2", "lvs2 silent on every link " * 4, 0.0)
            await EmailChannel(email_config(sink.port)).send(a)
        finally:
            await sink.stop()
        [msg] = sink.messages
        assert msg["Subject"] == f"[hapair] {NODE} peer_lost: {a.summary}"  # unfolded
        assert msg["X-Hapair-Alert-Id"] == a.id
        assert msg["Message-ID"] == f"<{a.id}@example.org>"
        assert msg["X-Hapair-Severity"] == "critical"
        assert (msg["From"], msg["To"]) == ("hapair@example.org", "a@x.org")
        assert a.summary in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    run(main())


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1, which the client
    trusts as an operator would: in the system's CA store (here SSL_CERT_FILE)."""
    cert, key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    write_self_signed(cert, key, "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return context


def test_an_email_with_starttls_and_login(tls_server: ssl.SSLContext, tmp_path: Path) -> None:
    password_file = tmp_path / "smtp-password"
    password_file.write_text("s3cret pass\n")

    async def main() -> None:
        sink = SmtpSink(tls=tls_server, login=("hapair", "s3cret pass"))
        await sink.start()
        try:
            cfg = email_config(sink.port, starttls=True, username="hapair")
            with pytest.raises(Exception, match=r"(?i)auth"):  # no password: refused
                await EmailChannel(cfg).send(alert())
            cfg = email_config(
                sink.port, starttls=True, username="hapair", password_file=str(password_file)
            )
            await EmailChannel(cfg).send(alert())
        finally:
            await sink.stop()
        [session] = sink.sessions
        assert session.ssl is not None and session.authenticated

    run(main())


def test_starttls_false_never_upgrades(tls_server: ssl.SSLContext) -> None:
    async def main() -> None:
        sink = SmtpSink(tls=tls_server)  # requires STARTTLS: a plain client is refused
        await sink.start()
        try:
            with pytest.raises(Exception, match=r"(?i)starttls"):
                await EmailChannel(email_config(sink.port)).send(alert())
        finally:
            await sink.stop()
        assert sink.messages == []

    run(main())


# --- pager (a real HTTP endpoint) ----------------------------------------------------


def test_the_pager_posts_json_and_a_refusal_is_a_failure() -> None:
    async def main() -> None:
        sink = PagerSink()
        await sink.start()
        pager = alerts_config(pager={"url": sink.url}).pager
        assert pager is not None
        channel = PagerChannel(pager)
        try:
            a = alert("quorum_lost", "web")
            await channel.send(a)
            sink.status = 503
            with pytest.raises(PagerError, match="HTTP 503"):
                await channel.send(alert())
        finally:
            await channel.close()
            await sink.stop()
        body, headers = sink.requests[0]
        assert {k: body[k] for k in ("id", "event", "node", "severity", "summary", "time")} == {
            "id": a.id,
            "event": "quorum_lost",
            "node": NODE,
            "severity": "critical",
            "summary": a.summary,
            "time": a.time,
        }
        assert headers["Idempotency-Key"] == a.id

    run(main())


# --- notify scripts ------------------------------------------------------------------


def test_scripts_run_one_at_a_time_in_the_order_asked(tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = f"/bin/sh -c 'echo start $N >> {log}; sleep 0.1; echo end $N >> {log}'"

    async def main() -> None:
        runner = ScriptRunner(timeout=5)
        done: list[bool] = []
        for n in range(5):
            runner.submit(script, {"N": str(n)}, done.append)
        await wait_until(lambda: runner.unfinished == 0)
        await runner.close()
        assert done == [True] * 5

    run(main())
    expected = [f"{what} {n}" for n in range(5) for what in ("start", "end")]
    assert log.read_text().split("\n")[:-1] == expected


def test_a_script_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"/bin/sh -c 'sleep 30 & echo $! $$ > {pids}; wait'"

    async def main() -> tuple[bool, str, float]:
        started = time.monotonic()
        ok, outcome = await run_script(script, {}, timeout=0.5)
        return ok, outcome, time.monotonic() - started

    ok, outcome, took = run(main())
    assert (ok, outcome) == (False, "no exit within 0.5s, killed")
    assert took < 2
    deadline = time.monotonic() + 2  # a killed process takes a moment to be gone
    while any(map(alive, map(int, pids.read_text().split()))):
        assert time.monotonic() < deadline, "a script or its child outlived the timeout"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for a reaper (PID 1 may not reap) is dead."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rpartition(")")[2].split()[0] not in ("Z", "X")


def test_a_state_change_runs_its_script_with_the_alert_in_the_environment(
    tmp_path: Path,
) -> None:
    out = tmp_path / "env"
    dump = f"/bin/sh -c 'echo $HAPAIR_EVENT $HAPAIR_NODE $HAPAIR_STATE $HAPAIR_OLD_STATE >> {out}'"
    cfg = alerts_config(
        min_interval=60,
        scripts={"on_master": dump, "on_backup": dump, "on_fault": "/bin/false"},
    )

    async def main() -> dict[str, Any]:
        alerter = Alerter(NODE, cfg, tmp_path)
        alerter.start()
        alerter.state_changed("INIT", "BACKUP", "initdead passed")
        alerter.state_changed("BACKUP", "MASTER", "peer lost")
        alerter.state_changed("MASTER", "BACKUP", "peer preempts")  # held back, script runs
        alerter.state_changed("BACKUP", "FAULT", "gateway unreachable")
        alerter.state_changed("FAULT", "STOPPED", "SIGTERM")  # no script for STOPPED
        await wait_until(lambda: alerter.scripts.unfinished == 0)
        status = alerter.status()
        await alerter.close()
        return status

    status = run(main())
    assert out.read_text().splitlines() == [
        f"state_change {NODE} BACKUP INIT",
        f"state_change {NODE} MASTER BACKUP",
        f"state_change {NODE} BACKUP MASTER",
    ]
    assert [(r["summary"].split(":")[0], r["delivered"]) for r in status["recent"]] == [
        (f"{NODE} is now BACKUP (was INIT)", {"script": True}),
        (f"{NODE} is now MASTER (was BACKUP)", {"script": True}),
        (f"{NODE} is now FAULT (was BACKUP)", {"script": False}),  # /bin/false
        (f"{NODE} is now STOPPED (was FAULT)", {}),
    ]
    assert status["queued"] == 0


# --- the Alerter: outage, restart, nothing lost, nothing doubled ---------------------


def test_an_outage_and_a_restart_lose_no_alert(tmp_path: Path) -> None:
    """Both receivers down; alerts raised; the agent restarts (a new Alerter over the same
    spool) while they are still down; they come back: each has every alert exactly once."""

    async def main() -> None:
        smtp, pager = SmtpSink(), PagerSink()
        await smtp.start()
        await pager.start()
        await smtp.stop()  # down: their ports refuse connections from now on
        await pager.stop()
        cfg = alerts_config(
            min_interval=0,
            email={"smtp": f"127.0.0.1:{smtp.port}", "from": "h@example.org", "to": ["o@x.org"]},
            pager={"url": pager.url, "timeout": 1},
        )

        def alerter() -> Alerter:
            a = Alerter(NODE, cfg, tmp_path, first_retry=0.05, max_retry=0.2, close_grace=0.3)
            a.start()
            return a

        first = alerter()
        raised = [first.emit("server_down", f"10.0.0.{i}:80", "down") for i in range(5)]
        await asyncio.sleep(0.5)  # a few failed rounds
        assert first.status()["queued"] == 5
        await first.close()
        assert len(list((tmp_path / "alerts").glob("*.json"))) == 5

        second = alerter()  # the restart: resends what the spool holds
        assert second.status()["queued"] == 5
        raised += [
            second.emit("peer_lost", "lvs2", "lvs2 silent"),
            second.emit("quorum_lost", "web", "quorum lost"),
        ]
        await asyncio.sleep(0.3)
        pager.status = 503  # the pager comes back refusing, then accepting
        await pager.start()
        await smtp.start()
        await asyncio.sleep(0.3)
        pager.status = 200
        await wait_until(lambda: second.status()["queued"] == 0)
        status = second.status()
        await second.close()
        await smtp.stop()
        await pager.stop()

        ids = sorted(a.id for a in raised if a is not None)
        assert len(ids) == 7
        for sink in (smtp, pager):
            assert sorted(sink.alerts) == ids  # each once after dedup by id
            assert sorted(sink.copies) == ids  # and nothing that was not raised
        assert list((tmp_path / "alerts").iterdir()) == []  # the spool is empty
        assert all(r["delivered"] == {"email": True, "pager": True} for r in status["recent"])

    run(main())


def test_emit_never_waits_for_a_receiver(tmp_path: Path) -> None:
    """A pager that never answers: emit returns at once; close returns after its grace."""

    async def main() -> None:
        hang = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await hang.wait()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = alerts_config(pager={"url": f"http://127.0.0.1:{port}/", "timeout": 30})
        alerter = Alerter(NODE, cfg, tmp_path, close_grace=0.2)
        alerter.start()
        started = time.monotonic()
        for i in range(50):
            alerter.emit("link_lost", f"udp:eth{i}", "no heartbeat")
        assert time.monotonic() - started < 1.0  # spool writes only; the pager waits 30 s
        started = time.monotonic()
        await alerter.close()
        assert time.monotonic() - started < 1.0
        hang.set()
        server.close()
        assert len(Spool(tmp_path / "alerts", NODE).load()) == 50  # kept for the next start

    run(main())


def test_a_held_back_alert_goes_out_when_its_window_ends(tmp_path: Path) -> None:
    async def main() -> None:
        pager = PagerSink()
        await pager.start()
        cfg = alerts_config(min_interval=0.3, pager={"url": pager.url})
        alerter = Alerter(NODE, cfg, tmp_path)
        alerter.start()
        for _ in range(3):
            alerter.emit("server_down", "web 10.0.0.11:80", "down")
            alerter.emit("server_up", "web 10.0.0.11:80", "up")
        alerter.emit("server_down", "web 10.0.0.11:80", "down again")
        await wait_until(lambda: len(pager.alerts) == 3)
        await asyncio.sleep(0.4)
        await alerter.close()
        await pager.stop()
        events = [(b["event"], b["suppressed"]) for b in pager.alerts.values()]
        assert events == [("server_down", 0), ("server_up", 0), ("server_down", 4)]

    run(main())


def test_a_reload_replaces_and_removes_channels(tmp_path: Path) -> None:
    async def main() -> None:
        old, new = PagerSink(), PagerSink()
        await old.start()
        await new.start()
        alerter = Alerter(NODE, alerts_config(pager={"url": old.url}), tmp_path)
        alerter.start()
        alerter.emit("peer_lost", "lvs2", "one")
        await wait_until(lambda: len(old.alerts) == 1)
        alerter.reconfigure(alerts_config(pager={"url": new.url}))
        alerter.emit("link_lost", "udp:eth1", "two")
        await wait_until(lambda: len(new.alerts) == 1)
        await new.stop()
        alerter.emit("link_lost", "serial:ttyS1", "three")  # owed, then the pager goes
        alerter.reconfigure(None)
        assert alerter.status()["queued"] == 0
        await alerter.close()
        await old.stop()
        assert list((tmp_path / "alerts").iterdir()) == []

    run(main())


def test_the_config_refuses_a_script_that_is_no_command_line_and_defaults_the_spool() -> None:
    with pytest.raises(ValueError, match="not a command line: No closing quotation"):
        alerts_config(scripts={"on_master": "/etc/hapair/notify 'master"})
    with pytest.raises(ValueError, match="empty command line"):
        alerts_config(scripts={"on_fault": "  "})
    assert alerts_config().spool_path(Path("/var/lib/hapair")) == Path("/var/lib/hapair/alerts")
    assert alerts_config(spool_dir="/spool").spool_path(Path("/x")) == Path("/spool")
