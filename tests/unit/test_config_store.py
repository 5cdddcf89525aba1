"""The running config's versions (config/store.py) and the agent's side of the config
commands (configure.py), on files in a temporary folder."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hapair import configure, control, control_client
from hapair.agent import Agent
from hapair.config import load, version_of
from hapair.config.store import KEEP, Store, StoreError, changes_between
from hapair.systemd import Notifier

pytestmark = pytest.mark.unit

BASE = """\
[node]
name = "lvs1"
priority = 150
state_dir = "state"
control_socket = "lvs1.sock"

[cluster]
id = 51
auth_key_file = "authkey"

[[cluster.links]]
type = "udp"
interface = "lo"
peer = "127.0.0.2"
"""
SERVICE = """
[[services]]
name = "web"
protocol = "tcp"
address = "10.0.0.100"
port = 80

[[services.real_servers]]
address = "10.0.0.11"
port = 80
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    key = tmp_path / "authkey"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    config = tmp_path / "hapair.toml"
    config.write_text(BASE)
    config.chmod(0o640)
    return tmp_path


def store_of(folder: Path, keep: int = KEEP) -> Store:
    return Store(folder / "hapair.toml", folder / "state", keep)


def with_priority(n: int) -> str:
    return BASE.replace("priority = 150", f"priority = {n}")


def test_an_invalid_text_leaves_the_file_byte_identical(folder: Path) -> None:
    store = store_of(folder)
    before = (folder / "hapair.toml").read_bytes()
    bad = BASE.replace("priority = 150", "priority = 999") + "\n[bogus]\n"
    with pytest.raises(StoreError) as caught:
        store.apply(bad, "alice", version_of(before))
    assert caught.value.reason == "invalid"
    assert any(p.startswith("node.priority: ") for p in caught.value.problems)
    assert any(p.startswith("bogus: ") for p in caught.value.problems)
    assert (folder / "hapair.toml").read_bytes() == before
    assert store.history() == []


def test_validation_uses_the_file_s_folder(folder: Path) -> None:
    """A relative key file is looked for beside the running file, as `hapair check` does."""
    (folder / "authkey").chmod(0o644)  # world-readable: refused
    with pytest.raises(StoreError) as caught:
        store_of(folder).check(BASE)
    assert any(p.startswith("cluster.auth_key_file: ") for p in caught.value.problems)


def test_a_stale_base_version_is_refused(folder: Path) -> None:
    store = store_of(folder)
    with pytest.raises(StoreError) as caught:
        store.apply(with_priority(140), "alice", version_of(with_priority(1)))
    assert caught.value.reason == "stale"
    assert (folder / "hapair.toml").read_text() == BASE


def test_apply_writes_keeps_mode_and_history(folder: Path) -> None:
    store = store_of(folder)
    new = BASE + SERVICE
    applied = store.apply(new, "alice", version_of(BASE))
    path = folder / "hapair.toml"
    assert path.read_text() == new
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not path.with_suffix(".toml.tmp").exists()
    assert applied.version == version_of(new) == load(path).version
    assert "service web added" in applied.changes
    versions = store.history()
    assert [v["version"] for v in versions] == [version_of(new), version_of(BASE)]
    assert versions[0]["user"] == "alice" and "service web added" in versions[0]["summary"]
    assert store.text_of(version_of(BASE)) == BASE


def test_history_is_newest_first_and_pruned(folder: Path) -> None:
    store = store_of(folder)
    base = version_of(BASE)
    for n in range(1, KEEP + 6):
        base = store.apply(with_priority(n), f"u{n}", base).version
    versions = store.history()
    assert len(versions) == KEEP
    assert [v["user"] for v in versions] == [f"u{n}" for n in range(KEEP + 5, 5, -1)]
    kept = {p.stem for p in (folder / "state" / "config-history").glob("*.toml")}
    assert kept == {v["version"] for v in versions}


def test_rollback_makes_an_old_text_the_new_version(folder: Path) -> None:
    store = store_of(folder)
    first = store.apply(BASE + SERVICE, "alice", version_of(BASE))
    store.rollback(version_of(BASE), "bob", first.version)
    assert (folder / "hapair.toml").read_text() == BASE
    top = store.history()[0]
    assert top["version"] == version_of(BASE) and top["user"] == "bob"
    assert "rollback" in top["summary"]
    with pytest.raises(StoreError) as caught:
        store.rollback("0" * 64, "bob", version_of(BASE))
    assert caught.value.reason == "unknown"


def test_undo_puts_file_and_history_back(folder: Path) -> None:
    store = store_of(folder)
    applied = store.apply(BASE + SERVICE, "alice", version_of(BASE))
    store.undo(applied)
    assert (folder / "hapair.toml").read_text() == BASE
    assert store.history() == []


