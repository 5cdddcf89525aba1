"""The monitor's pure parts: sessions, the login rate limit, CSRF rules, the Basic cache,
metrics from a sparse status, and the `hapair status` table."""

from __future__ import annotations

import re

import pytest
import samples
from prometheus_client.parser import text_string_to_metric_families

from hapair.monitor.auth import (
    BasicCache,
    LoginLimiter,
    SessionStore,
    csrf_ok,
    same_origin,
    tokens_equal,
)
from hapair.monitor.metrics import Metrics
from hapair.status_table import format_status

pytestmark = pytest.mark.unit

HOST = "lvs1.example.org:8443"


def test_sessions_end_when_idle_or_old() -> None:
    store = SessionStore(idle=60, lifetime=300)
    session = store.create("alice", "admin", now=0)
    assert session.token != session.csrf
    assert store.get(session.token, now=59) is session
    assert store.get(session.token, now=118) is session  # use keeps it alive
    assert store.get(session.token, now=179) is None  # idle too long
    busy = store.create("alice", "admin", now=1000)
    for t in range(1000, 1300, 50):
        assert store.get(busy.token, now=t) is busy
    assert store.get(busy.token, now=1301) is None  # lifetime, however busy
    assert store.get(None, now=0) is None
    assert store.get("forged", now=0) is None


def test_sessions_are_bounded_and_can_be_revoked() -> None:
    store = SessionStore(limit=2)
    first = store.create("alice", "admin", now=0)
    second = store.create("victor", "viewer", now=1)
    store.get(first.token, now=2)  # the first is now the more recently used
    store.create("carol", "admin", now=3)
    assert len(store) == 2
    assert store.get(second.token, now=4) is None
    store.retain(lambda s: s.user != "alice")
    assert store.get(first.token, now=5) is None
    store.end("nothing")  # ending an unknown session is harmless


def test_login_limit_per_client_and_per_user() -> None:
    limiter = LoginLimiter(window=100, limits={"client": 3, "user": 5})
    client_a = [("client", "192.0.2.1"), ("user", "alice")]
    for t in range(3):
        assert limiter.retry_after(client_a, now=t) == 0
        limiter.failed(client_a, now=t)
    assert limiter.retry_after(client_a, now=3) == pytest.approx(97)
    # Another client may still try alice, until alice's own limit (5) is reached.
    client_b = [("client", "192.0.2.2"), ("user", "alice")]
    assert limiter.retry_after(client_b, now=4) == 0
    limiter.failed(client_b, now=4)
    limiter.failed(client_b, now=5)
    assert limiter.retry_after([("client", "192.0.2.3"), ("user", "alice")], now=6) > 0
    assert limiter.retry_after(client_b, now=50) > 0  # alice's own limit holds for both
    limiter.succeeded(client_b)
    assert limiter.retry_after(client_a, now=100.5) == 0  # the oldest failure left the window


def test_login_limit_memory_is_bounded() -> None:
    limiter = LoginLimiter(window=100, max_keys=10)
    for i in range(50):
        limiter.failed([("client", f"10.0.0.{i}")], now=i)
    assert len(limiter._failures) <= 10


def test_csrf_rules() -> None:
    same = {"Origin": f"https://{HOST}", "Sec-Fetch-Site": "same-origin"}
    # Safe methods never need a token.
    assert csrf_ok("GET", "token", None, {}, HOST)
    # A session needs its own token, from this origin.
    assert csrf_ok("POST", "token", "token", same, HOST)
    assert not csrf_ok("POST", "token", None, same, HOST)
    assert not csrf_ok("POST", "token", "", same, HOST)
    assert not csrf_ok("DELETE", "token", "other", same, HOST)
    assert not csrf_ok("POST", "token", "token", {"Origin": "https://evil.example"}, HOST)
    # Basic (no session): no token, but never from another site.
    assert csrf_ok("POST", None, None, {}, HOST)
    assert not csrf_ok("POST", None, None, {"Sec-Fetch-Site": "cross-site"}, HOST)
    assert not csrf_ok("POST", None, None, {"Sec-Fetch-Site": "same-site"}, HOST)
    assert not csrf_ok("POST", None, None, {"Origin": "null"}, HOST)
    assert not csrf_ok("POST", None, None, {"Referer": "https://evil.example/x"}, HOST)
    assert not csrf_ok("POST", None, None, {"Origin": f"http://{HOST}"}, HOST)
    assert same_origin({"Referer": f"https://{HOST}/"}, HOST)
    assert not tokens_equal("", "")


