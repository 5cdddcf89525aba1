"""The monitor's config API (/api/config...) over real HTTPS, in front of a fake agent
that answers the config commands as configure.py does: status codes, roles, CSRF."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_monitor_http import PASSWORDS, Browser, FakeAgent, Running, basic, files, settings

pytestmark = pytest.mark.unit
__all__ = ["files"]  # the fixture, shared with the monitor's tests

V1, V2 = "1" * 64, "2" * 64


class ConfigAgent(FakeAgent):
    """Answers config_*: version V1 runs; a toml with "bad" is invalid; "far" needs the
    peer; a stale version is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.version = V1

    async def act(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        cmd = request["cmd"]
        if cmd == "config_show":
            peer = {"node": None, "version": None, "in_sync": None}
            return {
                "ok": True,
                "result": {"toml": "x", "version": self.version, "pair": False, "peer": peer},
            }
        if cmd == "config_history":
            return {
                "ok": True,
                "result": {
                    "versions": [
                        {"version": self.version, "time": 1.0, "user": "a", "summary": "s"}
                    ]
                },
            }
        toml = request.get("toml", "")
        if "bad" in toml:
            return {
                "ok": False,
                "error": "invalid",
                "reason": "invalid",
                "errors": ["node.priority: bad"],
                "lines": [3],
            }
        if cmd == "config_check":
            return {"ok": True, "result": {"changes": ["service web added"]}}
        if "far" in toml:
            return {
                "ok": False,
                "error": "the peer cannot be reached",
                "reason": "peer",
                "errors": [],
            }
        if cmd == "config_apply" and request["version"] != self.version:
            return {"ok": False, "error": "changed meanwhile", "reason": "stale", "errors": []}
        self.version = V2
        return {"ok": True, "result": {"version": V2, "applied": ["lvs1"], "changes": []}}


@pytest.fixture
def agent() -> ConfigAgent:
    return ConfigAgent()


@pytest.fixture
def browser(files: dict[str, Path], agent: ConfigAgent) -> Iterator[Browser]:
    running = Running(settings(files), agent)
    try:
        yield Browser(running.port, files["cert"])
    finally:
        running.close()


def logged_in(browser: Browser, user: str) -> str:
    assert browser.login(user, PASSWORDS[user]).status == 303
    return browser.csrf()


def test_a_viewer_reads_and_checks_but_cannot_change(browser: Browser, agent: ConfigAgent) -> None:
    csrf = logged_in(browser, "victor")
    reply = browser.api("GET", "/api/config")
    assert reply.status == 200
    assert reply.json() == {
        "toml": "x",
        "version": V1,
        "pair": False,
        "peer": {"node": None, "version": None, "in_sync": None},
    }
    assert browser.api("GET", "/api/config/history").json()["versions"][0]["version"] == V1
    reply = browser.api("POST", "/api/config/check", {"toml": "y"}, csrf=csrf)
    assert (reply.status, reply.json()) == (200, {"ok": True, "changes": ["service web added"]})
    reply = browser.api("POST", "/api/config/check", {"toml": "bad"}, csrf=csrf)
    assert reply.status == 422
    assert reply.json()["ok"] is False and reply.json()["errors"] == ["node.priority: bad"]
    assert reply.json()["lines"] == [3]  # passed on for the editor
    assert browser.api("PUT", "/api/config", {"toml": "y", "version": V1}, csrf=csrf).status == 403
    assert browser.api("POST", "/api/config/rollback", {"version": V1}, csrf=csrf).status == 403
    assert not any(r["cmd"] in ("config_apply", "config_rollback") for r in agent.requests)


def test_an_admin_applies_with_every_status(browser: Browser, agent: ConfigAgent) -> None:
    csrf = logged_in(browser, "alice")
    reply = browser.api("PUT", "/api/config", {"toml": "y", "version": V1}, csrf=csrf)
    assert (reply.status, reply.json()) == (
        200,
        {"ok": True, "version": V2, "applied": ["lvs1"], "changes": []},
    )
    assert agent.requests[-1] == {
        "cmd": "config_apply",
        "toml": "y",
        "version": V1,
        "user": "alice",
    }
    assert browser.api("PUT", "/api/config", {"toml": "y", "version": V1}, csrf=csrf).status == 409
    reply = browser.api("PUT", "/api/config", {"toml": "bad", "version": V2}, csrf=csrf)
    assert reply.status == 422 and reply.json()["errors"] == ["node.priority: bad"]
    reply = browser.api("PUT", "/api/config", {"toml": "far", "version": V2}, csrf=csrf)
    assert reply.status == 502 and "peer" in reply.json()["error"]
    reply = browser.api("POST", "/api/config/rollback", {"version": V1}, csrf=csrf)
    assert reply.status == 200 and reply.json()["version"] == V2
    assert browser.api("PUT", "/api/config", {"toml": 1}, csrf=csrf).status == 400


def test_changes_need_the_csrf_token(browser: Browser, agent: ConfigAgent) -> None:
    logged_in(browser, "alice")
    assert browser.api("PUT", "/api/config", {"toml": "y", "version": V1}).status == 403
    assert browser.api("POST", "/api/config/rollback", {"version": V1}).status == 403
    assert agent.requests == []


def test_basic_credentials_and_a_bounded_body(browser: Browser, agent: ConfigAgent) -> None:
    reply = browser.request("GET", "/api/config", headers=basic("victor", PASSWORDS["victor"]))
    assert reply.status == 200
    big = '{"toml": "' + "x" * (4 * 1024 * 1024) + '", "version": "' + V1 + '"}'
    headers = {**basic("alice", PASSWORDS["alice"]), "Content-Type": "application/json"}
    assert browser.request("PUT", "/api/config", big, headers).status == 413
    # a config larger than the other API bodies (64 KiB) is taken
    body = '{"toml": "' + "y" * (200 * 1024) + '", "version": "' + V1 + '"}'
    assert browser.request("PUT", "/api/config", body, headers).status == 200