def test_changes_are_readable_lines() -> None:
    old = BASE + SERVICE
    new = (
        BASE.replace('interface = "lo"', 'interface = "eth1"')
        + SERVICE.replace("10.0.0.11", "10.0.0.12").replace("port = 80\n\n", "port = 8080\n\n")
        + '\n[[vips]]\naddress = "10.0.0.100/24"\ninterface = "eth0"\n'
    )
    lines = changes_between(old, new)
    assert "service web: real server 10.0.0.12:80 added" in lines
    assert "service web: real server 10.0.0.11:80 removed" in lines
    assert "service web.port: 80 -> 8080" in lines
    assert "VIP 10.0.0.100/24 added" in lines
    assert "link udp eth1 added" in lines and "link udp lo removed" in lines
    assert changes_between(BASE, BASE + "# a comment\n")[0] == "only comments or layout changed:"
    assert changes_between(BASE, BASE) == []
    assert changes_between(BASE, "not toml [") != []
    added = '\n[[services.real_servers]]\naddress = "10.0.0.13"\nport = 80\nweight = 2\n'
    assert changes_between(old, old + added) == [
        "service web: real server 10.0.0.13:80 added (weight 2)"
    ]
    weighted = SERVICE + "weight = 4\n"  # in the last table: the real server
    assert changes_between(old, BASE + weighted) == [
        "service web: real server 10.0.0.11:80 weight: added 4"
    ]


# The agent's side: configure.handle with an agent that reloads from its file.


class FakeAgent:
    def __init__(self, path: Path, reload_ok: bool = True, node: str | None = None) -> None:
        self.config_path = path
        self.node = node
        self.cfg = load(path, node)
        self.reload_ok = reload_ok
        self.reloads = 0
        self.last_reload: dict[str, Any] | None = None
        self.vips = self
        self.key = b""
        self.tasks: list[asyncio.Task[Any]] = []
        self.config_lock = asyncio.Lock()
        self.systemd = Notifier({})  # not under systemd
        self.peer_version: str | None = None

    async def conflicts(self, vips: list[Any]) -> list[Any]:
        return []

    async def refusals(self, cfg: Any) -> list[Any]:
        return await Agent.refusals(self, cfg)  # type: ignore[arg-type]  # the agent's own

    async def ask(self, request: control.Request) -> dict[str, Any]:
        return await configure.handle(self, request, {})  # type: ignore[arg-type]

    async def _reload(self) -> None:
        self.reloads += 1
        if self.reload_ok:
            self.cfg = load(self.config_path, self.node)
        self.last_reload = {"time": 0.0, "ok": self.reload_ok, "error": "IPVS refused it"}


def ask(agent: FakeAgent, message: dict[str, Any], status: Any = None) -> dict[str, Any]:
    request = control.check_request(message)
    return asyncio.run(configure.handle(agent, request, status or {}))  # type: ignore[arg-type]


def test_apply_reloads_and_answers_the_new_version(folder: Path) -> None:
    agent = FakeAgent(folder / "hapair.toml")
    shown = ask(agent, {"cmd": "config_show"})["result"]
    assert shown == {
        "toml": BASE,
        "version": version_of(BASE),
        "pair": False,
        "peer": {"node": None, "version": None, "in_sync": None},
    }
    reply = ask(
        agent, {"cmd": "config_apply", "toml": with_priority(140), "version": shown["version"]}
    )
    assert reply["ok"], reply
    assert reply["result"]["version"] == version_of(with_priority(140))
    assert reply["result"]["applied"] == ["lvs1"]
    assert agent.reloads == 1 and agent.cfg.version == version_of(with_priority(140))


def test_a_refused_reload_puts_the_file_back(folder: Path) -> None:
    agent = FakeAgent(folder / "hapair.toml", reload_ok=False)
    reply = ask(
        agent, {"cmd": "config_apply", "toml": with_priority(140), "version": version_of(BASE)}
    )
    assert not reply["ok"] and reply["reason"] == "reload"
    assert reply["errors"] == ["IPVS refused it"]
    assert (folder / "hapair.toml").read_text() == BASE
    assert store_of(folder).history() == []


def test_a_change_that_needs_a_restart_is_refused_before_writing(folder: Path) -> None:
    agent = FakeAgent(folder / "hapair.toml")
    moved = BASE.replace('"lvs1.sock"', '"other.sock"')
    reply = ask(agent, {"cmd": "config_apply", "toml": moved, "version": version_of(BASE)})
    assert reply["reason"] == "reload"
    assert any(e.startswith("node.control_socket: ") for e in reply["errors"])
    assert agent.reloads == 0 and (folder / "hapair.toml").read_text() == BASE


