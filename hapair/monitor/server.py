"""The HTTPS web monitor, served by the agent in its own event loop.

It sees the agent through two callables only: `status()` returns the status dict
(`hapair status --json`), and `act(request)` sends a control request (the dicts of
the control socket: drain, enable, disable, add, remove, release) through the
agent's one queue of inputs and returns its reply.

TLS only; every path but the login page needs a session or, on /api/ and /metrics,
HTTP Basic credentials (gate.py). Here: the listeners, the pages and the headers; the
JSON API is api.py.
"""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from aiohttp import web

from hapair.config.model import Monitor as MonitorConfig
from hapair.config.types import HostPort
from hapair.monitor import auth
from hapair.monitor.api import Act, Api, StatusOf
from hapair.monitor.files import MonitorError, UsersSource, tls_context
from hapair.monitor.gate import IDENTITY, SESSION_COOKIE, Gate, is_api, json_error
from hapair.monitor.listener import Listener, connection_caps
from hapair.monitor.metrics import CONTENT_TYPE as METRICS_TYPE
from hapair.monitor.metrics import Metrics
from hapair.monitor.peer import PairOf, PeerEndpoint

log = logging.getLogger("hapair.monitor")


LOGIN_COOKIE = "hapair_login"  # the login form's CSRF token (double submit)
MAX_BODY = 64 * 1024
METRICS_CONNECTIONS, METRICS_PER_CLIENT = 16, 4  # metrics_listen serves a few scrapers
KEEPALIVE_TIMEOUT = 15.0  # s an idle kept-alive connection stays open (the page polls faster)
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send Origin: null
    "Strict-Transport-Security": "max-age=31536000",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _cookie(response: web.StreamResponse, name: str, value: str, path: str = "/") -> None:
    response.set_cookie(
        name, value, path=path, secure=True, httponly=True, samesite="Strict", max_age=None
    )


