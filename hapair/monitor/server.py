"""The HTTPS web monitor, served by the agent in its own event loop.

It sees the agent through two callables only: `status()` returns the status dict
(`hapair status --json`), and `act(request)` sends a control request (the dicts of
the control socket: drain, enable, disable, add, remove, release) through the
agent's one queue of inputs and returns its reply.

TLS only; every path but the login page needs a session or, on /api/ and /metrics,
HTTP Basic credentials. Password hashing (scrypt) runs in worker threads at normal
scheduling priority, so a login never holds up a heartbeat.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import html
import logging
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from aiohttp import web

from hapair.config.model import Monitor as MonitorConfig
from hapair.config.types import HostPort
from hapair.control import parse_json
from hapair.monitor import auth
from hapair.monitor.files import MonitorError, UsersSource, tls_context
from hapair.monitor.listener import Listener, connection_caps
from hapair.monitor.metrics import CONTENT_TYPE as METRICS_TYPE
from hapair.monitor.metrics import Metrics
from hapair.monitor.users import verify_password
from hapair.status import Status

log = logging.getLogger("hapair.monitor")

StatusOf = Callable[[], Status]
Act = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

SESSION_COOKIE = "hapair_session"
LOGIN_COOKIE = "hapair_login"  # the login form's CSRF token (double submit)
CSRF_HEADER = "X-CSRF-Token"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
ACT_TIMEOUT = 10.0
MAX_BODY = 64 * 1024
METRICS_CONNECTIONS, METRICS_PER_CLIENT = 16, 4  # metrics_listen serves a few scrapers
KEEPALIVE_TIMEOUT = 15.0  # s an idle kept-alive connection stays open (the page polls faster)
SERVER_ACTIONS = ("drain", "enable", "disable")
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
# A hash to verify against for unknown users, so that a login takes as long either way.
_DUMMY_HASH = (
    "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)
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


def _normal_scheduling() -> None:
    """Worker threads inherit the agent's SCHED_FIFO; hashing passwords does not need it."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    role: str
    session: auth.Session | None  # None: HTTP Basic


IDENTITY = web.RequestKey("identity", Identity)


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status, headers=headers)


