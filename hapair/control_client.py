"""The CLI's side of the control socket (control.py): find the agent's socket, send one
request, read its reply."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import time
from pathlib import Path
from typing import Any

from hapair.control import BUSY, MAX_REPLY, encode, refusal

SOCKET_DIR = Path("/run/hapair")


class NoAgent(Exception):
    """Nothing answers on the control socket."""


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
    """Send one request and return the reply. A busy agent (a full listen backlog, or
    every client slot taken) is asked again until `timeout` has passed."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            reply = _ask(path, message, max(0.1, deadline - time.monotonic()))
        except BlockingIOError:  # EAGAIN from connect: the listen backlog is full
            reply = refusal(BUSY) | {"retry": True}
        except OSError as exc:
            raise NoAgent(f"no agent answers on {path}: {exc.strerror or exc}") from None
        if not reply.get("retry") or time.monotonic() + pause > deadline:
            return reply
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _ask(path: Path, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                raise BlockingIOError(exc.errno, exc.strerror) from None
            raise
        with contextlib.suppress(BrokenPipeError):  # refused at once: the reply says why
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
    try:
        reply = json.loads(data)
    except ValueError:
        raise NoAgent(f"the agent on {path} sent no valid reply") from None
    if not isinstance(reply, dict):
        raise NoAgent(f"the agent on {path} sent no valid reply")
    return reply