def test_basic_cache_expires_and_never_keeps_a_wrong_password() -> None:
    cache = BasicCache(ttl=10)
    cache.add("alice", "secret password", "admin", now=0)
    assert cache.role("alice", "secret password", now=5) == "admin"
    assert cache.role("alice", "other password", now=5) is None
    assert cache.role("bob", "secret password", now=5) is None
    assert cache.role("alice", "secret password", now=11) is None
    cache.add("alice", "secret password", "admin", now=20)
    cache.clear()
    assert cache.role("alice", "secret password", now=21) is None


def test_metrics_from_a_sparse_status() -> None:
    """No services, a peer never heard: still valid Prometheus text."""
    status = samples.status()
    status["peer"] = {
        "node": None,
        "state": None,
        "alive": False,
        "last_heard": None,
        "links": [],
        "priority": None,
        "since": None,
    }
    status["state"], status["vips"], status["services"] = "INIT", [], []
    status["sync"] = {"enabled": False, "role": None}
    assert samples.conforms(status) == []
    text = Metrics(lambda: status).render().decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"hapair_node_state", "hapair_peer_alive", "hapair_heartbeats_sent"} <= names
    assert "hapair_real_server_healthy{" not in text  # no real servers, no samples
    assert 'hapair_node_state{state="INIT"} 1.0' in text


def test_status_table_reads_in_one_look() -> None:
    lines = format_status(samples.STATUS, now=1600.0).splitlines()
    assert re.match(r"lvs1  MASTER  priority 150  since \S+ \S+ \(10m ago\)$", lines[0])
    assert re.match(r"peer  lvs2  BACKUP  priority 100  alive, heard 0\.12s ago  since", lines[1])
    assert lines[2] == "links udp eth1  up  heard 0.12s ago"
    assert lines[3] == "      serial /dev/ttyS1  DOWN  heard never"
    assert lines[4] == "VIPs  10.0.0.100/24 on eth0  held"
    assert lines[5] == "sync  master"
    assert lines[6] == "config  c0ffee000000  PEER RUNS another: OUT OF SYNC (hapair config show)"
    assert lines[7] == "alerts  2 queued"
    table = lines[lines.index("Prot LocalAddress:Port Scheduler Flags") :]
    assert table[1].split() == [
        "->",
        "RemoteAddress:Port",
        "Forward",
        "Weight",
        "ActiveConn",
        "InActConn",
        "Health",
        "Admin",
    ]
    assert table[2] == "TCP  10.0.0.100:80 wlc  (web: 1 of 3 healthy)"
    assert table[3].split() == ["->", "10.0.0.11:80", "Route", "1", "3", "12", "up", "enabled"]
    assert table[3].startswith("  -> 10.0.0.11:80                 Route   1      3")
    assert table[4].split() == ["->", "10.0.0.12:80", "Route", "0", "0", "0", "up", "drained"]
    assert table[5].split()[-6:] == ["-", "DOWN", "enabled", "(not", "in", "IPVS)"]
    assert table[6] == "FWM  7 sh  (media: 0 of 0 healthy, QUORUM LOST, sorry server in use)"


def test_status_table_with_a_dead_peer_and_no_services() -> None:
    status = samples.status()
    status["node"], status["state"], status["priority"], status["since"] = "lvs2", "BACKUP", 100, 0
    status["peer"] |= {"node": "lvs1", "alive": False, "last_heard": 3.5, "links": []}
    status["vips"], status["services"] = [], []
    status["sync"] = {"enabled": False, "role": None}
    status["health"] = {"ok": False, "failing": {"icmp 10.0.0.254": "timed out"}}
    assert samples.conforms(status) == []
    text = format_status(status, now=0)
    assert "peer  lvs1  DEAD (last heard 3.50s ago)" in text
    assert "VIPs  none" in text
    assert "sync  off" in text
    assert "FAILING  icmp 10.0.0.254: timed out" in text
    assert "Prot" not in text
    status["config"] |= {"in_sync": None}
    assert "config  c0ffee000000  (peer not compared)" in format_status(status, now=0)
    status["config"] |= {"in_sync": True, "peer_version": status["config"]["version"]}
    assert "config  c0ffee000000  peer the same" in format_status(status, now=0)