def test_check_invalid_and_stale_answers(folder: Path) -> None:
    agent = FakeAgent(folder / "hapair.toml")
    reply = ask(agent, {"cmd": "config_check", "toml": with_priority(140)})
    assert reply == {"ok": True, "result": {"changes": ["node.priority: 150 -> 140"]}}
    # Valid, but not what this running agent can take by a reload: told by the check.
    reply = ask(agent, {"cmd": "config_check", "toml": BASE + SERVICE})
    assert reply["reason"] == "reload" and "added with a restart" in reply["errors"][0]
    reply = ask(agent, {"cmd": "config_check", "toml": BASE + "[x]\n"})
    assert reply["reason"] == "invalid" and reply["errors"] == ["x: unknown key (a typo?)"]
    assert reply["lines"] == [len(BASE.splitlines()) + 1]  # where [x] is, for the editor
    reply = ask(agent, {"cmd": "config_apply", "toml": with_priority(140), "version": "f" * 64})
    assert reply["reason"] == "stale" and agent.reloads == 0


def test_a_pair_file_without_the_peers_monitor_is_refused(folder: Path) -> None:
    pair = BASE.replace(
        '[node]\nname = "lvs1"\npriority = 150\n',
        '[[nodes]]\nname = "lvs1"\npriority = 150\n',
    ).replace("[cluster]", '[[nodes]]\nname = "lvs2"\npriority = 100\n\n[cluster]')
    path = folder / "hapair.toml"
    path.write_text(pair)
    agent = FakeAgent(path, node="lvs1")
    status = {"config": {"peer_version": "a" * 64, "in_sync": False}}
    shown = ask(agent, {"cmd": "config_show"}, status)["result"]
    assert shown["pair"] is True
    assert shown["peer"] == {"node": "lvs2", "version": "a" * 64, "in_sync": False}
    new = pair.replace("priority = 150", "priority = 140")
    message = {"cmd": "config_apply", "toml": new, "version": version_of(pair)}

    async def change() -> dict[str, Any]:
        agent.config_lock = asyncio.Lock()  # of this event loop
        return await configure.change(agent, control.check_request(message))  # type: ignore[arg-type]

    reply = asyncio.run(change())
    assert reply["reason"] == "peer" and "lvs2's monitor cannot be reached" in reply["error"]
    assert path.read_text() == pair and agent.reloads == 0


def test_history_answer(folder: Path) -> None:
    agent = FakeAgent(folder / "hapair.toml")
    ask(
        agent,
        {
            "cmd": "config_apply",
            "toml": with_priority(1),
            "version": version_of(BASE),
            "user": "cli",
        },
    )
    versions = ask(agent, {"cmd": "config_history"})["result"]["versions"]
    assert [v["user"] for v in versions] == ["cli", "-"]
    assert json.dumps(versions)


def test_control_requests_are_checked() -> None:
    with pytest.raises(ValueError, match="needs 'toml'"):
        control.check_request({"cmd": "config_check"})
    with pytest.raises(ValueError, match="takes no"):
        control.check_request({"cmd": "config_show", "toml": ""})
    line = control.encode({"cmd": "config_check", "toml": "x" * (control.MAX_MESSAGE * 2)})
    assert isinstance(control.decode_request(line), control.Request)
    big = control.encode({"cmd": "status", "pad": "x" * control.MAX_MESSAGE})
    assert control.decode_request(big) == f"request larger than {control.MAX_MESSAGE} bytes"


def test_the_socket_takes_a_config_line_larger_than_other_requests(tmp_path: Path) -> None:
    seen: list[control.Request] = []

    async def handle(request: control.Request) -> dict[str, Any]:
        seen.append(request)
        return {"ok": True, "result": len(request.toml)}

    async def main() -> list[dict[str, Any]]:
        server = control.ControlServer(tmp_path / "c.sock", handle)
        await server.start()
        try:
            big = {"cmd": "config_check", "toml": "x" * (1 << 20)}
            other = {"cmd": "status", "pad": "x" * control.MAX_MESSAGE}
            return [
                await asyncio.to_thread(control_client.request, tmp_path / "c.sock", message)
                for message in (big, other)
            ]
        finally:
            await server.close()

    taken, refused = asyncio.run(main())
    assert taken == {"ok": True, "result": 1 << 20}
    assert refused == control.refusal(f"request larger than {control.MAX_MESSAGE} bytes")
    assert [r.cmd for r in seen] == ["config_check"]