def _is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/metrics"


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        text = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


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
    ) -> None:
        self.settings = settings
        self.status = status
        self.act = act
        self.clock = clock
        self.users = UsersSource(settings.users_file)
        self.sessions = auth.SessionStore()
        self.limiter = auth.LoginLimiter()
        self.basic_cache = auth.BasicCache()
        self.metrics = Metrics(status)
        self.runners: list[web.AppRunner] = []
        self.listeners: list[Listener] = []
        self.bound: list[tuple[str, int]] = []
        self._hashing: ThreadPoolExecutor | None = None
        self._hash_slots = asyncio.Semaphore(2)  # scrypt takes 32 MiB each
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
        self._hashing = ThreadPoolExecutor(
            2, thread_name_prefix="hapair-monitor", initializer=_normal_scheduling
        )
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
        if self._hashing is not None:
            self._hashing.shutdown(wait=False, cancel_futures=True)
            self._hashing = None

    # Applications.

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers, self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static_file)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_post("/api/release", self.api_release)
        app.router.add_post("/api/servers/{service}", self.api_add)
        app.router.add_post("/api/servers/{service}/{server}/{action}", self.api_server_action)
        app.router.add_delete("/api/servers/{service}/{server}", self.api_remove)
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
            if _is_api(request.path):
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

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Authentication, CSRF and roles, before any handler sees the request."""
        if request.path == "/login":
            return await handler(request)  # type: ignore[no-any-return]
        identity = await self._identify(request)
        if isinstance(identity, web.Response):
            return identity
        if identity is None:
            if _is_api(request.path):
                return json_error(
                    401,
                    "authentication required: log in or send HTTP Basic credentials",
                    **{"WWW-Authenticate": 'Basic realm="hapair", charset="UTF-8"'},
                )
            if request.method in ("GET", "HEAD"):
                return _redirect("/login")
            return json_error(401, "authentication required: log in first")
        if request.method not in auth.SAFE_METHODS:
            session = identity.session
            given = request.headers.get(CSRF_HEADER)
            if session is not None and given is None and request.content_type in FORM_TYPES:
                given = str((await request.post()).get("csrf_token", ""))
            if not auth.csrf_ok(
                request.method,
                None if session is None else session.csrf,
                given,
                request.headers,
                request.host,
            ):
                return json_error(403, "refused: missing or wrong CSRF token, or another site")
            if request.path.startswith("/api/") and identity.role != "admin":
                return json_error(403, f"{identity.user} is a viewer; only an admin may act")
        request[IDENTITY] = identity
        return await handler(request)  # type: ignore[no-any-return]

    async def _identify(self, request: web.Request) -> Identity | web.Response | None:
        """Who sent this: a session cookie anywhere, or Basic credentials on /api/ and
        /metrics. A Response when Basic credentials were wrong or are rate-limited."""
        users = self.users.current()
        if self.users.changed:  # a removed user or a changed role ends those sessions
            self.users.changed = False
            self.basic_cache.clear()
            self.sessions.retain(lambda s: s.user in users and users[s.user].role == s.role)
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE), self.clock())
        if session is not None:
            return Identity(session.user, session.role, session)
        credentials = _basic_credentials(request.headers.get("Authorization"))
        if credentials is None or not _is_api(request.path):
            return None
        user, password = credentials
        keys = [("client", str(request.remote)), ("user", user)]
        now = self.clock()
        role = self.basic_cache.role(user, password, now)
        if role is None:
            wait = self.limiter.retry_after(keys, now)
            if wait > 0:
                return json_error(
                    429,
                    f"too many failed logins; try again in {wait:.0f}s",
                    **{"Retry-After": str(int(wait) + 1)},
                )
            role = await self._verify(user, password)
            if role is None:
                self.limiter.failed(keys, self.clock())
                log.warning("monitor: wrong Basic credentials for %r from %s", user, request.remote)
                return json_error(
                    401,
                    "wrong user name or password",
                    **{"WWW-Authenticate": 'Basic realm="hapair", charset="UTF-8"'},
                )
            self.limiter.succeeded(keys)
            self.basic_cache.add(user, password, role, self.clock())
        return Identity(user, role, None)

    async def _verify(self, user: str, password: str) -> str | None:
        """The user's role when the password is theirs, else None."""
        found = self.users.current().get(user)
        stored = found.hash if found else _DUMMY_HASH
        async with self._hash_slots:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._hashing, verify_password, password, stored)
        return found.role if ok and found else None

    # Pages.

    def _page(
        self, name: str, status: int = 200, trusted: dict[str, str] | None = None, **values: str
    ) -> web.Response:
        """A template filled with `values` escaped and `trusted` (our own CSS) as is."""
        fill = {k: html.escape(v) for k, v in values.items()} | (trusted or {})
        text = self.templates[name].substitute(fill)
        return web.Response(text=text, status=status, content_type="text/html")

    async def login_page(self, request: web.Request) -> web.Response:
        if self.sessions.get(request.cookies.get(SESSION_COOKIE), self.clock()) is not None:
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
        wait = self.limiter.retry_after(keys, self.clock())
        if wait > 0:
            response = self._login_form(
                request, f"Too many failed logins; try again in {wait:.0f} s.", 429
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        role = await self._verify(user, password)
        if role is None:
            self.limiter.failed(keys, self.clock())
            log.warning("monitor: failed login for %r from %s", user, request.remote)
            return self._login_form(request, "Wrong user name or password.", 401)
        self.limiter.succeeded(keys)
        session = self.sessions.create(user, role, self.clock())
        log.info("monitor: %s (%s) logged in from %s", user, role, request.remote)
        response = _redirect("/")
        _cookie(response, SESSION_COOKIE, session.token)
        response.del_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        if identity.session is not None:
            self.sessions.end(identity.session.token)
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

    # The API.

    async def api_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def api_server_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in SERVER_ACTIONS:
            return json_error(404, f"no action {action!r}; expected one of drain, enable, disable")
        return await self._act(request, {"cmd": action, **self._server_of(request)})

    async def api_remove(self, request: web.Request) -> web.Response:
        return await self._act(request, {"cmd": "remove", **self._server_of(request)})

    async def api_add(self, request: web.Request) -> web.Response:
        try:
            body = parse_json(await request.read())
        except ValueError as exc:
            return json_error(
                400, f'expected a JSON body: {{"server": "ADDR:PORT", "weight": N}} ({exc})'
            )
        if not isinstance(body, dict) or not isinstance(body.get("server"), str):
            return json_error(400, 'expected a JSON body: {"server": "ADDR:PORT", "weight": N}')
        weight = body.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 65535:
            return json_error(400, "weight must be a whole number from 0 to 65535")
        service = request.match_info["service"]
        return await self._act(
            request, {"cmd": "add", "service": service, "server": body["server"], "weight": weight}
        )

    async def api_release(self, request: web.Request) -> web.Response:
        return await self._act(request, {"cmd": "release"})

    @staticmethod
    def _server_of(request: web.Request) -> dict[str, str]:
        return {"service": request.match_info["service"], "server": request.match_info["server"]}

    async def _act(self, request: web.Request, command: dict[str, Any]) -> web.Response:
        identity = request[IDENTITY]
        what = " ".join(str(command[k]) for k in ("cmd", "service", "server") if k in command)
        try:
            async with asyncio.timeout(ACT_TIMEOUT):
                reply = await self.act(command)
        except TimeoutError:
            return json_error(503, f"the agent did not answer within {ACT_TIMEOUT:g}s")
        if not reply.get("ok"):
            error = str(reply.get("error", "refused"))
            log.info("monitor: %s: %s refused: %s", identity.user, what, error)
            return json_error(409, error)
        log.info("monitor: %s: %s", identity.user, what)
        return web.json_response({"ok": True, "result": reply.get("result")})
