"""The control socket: its wire format, the typed requests and the agent's serving loop
(the CLI's side is control_client.py).

One request per connection: a JSON object and a newline in, a JSON object and a
newline out (`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`). Every
line gets an answer: what is not a well-formed request of a known command, with fields
of the right types and ranges, is refused with the reason before the agent sees it.
The server bounds what a client may cost (the line's size, the time to send it, the
clients at once) and never lets an exception out of a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024  # a request
MAX_CONFIG_MESSAGE = 4 * 1024 * 1024  # a config_* request: a config file of 1 MiB, escaped
MAX_REPLY = 256 * 1024 * 1024  # a status of 10,000 real servers is ~2 MB
MAX_DEPTH = 8  # JSON nesting of a request (a request needs 1)
MAX_TEXT = 256  # characters of a service name or a server
MAX_CLIENTS = 256  # connections served at once; more are told to come back
MAX_PER_PROCESS = 8  # of them from one process (SO_PEERCRED): a flood leaves room for others
READ_TIMEOUT = 2.0  # s for a client to send its line
WRITE_TIMEOUT = 60.0  # s to take the reply: a status of thousands of servers, a busy machine
BACKLOG = 256
SERVER_COMMANDS = frozenset({"drain", "enable", "disable", "add", "remove"})
# The running config's versions; each takes these fields (all strings).
CONFIG_COMMANDS = {
    "config_show": frozenset(),
    "config_history": frozenset(),
    "config_check": frozenset({"toml"}),
    "config_apply": frozenset({"toml", "version", "user"}),
    "config_rollback": frozenset({"version", "user"}),
    # On this director alone: what a pair's change asks of each (configure.py).
    "config_show_here": frozenset(),
    "config_apply_here": frozenset({"toml", "version", "user"}),
    "config_rollback_here": frozenset({"version", "user"}),
}
CONFIG_PREFIX = b'{"cmd":"config_'  # how encode() starts a config_* line
COMMANDS = SERVER_COMMANDS | {"status", "release"} | CONFIG_COMMANDS.keys()
BUSY = "busy: too many control clients at once; try again"
_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Request:
    """A checked request: `cmd` is one of COMMANDS; `service` and `server` are set for the
    server commands, `weight` (0..65535) for `add` only; `toml`, `version` and `user`
    for the config commands that take them."""

    cmd: str
    service: str = ""
    server: str = ""
    weight: int = 1
    toml: str = ""
    version: str = ""
    user: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cmd": self.cmd}
        if self.cmd in SERVER_COMMANDS:
            out |= {"service": self.service, "server": self.server}
        if self.cmd == "add":
            out["weight"] = self.weight
        for key in sorted(CONFIG_COMMANDS.get(self.cmd, ())):
            out[key] = getattr(self, key)
        return out


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def refusal(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON from outside: ValueError (with a readable reason) for anything that is not
    UTF-8 JSON nested at most `max_depth` deep with finite numbers."""
    try:
        value = json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"nested more than {max_depth} levels deep") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at character {exc.pos}") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise ValueError(f"nested more than {max_depth} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{request['cmd']} needs {key!r}, a string")
    if len(value) > MAX_TEXT or not value.isprintable():
        raise ValueError(f"{key!r} must be printable text of at most {MAX_TEXT} characters")
    return value


def check_request(request: Any) -> Request:
    """A request object (from the socket or the monitor) as a Request, or ValueError."""
    if not isinstance(request, dict):
        raise ValueError('a request is a JSON object, e.g. {"cmd": "status"}')
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ValueError(f"unknown command; expected one of {', '.join(sorted(COMMANDS))}")
    fields = {"cmd"} | ({"service", "server"} if cmd in SERVER_COMMANDS else set())
    fields |= CONFIG_COMMANDS.get(cmd, frozenset())
    if cmd == "add":
        fields.add("weight")
    extra = sorted(str(k)[:40] for k in request if k not in fields)
    if extra:
        raise ValueError(f"{cmd} takes no {', '.join(map(repr, extra))}")
    if cmd in CONFIG_COMMANDS:
        return _config_request(cmd, request)
    if cmd not in SERVER_COMMANDS:
        return Request(cmd)
    weight = request.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 65535:
        raise ValueError("weight must be a whole number from 0 to 65535")
    return Request(cmd, _text(request, "service"), _text(request, "server"), weight)


def _config_request(cmd: str, request: dict[str, Any]) -> Request:
    values: dict[str, str] = {}
    for key in CONFIG_COMMANDS[cmd]:
        value = request.get(key, "" if key == "user" else None)
        if not isinstance(value, str):
            raise ValueError(f"{cmd} needs {key!r}, a string")
        limit = MAX_CONFIG_MESSAGE if key == "toml" else MAX_TEXT
        if len(value) > limit or (key != "toml" and value and not value.isprintable()):
            raise ValueError(f"{key!r} must be printable text of at most {limit} characters")
        values[key] = value
    return Request(
        cmd,
        toml=values.get("toml", ""),
        version=values.get("version", ""),
        user=values.get("user", ""),
    )


