"""The monitor's HTTPS surface: a real server on 127.0.0.1 with a certificate from
`hapair gen-cert` and users from `hapair passwd`, in front of a fake agent (status and
act): the agent is not what these tests are about."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from hapair_cli import hapair
from loop_thread import LoopThread
from prometheus_client.parser import text_string_to_metric_families
from samples import STATUS

from hapair.config.model import Monitor as MonitorConfig
from hapair.config.types import HostPort
from hapair.monitor.files import MonitorError
from hapair.monitor.server import MonitorServer

pytestmark = pytest.mark.unit

PASSWORDS = {"alice": "correct horse", "victor": "viewer pass"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A certificate and a users file made by the `hapair` commands an operator runs."""
    tmp = tmp_path_factory.mktemp("monitor")
    cert, key, users = tmp / "monitor.crt", tmp / "monitor.key", tmp / "users"
    hapair("gen-cert", str(cert), str(key), "--cn", "127.0.0.1", check=True)
    hapair(
        "passwd",
        "-f",
        str(users),
        "alice",
        "--role",
        "admin",
        stdin=PASSWORDS["alice"] + "\n",
        check=True,
    )
    hapair(
        "passwd", "-f", str(users), "victor", "--role", "viewer", stdin="viewer pass\n", check=True
    )
    return {"cert": cert, "key": key, "users": users}


class FakeAgent:
    """status() and act() as the agent offers them; act refuses an unknown service."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def status(self) -> dict[str, Any]:
        return STATUS

    async def act(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        if request.get("service") not in (None, "web"):
            return {"ok": False, "error": f"no service {request['service']!r}"}
        return {"ok": True, "result": f"{request['cmd']} done"}


class Running(LoopThread):
    """A MonitorServer served from an event loop in a thread, as the agent's loop would."""

    def __init__(self, settings: MonitorConfig, agent: FakeAgent) -> None:
        super().__init__()
        self.monitor = self.call(self._make(settings, agent))
        self.port, *others = (port for _, port in self.monitor.addresses)
        self.metrics_port = others[0] if others else None

    async def _make(self, settings: MonitorConfig, agent: FakeAgent) -> MonitorServer:
        monitor = MonitorServer(settings, agent.status, agent.act)
        await monitor.start()
        return monitor

    def close(self) -> None:
        self.call(self.monitor.stop())
        self.stop()


def settings(files: dict[str, Path], metrics: bool = False, **paths: Path) -> MonitorConfig:
    return MonitorConfig.model_construct(
        listen=HostPort("127.0.0.1", 0),
        tls_cert=paths.get("cert", files["cert"]),
        tls_key=paths.get("key", files["key"]),
        users_file=paths.get("users", files["users"]),
        metrics_listen=HostPort("127.0.0.1", 0) if metrics else None,
    )


class Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", self.headers
        return json.loads(self.body)


