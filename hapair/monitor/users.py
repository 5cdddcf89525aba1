"""The monitor's users file: `user:role:hash` lines, written 0600.

Hashes are scrypt with a random salt (`scrypt$N$r$p$salt$hash`, base64). There
is no default user or password; a missing file means nobody may log in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROLES = ("admin", "viewer")
_USER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_N, _R, _P = 2**15, 8, 1
MIN_PASSWORD = 8


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    hash: str


class UsersError(ValueError):
    pass


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2**27, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=2**27,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def read_users(path: Path) -> dict[str, User]:
    users: dict[str, User] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or not _USER.match(parts[0]) or parts[1] not in ROLES:
            raise UsersError(f"{path}:{number}: expected 'user:role:hash'")
        users[parts[0]] = User(*parts)
    return users


def set_user(path: Path, name: str, password: str, role: str) -> None:
    """Add or change one user; the file is replaced atomically, mode 0600."""
    if not _USER.match(name):
        raise UsersError(f"{name!r}: a user name is 1-64 letters, digits or '_.@-'")
    if role not in ROLES:
        raise UsersError(f"{role!r}: a role is one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise UsersError(f"the password must have at least {MIN_PASSWORD} characters")
    users = read_users(path) if path.exists() else {}
    users[name] = User(name, role, hash_password(password))
    text = "".join(f"{u.name}:{u.role}:{u.hash}\n" for u in users.values())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