Handler = Callable[[Request], Awaitable[dict[str, Any]]]


def checked(handle: Handler) -> Callable[[Any], Awaitable[dict[str, Any]]]:
    """`handle` for requests that come as decoded JSON (the monitor's), checked as the
    socket's are: a bad one is refused without reaching `handle`."""

    async def ask(request: Any) -> dict[str, Any]:
        try:
            checked_request = check_request(request)
        except ValueError as exc:
            return refusal(f"bad request: {exc}")
        return await handle(checked_request)

    return ask


def decode_request(line: bytes) -> Request | str:
    """A request line as a Request, or the reason it is refused. Never raises."""
    if len(line) > MAX_MESSAGE and not line.startswith(CONFIG_PREFIX):
        return f"request larger than {MAX_MESSAGE} bytes"
    if len(line) > MAX_CONFIG_MESSAGE:
        return f"request larger than {MAX_CONFIG_MESSAGE} bytes"
    try:
        return check_request(parse_json(line))
    except ValueError as exc:
        return f"bad request: {exc}"


# The agent's side.


class ControlServer:
    """Serves the control socket: one line in, one reply out, for at most MAX_CLIENTS
    clients at once and MAX_PER_PROCESS from one process (the others are answered BUSY
    at once, so the listen backlog drains and a waiting CLI retries); a client has
    READ_TIMEOUT to send its line."""

    def __init__(self, path: Path, handle: Handler) -> None:
        self.path = path
        self.handle = handle
        self.clients = 0
        self.per_process: Counter[int] = Counter()
        self.refused = 0  # connections answered BUSY
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # one a client being served

    async def start(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(path), limit=MAX_MESSAGE, backlog=BACKLOG
            )
        finally:
            os.umask(old)
        path.chmod(0o600)

    async def close(self) -> None:
        """No new clients; those being served are cut off and gone when this returns (an
        answer the agent will never give is not waited for)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(OSError):
            self.path.unlink()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            pid = _peer_pid(writer)
            if self.clients >= MAX_CLIENTS or self.per_process[pid] >= MAX_PER_PROCESS:
                self.refused += 1
                writer.write(encode(refusal(BUSY) | {"retry": True}))
                return
            self.clients += 1
            self.per_process[pid] += 1
            try:
                await self._serve(reader, writer)
            finally:
                self.clients -= 1
                self.per_process[pid] -= 1
                if self.per_process[pid] <= 0:
                    del self.per_process[pid]
        except Exception as exc:  # a client's trouble is the client's: say it, serve on
            log.debug("control client: %s: %s", type(exc).__name__, exc)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        overlong = False
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                line = await read_line(reader)
        except TimeoutError:
            reply = refusal(f"no request line within {READ_TIMEOUT:g}s")
        except Overlong as exc:
            reply, overlong = refusal(str(exc)), True
        else:
            request = decode_request(line)
            if isinstance(request, str):
                reply = refusal(request)
            else:
                try:
                    reply = await self.handle(request)
                except Exception as exc:  # a bug behind the socket: still an answer
                    log.exception("control request %s", request.cmd)
                    reply = refusal(f"internal error: {type(exc).__name__}")
        async with asyncio.timeout(WRITE_TIMEOUT):
            writer.write(encode(reply))
            await writer.drain()
        if overlong:
            await _discard(reader)


class Overlong(Exception):
    """A request line longer than its bound."""


def line_bound(start: bytes) -> int:
    """The most a request line starting with `start` may hold: a config_* line (as
    encode() writes it) MAX_CONFIG_MESSAGE, any other MAX_MESSAGE."""
    config = start[: len(CONFIG_PREFIX)] == CONFIG_PREFIX[: len(start)]
    return MAX_CONFIG_MESSAGE if config else MAX_MESSAGE


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """One request line (up to its newline, or what came before EOF), read no further
    than its bound, which its first bytes choose (line_bound): a line that is not a
    config_* command is refused at MAX_MESSAGE, not buffered up to the config bound."""
    data = bytearray()
    while True:
        bound = line_bound(bytes(data))
        chunk = await reader.read(min(MAX_MESSAGE, bound + 1 - len(data)))
        if not chunk:
            return bytes(data)
        end = chunk.find(b"\n")
        data += chunk if end < 0 else chunk[: end + 1]
        if len(data) > line_bound(bytes(data[: len(CONFIG_PREFIX)])):
            raise Overlong(f"request larger than {line_bound(bytes(data))} bytes")
        if end >= 0:
            return bytes(data)


def _peer_pid(writer: asyncio.StreamWriter) -> int:
    """The connecting process (0 if the kernel does not say)."""
    sock = writer.get_extra_info("socket")
    try:
        pid, _, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError, struct.error):
        return 0
    return int(pid)


async def _discard(reader: asyncio.StreamReader, seconds: float = 1.0) -> None:
    """Read and drop what a client still sends after its refusal, for a moment, so that
    it can read the reply instead of failing to write."""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(seconds):
            for _ in range(256):
                if not await reader.read(MAX_MESSAGE):
                    return
