"""Requests between the two directors of a pair, over HTTPS to the peer's monitor:
`ask` sends one (a config change to apply there alone, or its config's version) and
`PeerEndpoint` serves them at PATH.

Both are signed with the pair's heartbeat key (core/push.py), request and reply, so no
login is needed and no one on the management network can push, replay or answer in the
peer's place. TLS keeps the config text from passive eyes; the peer's certificate is
not verified, as the signature already says who answers (each director may have its own
self-signed certificate).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, StreamReader, web

from hapair.control import parse_json
from hapair.core import push

log = logging.getLogger("hapair.monitor")

PATH = "/api/peer"
MAX_BODY = 4 * 1024 * 1024  # a config of 1 MiB, escaped (control.MAX_CONFIG_MESSAGE)
MAX_REPLY = 1024 * 1024
TIMEOUT = 15.0  # s for the peer to check a change and reload (seconds in a slow VM)
AGENT_TIMEOUT = TIMEOUT - 5.0  # the peer answers before its sender stops waiting
# What a peer may ask: the version it runs, or a change applied there alone.
COMMANDS = frozenset({"config_show_here", "config_apply_here", "config_rollback_here"})


class PeerError(Exception):
    """The peer could not be asked, or did not answer as the peer: the message says why."""


@dataclass(frozen=True, slots=True)
class Pair:
    """What signs a request: the heartbeat key, this director's and the peer's names."""

    key: bytes
    me: str
    peer: str


async def ask(
    where: str, pair: Pair, command: dict[str, Any], timeout: float = TIMEOUT
) -> dict[str, Any]:
    """The peer's reply (a control reply: {"ok": ..., ...}) to `command`, sent to its
    monitor at `where` (host:port); PeerError when it cannot be reached or the reply is
    not signed by it."""
    body = json.dumps(command, separators=(",", ":")).encode()
    nonce = secrets.token_hex(16)
    header = push.sign(pair.key, pair.me, pair.peer, PATH, body, time.time(), nonce)
    url = f"https://{where}{PATH}"
    try:
        async with (
            ClientSession(timeout=ClientTimeout(total=timeout)) as session,
            session.post(
                url,
                data=body,
                headers={push.HEADER: header, "Content-Type": "application/json"},
                ssl=False,
                allow_redirects=False,
            ) as response,
        ):
            data = await read_limited(response.content, MAX_REPLY)
            status = response.status
            signature = response.headers.get(push.REPLY_HEADER)
    except TimeoutError:
        raise PeerError(f"no answer from https://{where} within {timeout:g}s") from None
    except (ClientError, OSError) as exc:
        raise PeerError(f"https://{where}: {exc}") from None
    if data is None:
        raise PeerError(f"https://{where} answered more than {MAX_REPLY} bytes")
    if not push.reply_ok(pair.key, nonce, status, data, signature):
        why = _error_of(data) if status in (403, 404) else ""
        raise PeerError(
            f"https://{where} answered {status} without {pair.peer}'s signature"
            + (f": {why}" if why else " (is it the peer's monitor?)")
        )
    try:
        reply = parse_json(data)
    except ValueError as exc:
        raise PeerError(f"{pair.peer}'s reply is not JSON: {exc}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise PeerError(f"{pair.peer}'s reply is not a control reply")
    return reply


async def read_limited(stream: StreamReader, limit: int) -> bytes | None:
    """The whole body (a read returns what has arrived, not all of it), or None once it
    passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error_of(data: bytes) -> str:
    try:
        error = parse_json(data).get("error")
    except (ValueError, AttributeError):
        return ""
    return str(error)[:200] if isinstance(error, str) else ""


PairOf = Callable[[], Pair | None]
Act = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class PeerEndpoint:
    """PATH on the monitor: a signed request from the peer, checked before anything
    reads its body as a command; `pair()` is None when this is not a pair file."""

    def __init__(self, pair: PairOf, act: Act, clock: Callable[[], float] = time.time) -> None:
        self.pair = pair
        self.act = act
        self.clock = clock
        self.guard = push.ReplayGuard()
        self.refused = 0  # requests refused before they were read as commands

    def route(self, app: web.Application) -> None:
        app.router.add_post(PATH, self.serve)

    async def serve(self, request: web.Request) -> web.Response:
        pair = self.pair()
        if pair is None:
            return self._refuse(request, 404, "this director does not run a pair file")
        body = await read_limited(request.content, MAX_BODY)
        if body is None:
            return self._refuse(request, 413, f"the body is larger than {MAX_BODY} bytes")
        try:
            signed = self.guard.check(
                pair.key,
                request.headers.get(push.HEADER, ""),
                pair.me,
                pair.peer,
                PATH,
                body,
                self.clock(),
            )
        except push.PushRefused as exc:
            return self._refuse(request, 403, f"refused: {exc}")
        try:
            command = parse_json(body)
        except ValueError as exc:
            return _signed(pair, signed.nonce, 400, {"ok": False, "error": f"bad request: {exc}"})
        if not isinstance(command, dict) or command.get("cmd") not in COMMANDS:
            error = f"a peer may send only {', '.join(sorted(COMMANDS))}"
            return _signed(pair, signed.nonce, 400, {"ok": False, "error": error})
        try:
            async with asyncio.timeout(AGENT_TIMEOUT):
                reply = await self.act(command)
        except TimeoutError:
            error = f"the agent did not answer within {AGENT_TIMEOUT:g}s; it may still take it"
            reply = {"ok": False, "error": error}
        log.info("monitor: %s from %s: %s", command["cmd"], pair.peer, _outcome(reply))
        return _signed(pair, signed.nonce, 200, reply)

    def _refuse(self, request: web.Request, status: int, error: str) -> web.Response:
        self.refused += 1
        log.warning("monitor: a peer request from %s refused: %s", request.remote, error)
        return web.json_response({"ok": False, "error": error}, status=status)


def _outcome(reply: dict[str, Any]) -> str:
    return "done" if reply.get("ok") else f"refused: {reply.get('error')}"


def _signed(pair: Pair, nonce: str, status: int, reply: dict[str, Any]) -> web.Response:
    body = json.dumps(reply, separators=(",", ":")).encode()
    signature = push.sign_reply(pair.key, nonce, status, body)
    return web.Response(
        status=status,
        body=body,
        content_type="application/json",
        headers={push.REPLY_HEADER: signature},
    )
