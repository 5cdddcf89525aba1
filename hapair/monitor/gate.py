"""The monitor's door: who a request comes from (a session cookie, or HTTP Basic on /api/
and /metrics), CSRF and roles, checked before any handler sees the request.

Password hashing (scrypt) runs in worker threads at normal scheduling priority, so a
login never holds up a heartbeat.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hapair.monitor import auth
from hapair.monitor.files import UsersSource
from hapair.monitor.peer import PATH as PEER_PATH
from hapair.monitor.users import verify_password

log = logging.getLogger("hapair.monitor")

SESSION_COOKIE = "hapair_session"
CSRF_HEADER = "X-CSRF-Token"
VIEWER_POSTS = frozenset({"/api/config/check"})  # change nothing: a viewer may send them
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# A hash to verify against for unknown users, so that a login takes as long either way.
_DUMMY_HASH = (
    "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)
_BASIC = {"WWW-Authenticate": 'Basic realm="hapair", charset="UTF-8"'}


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    role: str
    session: auth.Session | None  # None: HTTP Basic


IDENTITY = web.RequestKey("identity", Identity)


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status, headers=headers)


def is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/metrics"


class Gate:
    def __init__(self, users: UsersSource, clock: Callable[[], float]) -> None:
        self.users = users
        self.clock = clock
        self.sessions = auth.SessionStore()
        self.limiter = auth.LoginLimiter()
        self.basic_cache = auth.BasicCache()
        self._hashing: ThreadPoolExecutor | None = None
        self._hash_slots = asyncio.Semaphore(2)  # scrypt takes 32 MiB each

    def open(self) -> None:
        self._hashing = ThreadPoolExecutor(
            2, thread_name_prefix="hapair-monitor", initializer=_normal_scheduling
        )

    def close(self) -> None:
        if self._hashing is not None:
            self._hashing.shutdown(wait=False, cancel_futures=True)
            self._hashing = None

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Authentication, CSRF and roles, before any handler sees the request."""
        if request.path in ("/login", PEER_PATH):  # the peer's are signed (peer.py)
            return await handler(request)  # type: ignore[no-any-return]
        identity = await self.identify(request)
        if isinstance(identity, web.Response):
            return identity
        if identity is None:
            if is_api(request.path):
                return json_error(
                    401,
                    "authentication required: log in or send HTTP Basic credentials",
                    **_BASIC,
                )
            if request.method in ("GET", "HEAD"):
                return web.Response(status=303, headers={"Location": "/login"})
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
            if (
                request.path.startswith("/api/")
                and request.path not in VIEWER_POSTS
                and identity.role != "admin"
            ):
                return json_error(403, f"{identity.user} is a viewer; only an admin may act")
        request[IDENTITY] = identity
        return await handler(request)  # type: ignore[no-any-return]

    async def identify(self, request: web.Request) -> Identity | web.Response | None:
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
        if credentials is None or not is_api(request.path):
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
            role = await self.verify(user, password)
            if role is None:
                self.limiter.failed(keys, self.clock())
                log.warning("monitor: wrong Basic credentials for %r from %s", user, request.remote)
                return json_error(
                    401,
                    "wrong user name or password",
                    **_BASIC,
                )
            self.limiter.succeeded(keys)
            self.basic_cache.add(user, password, role, self.clock())
        return Identity(user, role, None)

    async def verify(self, user: str, password: str) -> str | None:
        """The user's role when the password is theirs, else None."""
        found = self.users.current().get(user)
        stored = found.hash if found else _DUMMY_HASH
        async with self._hash_slots:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._hashing, verify_password, password, stored)
        return found.role if ok and found else None


def _normal_scheduling() -> None:
    """Worker threads inherit the agent's SCHED_FIFO; hashing passwords does not need it."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        text = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None
