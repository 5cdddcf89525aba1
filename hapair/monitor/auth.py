"""The monitor's authentication pieces, pure (the caller passes the time): sessions,
CSRF checks, the login rate limit, and a short-lived cache of verified Basic credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SESSION_IDLE = 30 * 60.0  # a session unused this long ends
SESSION_LIFETIME = 12 * 3600.0  # and none outlives this, however busy
MAX_SESSIONS = 1000
LOGIN_WINDOW = 300.0
MAX_FAILURES_PER_CLIENT = 5  # per client address within LOGIN_WINDOW
MAX_FAILURES_PER_USER = 10  # per user name within LOGIN_WINDOW, from anywhere
BASIC_CACHE_TTL = 300.0  # a verified Basic password is trusted this long without scrypt again
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def new_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_equal(expected: str, given: str | None) -> bool:
    """Constant-time comparison; a missing or empty token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


@dataclass
class Session:
    token: str
    user: str
    role: str
    csrf: str
    created: float
    last_used: float


class SessionStore:
    """Sessions by their cookie token, ended after SESSION_IDLE unused or SESSION_LIFETIME."""

    def __init__(
        self,
        idle: float = SESSION_IDLE,
        lifetime: float = SESSION_LIFETIME,
        limit: int = MAX_SESSIONS,
    ) -> None:
        self.idle, self.lifetime, self.limit = idle, lifetime, limit
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str, role: str, now: float) -> Session:
        self._expire(now)
        while len(self._sessions) >= self.limit:  # the least recently used goes first
            oldest = min(self._sessions.values(), key=lambda s: s.last_used)
            del self._sessions[oldest.token]
        session = Session(new_token(), user, role, new_token(), now, now)
        self._sessions[session.token] = session
        return session

    def get(self, token: str | None, now: float) -> Session | None:
        """The live session for this token, marked as used; None when unknown or expired."""
        session = self._sessions.get(token) if token else None
        if session is None:
            return None
        if self._expired(session, now):
            del self._sessions[session.token]
            return None
        session.last_used = now
        return session

    def end(self, token: str) -> None:
        self._sessions.pop(token, None)

    def retain(self, keep: Callable[[Session], bool]) -> None:
        """End every session `keep` refuses (a user removed, a role changed)."""
        for token in [t for t, s in self._sessions.items() if not keep(s)]:
            del self._sessions[token]

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used > self.idle or now - session.created > self.lifetime

    def _expire(self, now: float) -> None:
        self.retain(lambda s: not self._expired(s, now))


@dataclass
class LoginLimiter:
    """At most `limits[kind]` failed logins per key within `window`; then the key waits
    until its oldest failure leaves the window. Keys are ('client', addr), ('user', name)."""

    window: float = LOGIN_WINDOW
    limits: Mapping[str, int] = field(
        default_factory=lambda: {"client": MAX_FAILURES_PER_CLIENT, "user": MAX_FAILURES_PER_USER}
    )
    max_keys: int = 10_000
    _failures: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def retry_after(self, keys: Iterable[tuple[str, str]], now: float) -> float:
        """Seconds until a login for these keys may be tried again; 0 when it may now."""
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if times is not None and len(times) >= self.limits[key[0]]:
                wait = max(wait, times[0] + self.window - now)
        return wait

    def failed(self, keys: Iterable[tuple[str, str]], now: float) -> None:
        if len(self._failures) >= self.max_keys:
            self._prune(now)
        for key in keys:
            times = self._recent(key, now)
            if times is None:
                times = self._failures[key] = deque(maxlen=max(self.limits.values()))
            times.append(now)

    def succeeded(self, keys: Iterable[tuple[str, str]]) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            times = self._recent(key, now)
            if not times:
                del self._failures[key]
        while len(self._failures) >= self.max_keys:  # still full: forget the oldest keys
            del self._failures[next(iter(self._failures))]


class BasicCache:
    """Basic credentials verified recently, so that a scraper every 15 s does not cost an
    scrypt each time. Holds keyed MACs of the passwords (key random per process), never
    the passwords."""

    def __init__(self, ttl: float = BASIC_CACHE_TTL, limit: int = 1000) -> None:
        self.ttl, self.limit = ttl, limit
        self._key = secrets.token_bytes(32)
        self._verified: dict[tuple[str, bytes], tuple[str, float]] = {}  # -> (role, until)

    def _mac(self, user: str, password: str) -> tuple[str, bytes]:
        return user, hmac.new(self._key, password.encode(), hashlib.sha256).digest()

    def role(self, user: str, password: str, now: float) -> str | None:
        hit = self._verified.get(self._mac(user, password))
        if hit is None or hit[1] < now:
            return None
        return hit[0]

    def add(self, user: str, password: str, role: str, now: float) -> None:
        if len(self._verified) >= self.limit:
            self._verified.clear()
        self._verified[self._mac(user, password)] = (role, now + self.ttl)

    def clear(self) -> None:
        self._verified.clear()


def same_origin(headers: Mapping[str, str], host: str) -> bool:
    """False when the browser says the request comes from another site (Sec-Fetch-Site,
    Origin or, failing both, Referer); True without such headers (curl, scrapers)."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    for name in ("Origin", "Referer"):
        value = headers.get(name)
        if value is None:
            continue
        if value == "null":
            return False
        parts = urlsplit(value)
        return parts.scheme == "https" and parts.netloc.lower() == host.lower()
    return True


def csrf_ok(
    method: str,
    session_csrf: str | None,
    given: str | None,
    headers: Mapping[str, str],
    host: str,
) -> bool:
    """Whether a request may change state. Safe methods always may. With a session it must
    carry the session's CSRF token; with Basic credentials (no session) it must not come
    from another site, which a browser that cached those credentials would reveal."""
    if method in SAFE_METHODS:
        return True
    if not same_origin(headers, host):
        return False
    if session_csrf is None:
        return True  # Basic: nothing a browser attaches on its own besides what is checked
    return tokens_equal(session_csrf, given)