class MonitorServer:
    def __init__(
        self,
        settings: MonitorConfig,
        status: StatusOf,
        act: Act,
        clock: Callable[[], float] = time.monotonic,
        pair: PairOf = lambda: None,
    ) -> None:
        self.settings = settings
        self.status = status
        self.act = act
        self.clock = clock
        self.users = UsersSource(settings.users_file)
        self.gate = Gate(self.users, clock)
        self.api = Api(status, act)
        self.peer = PeerEndpoint(pair, act)
        self.metrics = Metrics(status)
        self.runners: list[web.AppRunner] = []
        self.listeners: list[Listener] = []
        self.bound: list[tuple[str, int]] = []
        static = resources.files("hapair.monitor") / "static"
        self.static = {
            f.name: f.read_bytes() for f in static.iterdir() if Path(f.name).suffix in STATIC_TYPES
        }
        self.templates = {
            name: Template(static.joinpath(name).read_text())
            for name in ("index.html", "login.html")
        }

    # Start and stop.

    async def start(self) -> None:
        """Listen on `listen` (and `metrics_listen`); raises MonitorError when it cannot."""
        self.users.load()
        context = tls_context(self.settings.tls_cert, self.settings.tls_key)
        self.gate.open()
        try:
            caps = connection_caps(self.settings)
            await self._serve(self._app(), self.settings.listen, context, caps)
            if self.settings.metrics_listen is not None:
                scrapers = (min(METRICS_CONNECTIONS, caps[0]), min(METRICS_PER_CLIENT, caps[1]))
                await self._serve(
                    self._metrics_app(), self.settings.metrics_listen, context, scrapers
                )
        except OSError as exc:
            await self.stop()
            raise MonitorError(f"cannot listen: {exc.strerror or exc}") from None
        log.info(
            "web monitor on https://%s%s",
            self.settings.listen,
            f", metrics on https://{self.settings.metrics_listen}/metrics"
            if self.settings.metrics_listen
            else "",
        )

    async def _serve(
        self,
        app: web.Application,
        where: HostPort,
        context: ssl.SSLContext,
        caps: tuple[int, int],
    ) -> None:
        """aiohttp behind our own front door (listener.py): the caps and timeouts that
        keep slow clients from holding the agent's descriptors."""
        total, per_client = caps
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=KEEPALIVE_TIMEOUT
        )

        def handler() -> asyncio.Protocol:
            assert runner.server is not None  # made by setup(), before the first connection
            return runner.server()

        listener = Listener(handler, context, total, per_client)

        async def prepared(request: web.Request, response: web.StreamResponse) -> None:
            listener.response_started(request.protocol)

        app.on_response_prepare.append(prepared)  # before setup() freezes the app
        await runner.setup()
        self.runners.append(runner)
        self.listeners.append(listener)
        self.bound.append(await listener.listen(where.host, where.port))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each listener, in the order started (for tests on port 0)."""
        return list(self.bound)

    async def stop(self) -> None:
        for listener in self.listeners:
            await listener.close()
        self.listeners.clear()
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()
        self.bound.clear()
        self.gate.close()

    # Applications.

    def _app(self) -> web.Application:
        guards = [self._headers, self.gate.guard]
        app = web.Application(middlewares=guards, client_max_size=MAX_BODY)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static_file)
        self.api.route(app)
        self.peer.route(app)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    def _metrics_app(self) -> web.Application:
        """`metrics_listen`: /metrics alone, TLS, without authentication (see README)."""
        app = web.Application(middlewares=[self._headers], client_max_size=MAX_BODY)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    # Middlewares.

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # an unknown path, a wrong method, a body too large
            kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "Location")}
            if is_api(request.path):
                message = {
                    404: f"no such path: {request.path}",
                    405: f"{request.method} is not allowed on {request.path}",
                }.get(exc.status, exc.reason.lower())
                response = json_error(exc.status, message, **kept)
            else:
                response = web.Response(status=exc.status, text=exc.text, headers=kept)
        except Exception as exc:  # a bug of ours: the client learns no more than that
            log.exception("monitor: %s %s failed", request.method, request.path)
            response = json_error(500, f"internal error ({type(exc).__name__})")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    # Pages.

    def _page(
        self, name: str, status: int = 200, trusted: dict[str, str] | None = None, **values: str
    ) -> web.Response:
        """A template filled with `values` escaped and `trusted` (our own CSS) as is."""
        fill = {k: html.escape(v) for k, v in values.items()} | (trusted or {})
        text = self.templates[name].substitute(fill)
        return web.Response(text=text, status=status, content_type="text/html")

    async def login_page(self, request: web.Request) -> web.Response:
        if self.gate.sessions.get(request.cookies.get(SESSION_COOKIE), self.clock()) is not None:
            return _redirect("/")
        return self._login_form(request, "", 200)

    def _login_form(self, request: web.Request, message: str, status: int) -> web.Response:
        token = request.cookies.get(LOGIN_COOKIE) or auth.new_token()
        nonce = secrets.token_urlsafe(16)
        response = self._page(
            "login.html",
            status,
            csrf=token,
            message=message,
            nonce=nonce,
            trusted={"style": self.static["style.css"].decode()},
        )
        response.headers["Content-Security-Policy"] = CSP.replace(
            "style-src 'self'", f"style-src 'nonce-{nonce}'"
        )
        _cookie(response, LOGIN_COOKIE, token, path="/login")
        return response

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, password = str(form.get("username", "")), str(form.get("password", ""))
        if not auth.tokens_equal(
            request.cookies.get(LOGIN_COOKIE, ""), str(form.get("csrf_token", ""))
        ) or not auth.same_origin(request.headers, request.host):
            return self._login_form(request, "The form expired; please log in again.", 403)
        keys = [("client", str(request.remote)), ("user", user)]
        wait = self.gate.limiter.retry_after(keys, self.clock())
        if wait > 0:
            response = self._login_form(
                request, f"Too many failed logins; try again in {wait:.0f} s.", 429
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        role = await self.gate.verify(user, password)
        if role is None:
            self.gate.limiter.failed(keys, self.clock())
            log.warning("monitor: failed login for %r from %s", user, request.remote)
            return self._login_form(request, "Wrong user name or password.", 401)
        self.gate.limiter.succeeded(keys)
        session = self.gate.sessions.create(user, role, self.clock())
        log.info("monitor: %s (%s) logged in from %s", user, role, request.remote)
        response = _redirect("/")
        _cookie(response, SESSION_COOKIE, session.token)
        response.del_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        if identity.session is not None:
            self.gate.sessions.end(identity.session.token)
            log.info("monitor: %s logged out", identity.user)
        response = _redirect("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def index(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        assert identity.session is not None  # Basic is only for /api/ and /metrics
        return self._page(
            "index.html",
            user=identity.user,
            role=identity.role,
            csrf=identity.session.csrf,
        )

    async def static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.static:
            raise web.HTTPNotFound()
        content_type = STATIC_TYPES[Path(name).suffix]
        return web.Response(body=self.static[name], content_type=content_type)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_TYPE})


async def start_monitor(
    settings: MonitorConfig, status: StatusOf, act: Act, pair: PairOf
) -> MonitorServer | None:
    """The web monitor, started; without it (a missing users file, a world-readable key)
    the agent goes on failing over, and says why. `pair`: what signs the peer's
    requests (None without a pair file)."""
    monitor = MonitorServer(settings, status, act, pair=pair)
    try:
        await monitor.start()
    except MonitorError as exc:
        log.error("web monitor not started: %s", exc)
        return None
    return monitor
