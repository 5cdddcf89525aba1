"""The control socket's wire format and the CLI's client for it.

One request per connection: a JSON object and a newline in, a JSON object and a
newline out (`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`).
The agent's server side decodes with `decode_request`, which never raises.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

MAX_MESSAGE = 64 * 1024  # a request
MAX_REPLY = 256 * 1024 * 1024  # a status of 10,000 real servers is ~2 MB
COMMANDS = frozenset({"status", "drain", "enable", "disable", "add", "remove", "release"})
SOCKET_DIR = Path("/run/hapair")


class NoAgent(Exception):
    """Nothing answers on the control socket."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode_request(line: bytes) -> dict[str, Any] | str:
    """A request as a dict, or the reason it is refused."""
    if len(line) > MAX_MESSAGE:
        return "request too large"
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return "request is not JSON"
    if not isinstance(request, dict) or request.get("cmd") not in COMMANDS:
        return f"unknown command; expected one of {', '.join(sorted(COMMANDS))}"
    return request


def find_socket(explicit: Path | None) -> Path:
    """The given socket, or the only one in /run/hapair."""
    if explicit is not None:
        return explicit
    found = sorted(SOCKET_DIR.glob("*.sock")) if SOCKET_DIR.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise NoAgent(
            f"no control socket in {SOCKET_DIR}; is `hapair run` running? (or give -c FILE)"
        )
    names = ", ".join(p.name for p in found)
    raise NoAgent(f"several agents in {SOCKET_DIR} ({names}); say which with -c FILE or --socket")


def request(path: Path, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(encode(message))
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_REPLY:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if chunk.endswith(b"\n"):
                    break
            data = b"".join(chunks)
    except OSError as exc:
        raise NoAgent(f"no agent answers on {path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise NoAgent(f"the agent on {path} sent no valid reply") from None
    if not isinstance(reply, dict):
        raise NoAgent(f"the agent on {path} sent no valid reply")
    return reply
