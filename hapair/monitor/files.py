"""The monitor's files, each checked before it serves: the users file (read again when it
changes, so `hapair passwd` needs no restart) and the TLS certificate and key."""

from __future__ import annotations

import logging
import ssl
import stat
from pathlib import Path

from hapair.monitor.users import User, UsersError, read_users

log = logging.getLogger("hapair.monitor")


class MonitorError(Exception):
    """The monitor cannot start; the message says why and what to do."""


def check_private(path: Path, what: str) -> None:
    """A secret file must exist and be neither world-readable nor world-writable."""
    try:
        st = path.stat()
    except OSError as exc:
        raise MonitorError(f"{what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MonitorError(f"{what} {path} is not a regular file")
    if st.st_mode & 0o006:
        raise MonitorError(
            f"{what} {path} is accessible to every user (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"chmod 600 {path}"
        )


class UsersSource:
    """The users file, read again when it changes (so `hapair passwd` needs no restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.users: dict[str, User] = {}
        self.changed = False  # set when a reload changed who may log in; the reader clears it

    def load(self) -> None:
        """Read the file now; raises MonitorError when it cannot serve (missing, world-
        readable, malformed, or nobody in it)."""
        if not self.path.exists():
            raise MonitorError(
                f"no users file at {self.path}; there is no default password: "
                f"create one with `hapair passwd -f {self.path} USER`"
            )
        check_private(self.path, "users file")
        st = self.path.stat()
        try:
            users = read_users(self.path)
        except (UsersError, OSError, UnicodeDecodeError) as exc:
            raise MonitorError(f"users file: {exc}") from None
        if not users:
            raise MonitorError(
                f"users file {self.path} has no users; add one with "
                f"`hapair passwd -f {self.path} USER`"
            )
        self.changed = self._stamp is not None and users != self.users
        self.users, self._stamp = users, (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> dict[str, User]:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            try:
                self.load()
            except MonitorError as exc:
                log.error("monitor: keeping the users read before: %s", exc)
                self._stamp = stamp  # say it once per change of the file
        return self.users


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    check_private(key, "TLS key")
    if not cert.is_file():
        raise MonitorError(
            f"TLS certificate {cert}: no such file; `hapair gen-cert {cert} {key}` makes a "
            "self-signed one"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise MonitorError(f"cannot load TLS certificate {cert} with key {key}: {exc}") from None
    return context