class Browser:
    """HTTPS requests with a cookie jar and no redirects followed, as a browser would send
    them from the monitor's own page (Origin and Sec-Fetch-Site of the same origin)."""

    def __init__(self, port: int, cert: Path) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(cert))
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        cookies: bool = True,
    ) -> Reply:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=30)
        sent = dict(headers or {})
        if cookies and self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body, headers=sent)
            reply = Reply(conn.getresponse())
        finally:
            conn.close()
        for header in reply.headers.get_all("Set-Cookie") or []:
            self.set_cookie_headers.append(header)
            for name, morsel in SimpleCookie(header).items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return reply

    def same_origin(self) -> dict[str, str]:
        return {"Origin": f"https://127.0.0.1:{self.port}", "Sec-Fetch-Site": "same-origin"}

    def login(self, user: str, password: str) -> Reply:
        page = self.request("GET", "/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        form = f"username={user}&password={password.replace(' ', '+')}&csrf_token={token[1]}"
        return self.request(
            "POST",
            "/login",
            form,
            {"Content-Type": "application/x-www-form-urlencoded", **self.same_origin()},
        )

    def csrf(self) -> str:
        page = self.request("GET", "/")
        assert page.status == 200, page.status
        found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
        assert found
        return found[1]

    def api(self, method: str, path: str, body: Any = None, csrf: str | None = None) -> Reply:
        headers = self.same_origin()
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        return self.request(method, path, data, headers)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def serve(files: dict[str, Path], agent: FakeAgent) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(**kwargs: Any) -> Running:
        running.append(Running(settings(files, **kwargs), agent))
        return running[-1]

    yield start
    for r in running:
        r.close()


@pytest.fixture
def monitor(serve: Callable[..., Running]) -> Running:
    return serve()


@pytest.fixture
def browser(monitor: Running, files: dict[str, Path]) -> Browser:
    return Browser(monitor.port, files["cert"])


# Nothing without logging in.

PROTECTED = [
    ("GET", "/"),
    ("GET", "/static/app.js"),
    ("GET", "/static/style.css"),
    ("GET", "/static/index.html"),
    ("GET", "/api/status"),
    ("GET", "/metrics"),
    ("GET", "/no/such/page"),
    ("GET", "/api/no-such-route"),
    ("POST", "/api/release"),
    ("POST", "/api/servers/web"),
    ("POST", "/api/servers/web/10.0.0.11:80/drain"),
    ("POST", "/api/servers/web/10.0.0.11:80/enable"),
    ("POST", "/api/servers/web/10.0.0.11:80/disable"),
    ("DELETE", "/api/servers/web/10.0.0.11:80"),
    ("POST", "/logout"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_path_without_a_session_is_refused(
    browser: Browser, agent: FakeAgent, method: str, path: str
) -> None:
    for headers in ({}, basic("alice", "wrong password"), {"Cookie": "hapair_session=forged"}):
        reply = browser.request(method, path, headers=headers, cookies=False)
        if reply.status == 303:
            assert reply.headers["Location"] == "/login"
        else:
            assert reply.status == 401, (method, path, headers, reply.status)
        for secret in ("lvs2", "10.0.0.11", "hapair_", "function"):
            assert secret.encode() not in reply.body
    assert agent.requests == []


def test_api_and_metrics_ask_for_basic_credentials(browser: Browser) -> None:
    reply = browser.request("GET", "/api/status")
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Basic ")
    assert "log in or send HTTP Basic credentials" in reply.json()["error"]
    assert browser.request("GET", "/").headers["Location"] == "/login"


def test_basic_credentials_do_not_open_the_page(browser: Browser) -> None:
    """Basic is for /api/ and /metrics; the page needs a session (and its CSRF token)."""
    reply = browser.request("GET", "/", headers=basic("alice", PASSWORDS["alice"]))
    assert reply.status == 303


def test_login_page_is_public_and_secures_its_cookies(browser: Browser) -> None:
    page = browser.request("GET", "/login")
    assert page.status == 200
    assert 'name="password"' in page.text
    assert "lvs1" not in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    login = browser.login("alice", PASSWORDS["alice"])
    assert (login.status, login.headers["Location"]) == (303, "/")
    session = [h for h in browser.set_cookie_headers if h.startswith("hapair_session=")]
    assert session
    assert {"secure", "httponly", "samesite=strict"} <= {
        part.strip().lower() for part in session[0].split(";")
    }


def test_wrong_password_is_refused(browser: Browser) -> None:
    reply = browser.login("alice", "not the password")
    assert reply.status == 401
    assert "Wrong user name or password" in reply.text
    assert "hapair_session" not in browser.cookies
    assert browser.login("mallory", "whatever1").status == 401
    assert browser.request("GET", "/api/status", headers=basic("alice", "nope")).status == 401


def test_login_form_needs_its_csrf_token(browser: Browser) -> None:
    form = f"username=alice&password={PASSWORDS['alice'].replace(' ', '+')}&csrf_token=guess"
    reply = browser.request(
        "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert reply.status == 403
    assert "hapair_session" not in browser.cookies


def test_session_reads_and_acts_with_its_csrf_token(browser: Browser, agent: FakeAgent) -> None:
    browser.login("alice", PASSWORDS["alice"])
    page = browser.request("GET", "/")
    assert page.status == 200
    assert "/static/app.js" in page.text
    assert browser.request("GET", "/static/app.js").status == 200
    assert browser.api("GET", "/api/status").json() == STATUS
    drain = "/api/servers/web/10.0.0.11:80/drain"
    assert browser.api("POST", drain).status == 403  # no token
    assert browser.api("POST", drain, csrf="forged").status == 403
    assert agent.requests == []
    reply = browser.api("POST", drain, csrf=browser.csrf())
    assert (reply.status, reply.json()) == (200, {"ok": True, "result": "drain done"})
    assert agent.requests == [{"cmd": "drain", "service": "web", "server": "10.0.0.11:80"}]


def test_a_token_from_another_site_is_refused(browser: Browser, agent: FakeAgent) -> None:
    browser.login("alice", PASSWORDS["alice"])
    token = browser.csrf()
    reply = browser.request(
        "POST",
        "/api/release",
        headers={"X-CSRF-Token": token, "Origin": "https://evil.example", "Sec-Fetch-Site": ""},
    )
    assert reply.status == 403
    assert agent.requests == []


def test_viewer_reads_but_cannot_act(browser: Browser, agent: FakeAgent) -> None:
    browser.login("victor", PASSWORDS["victor"])
    assert browser.api("GET", "/api/status").status == 200
    token = browser.csrf()
    for method, path in PROTECTED:
        if method != "GET" and path.startswith("/api/"):
            reply = browser.api(method, path, {"server": "10.0.0.13:80"}, csrf=token)
            assert reply.status == 403, (method, path)
            assert "viewer" in reply.json()["error"]
    viewer = basic("victor", PASSWORDS["victor"])
    assert browser.request("POST", "/api/release", headers=viewer, cookies=False).status == 403
    assert agent.requests == []


def test_basic_credentials_for_api_clients(browser: Browser, agent: FakeAgent) -> None:
    admin = basic("alice", PASSWORDS["alice"])
    assert browser.request("GET", "/api/status", headers=admin).json()["node"] == "lvs1"
    assert browser.request("POST", "/api/release", headers=admin).json()["ok"] is True
    assert agent.requests == [{"cmd": "release"}]
    # A browser that cached the credentials must not act for another site.
    cross = {**admin, "Origin": "https://evil.example"}
    assert browser.request("POST", "/api/release", headers=cross).status == 403
    cross = {**admin, "Sec-Fetch-Site": "cross-site"}
    assert browser.request("POST", "/api/release", headers=cross).status == 403
    assert len(agent.requests) == 1


def test_api_add_remove_and_clear_errors(browser: Browser, agent: FakeAgent) -> None:
    admin = basic("alice", PASSWORDS["alice"])
    json_type = {"Content-Type": "application/json"}

    def call(method: str, path: str, body: str | None = None) -> Reply:
        return browser.request(method, path, body, {**admin, **json_type})

    assert call("POST", "/api/servers/web", '{"server": "10.0.0.13:80", "weight": 3}').status == 200
    assert call("DELETE", "/api/servers/web/10.0.0.13:80").status == 200
    assert agent.requests == [
        {"cmd": "add", "service": "web", "server": "10.0.0.13:80", "weight": 3},
        {"cmd": "remove", "service": "web", "server": "10.0.0.13:80"},
    ]
    refused = call("POST", "/api/servers/mail/10.0.0.11:80/drain")
    assert (refused.status, refused.json()) == (409, {"ok": False, "error": "no service 'mail'"})
    bad = call("POST", "/api/servers/web", "not json")
    assert bad.status == 400 and "JSON body" in bad.json()["error"]
    bad = call("POST", "/api/servers/web", '{"server": "10.0.0.13:80", "weight": -1}')
    assert bad.status == 400 and "weight" in bad.json()["error"]
    unknown = call("POST", "/api/servers/web/10.0.0.11:80/reboot")
    assert unknown.status == 404 and "drain, enable, disable" in unknown.json()["error"]
    nothing = call("GET", "/api/nothing")
    assert nothing.json() == {"ok": False, "error": "no such path: /api/nothing"}
    wrong = call("GET", "/api/release")
    assert wrong.status == 405 and "GET is not allowed" in wrong.json()["error"]
    assert len(agent.requests) == 3


def test_logout_ends_the_session(browser: Browser) -> None:
    browser.login("alice", PASSWORDS["alice"])
    old = dict(browser.cookies)
    token = browser.csrf()
    assert browser.request("POST", "/logout", headers=browser.same_origin()).status == 403
    form = f"csrf_token={token}"
    reply = browser.request(
        "POST",
        "/logout",
        form,
        {"Content-Type": "application/x-www-form-urlencoded", **browser.same_origin()},
    )
    assert (reply.status, reply.headers["Location"]) == (303, "/login")
    assert "hapair_session" not in browser.cookies
    browser.cookies = old  # the old cookie is worthless now
    assert browser.request("GET", "/api/status").status == 401


def test_failed_logins_are_rate_limited(browser: Browser) -> None:
    for _ in range(5):
        assert browser.login("alice", "wrong password").status == 401
    limited = browser.login("alice", PASSWORDS["alice"])  # even the right one, for now
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert "hapair_session" not in browser.cookies
    basic_limited = browser.request("GET", "/api/status", headers=basic("alice", "guess"))
    assert basic_limited.status == 429


def test_a_changed_role_ends_the_session(
    browser: Browser, files: dict[str, Path], tmp_path: Path, serve: Callable[..., Running]
) -> None:
    users = tmp_path / "users"
    users.write_bytes(files["users"].read_bytes())
    users.chmod(0o600)
    running = serve(users=users)
    own = Browser(running.port, files["cert"])
    own.login("alice", PASSWORDS["alice"])
    assert own.request("GET", "/api/status").status == 200
    hapair(
        "passwd", "-f", str(users), "alice", "--role", "viewer", stdin="correct horse\n", check=True
    )
    assert own.request("GET", "/api/status").status == 401


def test_security_headers(browser: Browser) -> None:
    browser.login("alice", PASSWORDS["alice"])
    headers = browser.request("GET", "/").headers
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_plain_http_is_refused(monitor: Running) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", monitor.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/api/status")
        conn.getresponse()
    conn.close()
    # Byte by byte: whatever comes back (an alert, a reset) is not an HTTP answer.
    with socket.create_connection(("127.0.0.1", monitor.port), timeout=10) as sock:
        sock.sendall(b"GET /login HTTP/1.0\r\n\r\n")
        data = b""
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(4096):
                data += chunk
    assert b"HTTP/" not in data and b"hapair" not in data


# /metrics


def test_metrics_parse_with_the_prometheus_parser(browser: Browser) -> None:
    reply = browser.request("GET", "/metrics", headers=basic("victor", PASSWORDS["victor"]))
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }
    web_11 = (("server", "10.0.0.11:80"), ("service", "web"))
    assert samples[("hapair_node_state", (("state", "MASTER"),))] == 1
    assert samples[("hapair_node_state", (("state", "BACKUP"),))] == 0
    assert samples[("hapair_peer_alive", ())] == 1
    assert samples[("hapair_link_last_heard_seconds", (("link", "eth1"), ("type", "udp")))] == 0.12
    assert samples[("hapair_link_alive", (("link", "/dev/ttyS1"), ("type", "serial")))] == 0
    assert samples[("hapair_vip_held", (("address", "10.0.0.100/24"), ("interface", "eth0")))] == 1
    assert samples[("hapair_heartbeats_sent_total", ())] == 120
    assert samples[("hapair_heartbeats_received_total", ())] == 118
    assert samples[("hapair_heartbeats_dropped_total", (("reason", "bad MAC"),))] == 2
    assert samples[("hapair_probe_success", web_11)] == 1
    assert samples[("hapair_probe_latency_seconds", web_11)] == 0.0015
    assert samples[("hapair_real_server_healthy", web_11)] == 1
    assert samples[("hapair_service_healthy_servers", (("service", "web"),))] == 1
    assert samples[("hapair_ipvs_active_connections", web_11)] == 3
    assert samples[("hapair_ipvs_inactive_connections", web_11)] == 12
    assert samples[("hapair_alerts_queued", ())] == 2
    assert samples[("hapair_checker_running", ())] == 1
    assert samples[("hapair_checker_restarts_total", ())] == 1
    assert samples[("hapair_sync_role", (("role", "master"),))] == 1


def test_metrics_listen_serves_metrics_alone_over_tls(
    serve: Callable[..., Running], files: dict[str, Path]
) -> None:
    running = serve(metrics=True)
    assert running.metrics_port is not None
    scraper = Browser(running.metrics_port, files["cert"])
    reply = scraper.request("GET", "/metrics")
    assert reply.status == 200
    assert any(f.name == "hapair_node_state" for f in text_string_to_metric_families(reply.text))
    assert scraper.request("GET", "/api/status").status == 404
    assert scraper.request("GET", "/").status == 404
    conn = http.client.HTTPConnection("127.0.0.1", running.metrics_port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/metrics")
        conn.getresponse()
    conn.close()


# Refusing to start.


def _start(settings_: MonitorConfig) -> None:
    async def main() -> None:
        monitor = MonitorServer(settings_, FakeAgent().status, FakeAgent().act)
        try:
            await monitor.start()
        finally:
            await monitor.stop()

    asyncio.run(main())


def test_no_users_file_no_monitor(files: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "users"
    with pytest.raises(MonitorError, match=r"no users file .* no default password.*hapair passwd"):
        _start(settings(files, users=missing))
    missing.touch(mode=0o600)
    with pytest.raises(MonitorError, match="has no users"):
        _start(settings(files, users=missing))


def test_world_readable_secrets_stop_the_monitor(files: dict[str, Path], tmp_path: Path) -> None:
    for name in ("users", "key"):
        copy = tmp_path / name
        copy.write_bytes(files[name].read_bytes())
        copy.chmod(0o644)
        with pytest.raises(MonitorError, match=rf"{copy} is accessible to every user .*chmod 600"):
            _start(settings(files, **{name: copy}))
        copy.chmod(0o600)
        _start(settings(files, **{name: copy}))


def test_a_bad_certificate_is_explained(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MonitorError, match="gen-cert"):
        _start(settings(files, cert=tmp_path / "none.crt"))
    other_key = tmp_path / "other.key"
    hapair("gen-cert", str(tmp_path / "other.crt"), str(other_key), check=True)
    with pytest.raises(MonitorError, match="cannot load TLS certificate"):
        _start(settings(files, key=other_key))


def test_the_listen_address_in_use_is_explained(monitor: Running, files: dict[str, Path]) -> None:
    taken = settings(files).model_copy(update={"listen": HostPort("127.0.0.1", monitor.port)})
    with pytest.raises(MonitorError, match="cannot listen"):
        _start(taken)
