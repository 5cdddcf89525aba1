"""The monitor's JSON API: /api/status and the operator's actions (drain, enable,
disable, add, remove, release), each sent as a control request through the agent's one
queue of inputs (`act`), as the control socket sends them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hapair.control import parse_json
from hapair.monitor.gate import IDENTITY, json_error
from hapair.monitor.peer import read_limited
from hapair.status import Status

log = logging.getLogger("hapair.monitor")

StatusOf = Callable[[], Status]
Act = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ACT_TIMEOUT = 10.0
SERVER_ACTIONS = ("drain", "enable", "disable")
CONFIG_TIMEOUT = 30.0  # an apply reloads the agent (REQUEST_TIMEOUT bounds it too)
MAX_CONFIG_BODY = 4 * 1024 * 1024  # a JSON body holding a config of at most 1 MiB


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


async def _config_body(
    request: web.Request, keys: tuple[str, ...]
) -> dict[str, str] | web.Response:
    """The JSON body of a config request with `keys`, all strings, read up to
    MAX_CONFIG_BODY bytes; or the 400/413 that says what is wrong."""
    wanted = "{" + ", ".join(f'"{k}": ...' for k in keys) + "}"
    data = await read_limited(request.content, MAX_CONFIG_BODY)
    if data is None:
        return json_error(413, f"the body is larger than {MAX_CONFIG_BODY} bytes")
    try:
        body = parse_json(data)
    except ValueError as exc:
        return json_error(400, f"expected a JSON body {wanted} ({exc})")
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in keys):
        return json_error(400, f"expected a JSON body {wanted}, each a string")
    return {k: body[k] for k in keys}


class Api:
    def __init__(self, status: StatusOf, act: Act) -> None:
        self.status = status
        self.act = act

    def route(self, app: web.Application) -> None:
        app.router.add_get("/api/status", self.api_status)
        app.router.add_post("/api/release", self.api_release)
        app.router.add_post("/api/servers/{service}", self.api_add)
        app.router.add_post("/api/servers/{service}/{server}/{action}", self.api_server_action)
        app.router.add_delete("/api/servers/{service}/{server}", self.api_remove)
        app.router.add_get("/api/config", self.api_config)
        app.router.add_put("/api/config", self.api_config_put)
        app.router.add_post("/api/config/check", self.api_config_check)
        app.router.add_get("/api/config/history", self.api_config_history)
        app.router.add_post("/api/config/rollback", self.api_config_rollback)

    # The running config (configure.py does the work, in the agent).

    async def api_config(self, request: web.Request) -> web.Response:
        return await self._config(request, {"cmd": "config_show"})

    async def api_config_history(self, request: web.Request) -> web.Response:
        return await self._config(request, {"cmd": "config_history"})

    async def api_config_check(self, request: web.Request) -> web.Response:
        body = await _config_body(request, ("toml",))
        if isinstance(body, web.Response):
            return body
        return await self._config(request, {"cmd": "config_check", **body})

    async def api_config_put(self, request: web.Request) -> web.Response:
        body = await _config_body(request, ("toml", "version"))
        if isinstance(body, web.Response):
            return body
        user = request[IDENTITY].user
        return await self._config(request, {"cmd": "config_apply", **body, "user": user})

    async def api_config_rollback(self, request: web.Request) -> web.Response:
        body = await _config_body(request, ("version",))
        if isinstance(body, web.Response):
            return body
        user = request[IDENTITY].user
        return await self._config(request, {"cmd": "config_rollback", **body, "user": user})

    async def _config(self, request: web.Request, command: dict[str, Any]) -> web.Response:
        try:
            async with asyncio.timeout(CONFIG_TIMEOUT):
                reply = await self.act(command)
        except TimeoutError:
            return json_error(503, f"the agent did not answer within {CONFIG_TIMEOUT:g}s")
        user = request[IDENTITY].user
        if reply.get("ok"):
            result = reply.get("result")
            if command["cmd"] in ("config_apply", "config_rollback"):
                log.info("monitor: %s: %s done", user, command["cmd"])
                return web.json_response({"ok": True} | _dict(result))
            if command["cmd"] == "config_check":
                return web.json_response({"ok": True} | _dict(result))
            return web.json_response(result)
        error = str(reply.get("error", "refused"))
        reason = reply.get("reason")
        if command["cmd"] in ("config_apply", "config_rollback"):
            log.info("monitor: %s: %s refused: %s", user, command["cmd"], error)
        if reason in ("invalid", "reload"):
            errors = reply.get("errors") or [error]
            answer = {"ok": False, "error": error, "errors": errors}
            if isinstance(reply.get("lines"), list):  # where each error is, for the editor
                answer["lines"] = reply["lines"]
            return web.json_response(answer, status=422)
        status = {"stale": 409, "busy": 409, "peer": 502, "unknown": 404}.get(str(reason), 409)
        return json_error(status, error)

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
