"""A pair file's change pushed to the peer: two directors' config commands
(configure.py, as the agent runs them) behind two real monitors on loopback, each with
its own copy of the pair file. A change lands on both or on neither; a push that is not
the peer's own (replayed, altered, unsigned, signed with another key, reflected) is
refused before it is read."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_config_store import SERVICE as WEB  # the service "web", one real server
from test_monitor_http import PASSWORDS, files

from hapair import answers, configure, control
from hapair.agent import Agent
from hapair.config import load, version_of
from hapair.core import push
from hapair.monitor.peer import PATH, Pair, PeerError, ask
from hapair.monitor.server import MonitorServer
from hapair.status import config_of
from hapair.systemd import Notifier

pytestmark = pytest.mark.unit
__all__ = ["files"]

PAIR = (
    """\
[[nodes]]
name = "lvs1"
priority = 150
state_dir = "state"
control_socket = "lvs1.sock"
monitor_listen = "127.0.0.1:{port1}"

[[nodes]]
name = "lvs2"
priority = 100
state_dir = "state"
control_socket = "lvs2.sock"
monitor_listen = "127.0.0.1:{port2}"

[cluster]
id = 52
auth_key_file = "authkey"

[[cluster.links]]
type = "udp"
interface = "lo"
peer = "127.0.0.2"

[monitor]
tls_cert = "monitor.crt"
tls_key = "monitor.key"
users_file = "users"
"""
    + WEB
)
SERVICE = """
[[services.real_servers]]
address = "10.0.0.12"
port = 80
"""  # appended: a second real server of the service "web"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeView:
    """The HA core's view of the peer's config, as its heartbeats tell it (HaNode)."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(whole_file=True)
        self.in_sync: bool | None = True
        self.peer_digest: bytes | None = None

    def hears(self, peer_text: str, own_text: str) -> None:
        self.peer_digest = bytes.fromhex(version_of(peer_text)[:16])
        self.in_sync = peer_text == own_text


class Director:
    """configure.py's view of an agent: its config file, a reload that reads it (or
    refuses, `reload_ok`), the lock and the monitor; requests go the agent's way."""

    def __init__(self, folder: Path, name: str, reload_ok: bool = True) -> None:
        self.config_path = folder / "hapair.toml"
        self.name = name
        self.cfg = load(self.config_path, name)
        self.key = (folder / "authkey").read_bytes()
        self.reload_ok = reload_ok
        self.reloads = 0
        self.last_reload: dict[str, Any] | None = None
        self.vips = self
        self.tasks: list[asyncio.Task[Any]] = []
        self.config_lock = asyncio.Lock()
        self.systemd = Notifier({})  # not under systemd
        self.peer_version: str | None = None
        self.monitor: MonitorServer | None = None
        self.node = NodeView()

    async def conflicts(self, vips: list[Any]) -> list[Any]:
        return []

    async def refusals(self, cfg: Any) -> list[Any]:
        return await Agent.refusals(self, cfg)  # type: ignore[arg-type]  # the agent's own

    async def _reload(self) -> None:
        self.reloads += 1
        if self.reload_ok:
            self.cfg = load(self.config_path, self.name)
        self.last_reload = {"time": 0.0, "ok": self.reload_ok, "error": "IPVS refused it"}

    async def ask(self, request: control.Request) -> dict[str, Any]:
        status = {"config": config_of(self.cfg.version, self.node, self.peer_version)}
        return await configure.handle(self, request, status)  # type: ignore[arg-type]

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """As the control socket and the monitor send a request to the agent."""
        handle = answers.handle
        return await control.checked(lambda r: handle(self, r))(message)  # type: ignore[arg-type]

    async def start_monitor(self) -> None:
        assert self.cfg.monitor is not None
        self.monitor = MonitorServer(
            self.cfg.monitor,
            lambda: {},  # type: ignore[arg-type,return-value]
            self.request,
            pair=lambda: configure.pair_of(self),  # type: ignore[arg-type]
        )
        await self.monitor.start()

    async def stop_monitor(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
            self.monitor = None

    def text(self) -> str:
        return self.config_path.read_text()

    def history(self) -> list[str]:
        index = self.config_path.parent / "state" / "config-history" / "index.json"
        return [e["version"] for e in json.loads(index.read_text())] if index.exists() else []


@pytest.fixture
def folders(tmp_path: Path, files: dict[str, Path]) -> tuple[Path, Path]:
    """Two directors' folders, each with its copy of the pair file, key and monitor files."""
    text = PAIR.format(port1=free_port(), port2=free_port())
    key = os.urandom(32)
    out = []
    for name in ("lvs1", "lvs2"):
        folder = tmp_path / name
        (folder / "state").mkdir(parents=True)
        (folder / "authkey").write_bytes(key)
        (folder / "authkey").chmod(0o600)
        shutil.copy(files["cert"], folder / "monitor.crt")
        shutil.copy(files["key"], folder / "monitor.key")
        shutil.copy(files["users"], folder / "users")
        (folder / "hapair.toml").write_text(text)
        out.append(folder)
    return out[0], out[1]


async def pair_of(folders: tuple[Path, Path], **reload_ok: bool) -> tuple[Director, Director]:
    one = Director(folders[0], "lvs1", reload_ok.get("lvs1", True))
    two = Director(folders[1], "lvs2", reload_ok.get("lvs2", True))
    await one.start_monitor()
    await two.start_monitor()
    return one, two


def apply(text: str, base: str) -> dict[str, Any]:
    return {"cmd": "config_apply", "toml": text, "version": base, "user": "alice"}


def test_a_change_lands_on_the_peer_then_here(folders: tuple[Path, Path]) -> None:
    async def main() -> None:
        one, two = await pair_of(folders)
        old = one.text()
        try:
            reply = await one.request(apply(old + SERVICE, version_of(old)))
            assert reply["ok"], reply
            assert reply["result"]["applied"] == ["lvs2", "lvs1"]
            assert reply["result"]["changes"] == ["service web: real server 10.0.0.12:80 added"]
            assert one.text() == two.text() == old + SERVICE
            assert (one.reloads, two.reloads) == (1, 1)
            new = version_of(old + SERVICE)
            assert one.cfg.version == two.cfg.version == new
            assert one.history() == two.history() == [new, version_of(old)]
            index = json.loads((folders[1] / "state/config-history/index.json").read_text())
            assert index[0]["user"] == "alice via lvs1"

            # A rollback from the other director, to a version both keep.
            back = {"cmd": "config_rollback", "version": version_of(old), "user": "bob"}
            reply = await two.request(back)
            assert reply["ok"], reply
            assert reply["result"]["applied"] == ["lvs1", "lvs2"]
            assert one.text() == two.text() == old
        finally:
            await one.stop_monitor()
            await two.stop_monitor()

    asyncio.run(main())


def test_a_config_of_many_chunks_is_pushed_and_shown_whole(folders: tuple[Path, Path]) -> None:
    """A body and a reply of hundreds of kilobytes arrive in many reads: each side reads
    them whole before it checks the signature."""

    async def main() -> None:
        one, two = await pair_of(folders)
        old = one.text()
        big = old + SERVICE + "".join(f"# note {i:06d} {'x' * 60}\n" for i in range(10_000))
        assert 600_000 < len(big) < 1_000_000
        try:
            reply = await one.request(apply(big, version_of(old)))
            assert reply["ok"], reply
            assert one.text() == two.text() == big
            good = configure.pair_of(one)  # type: ignore[arg-type]
            assert good is not None and two.monitor is not None
            where = f"127.0.0.1:{two.monitor.addresses[0][1]}"
            shown = await ask(where, good, {"cmd": "config_show_here"})
            assert shown["result"]["toml"] == big
        finally:
            await one.stop_monitor()
            await two.stop_monitor()

    asyncio.run(main())


def test_an_unreachable_peer_changes_nothing_anywhere(folders: tuple[Path, Path]) -> None:
    async def main() -> None:
        one, two = await pair_of(folders)
        old = one.text()
        await two.stop_monitor()  # down, as far as the push can tell
        try:
            reply = await one.request(apply(old + SERVICE, version_of(old)))
            assert not reply["ok"] and reply["reason"] == "peer", reply
            assert "lvs2 cannot be reached" in reply["error"]
            assert "nothing was changed on either director" in reply["error"]
            assert one.text() == two.text() == old
            assert (one.reloads, two.reloads) == (0, 0) and one.history() == []
        finally:
            await one.stop_monitor()

    asyncio.run(main())


def test_a_peer_that_refuses_changes_nothing_anywhere(folders: tuple[Path, Path]) -> None:
    async def main() -> None:
        one, two = await pair_of(folders, lvs2=False)
        old = one.text()
        try:
            reply = await one.request(apply(old + SERVICE, version_of(old)))
            assert not reply["ok"] and reply["reason"] == "peer", reply
            assert "lvs2 refused the change" in reply["error"]
            assert reply["errors"] == ["IPVS refused it"]
            assert one.text() == two.text() == old
            assert (one.reloads, two.reloads) == (0, 1)  # lvs2 tried, and put its file back
        finally:
            await one.stop_monitor()
            await two.stop_monitor()

    asyncio.run(main())


def test_the_peer_is_rolled_back_when_this_director_refuses(folders: tuple[Path, Path]) -> None:
    async def main() -> None:
        one, two = await pair_of(folders, lvs1=False)
        old = one.text()
        try:
            reply = await one.request(apply(old + SERVICE, version_of(old)))
            assert not reply["ok"] and reply["reason"] == "reload", reply
            assert f"lvs2 is back on {version_of(old)[:12]}" in reply["error"]
            assert one.text() == two.text() == old
            assert two.reloads == 2 and two.cfg.version == version_of(old)
        finally:
            await one.stop_monitor()
            await two.stop_monitor()

    asyncio.run(main())


def test_out_of_sync_the_page_shows_both_and_an_apply_here_wins(
    folders: tuple[Path, Path],
) -> None:
    """lvs2 was down while lvs1 changed: it came back with its old file. The show says
    which version each runs; an apply on lvs1 (its own text: one click) brings lvs2 in
    line."""

    async def main() -> None:
        one, two = await pair_of(folders)
        old = one.text()
        new = old + SERVICE
        one.config_path.write_text(new)  # as a change made while lvs2 was down
        await one._reload()
        one.node.hears(old, new)
        two.node.hears(new, old)
        try:
            shown = await one.request({"cmd": "config_show"})
            peer = shown["result"]["peer"]
            assert peer == {"node": "lvs2", "version": version_of(old), "in_sync": False}, shown
            reply = await one.request(apply(new, version_of(new)))
            assert reply["ok"], reply
            assert reply["result"]["applied"] == ["lvs2", "lvs1"]
            assert two.text() == new and two.cfg.version == version_of(new)
        finally:
            await one.stop_monitor()
            await two.stop_monitor()

    asyncio.run(main())


def test_stale_busy_and_invalid_are_refused_before_the_peer(folders: tuple[Path, Path]) -> None:
    async def main() -> None:
        one, two = await pair_of(folders)
        old = one.text()
        try:
            reply = await one.request(apply(old + SERVICE, "f" * 64))
            assert reply["reason"] == "stale", reply
            reply = await one.request(apply(old + "[x]\n", version_of(old)))
            assert reply["reason"] == "invalid" and reply["errors"] == ["x: unknown key (a typo?)"]
            async with two.config_lock:  # a change under way on lvs2
                reply = await two.request(apply(old + SERVICE, version_of(old)))
                assert reply["reason"] == "busy", reply
                reply = await one.request(apply(old + SERVICE, version_of(old)))
                assert reply["reason"] == "peer" and "being applied" in reply["error"], reply
            assert one.text() == two.text() == old and two.reloads == 0
        finally:
            await one.stop_monitor()
            await two.stop_monitor()

    asyncio.run(main())


def test_the_monitor_api_applies_to_both_or_answers_502(folders: tuple[Path, Path]) -> None:
    async def main() -> None:
        one, two = await pair_of(folders)
        old = one.text()
        assert one.monitor is not None
        port = one.monitor.addresses[0][1]
        token = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode()).decode()
        headers = {"Authorization": f"Basic {token}"}
        url = f"https://127.0.0.1:{port}/api/config"
        try:
            async with aiohttp.ClientSession(headers=headers) as session:
                body = {"toml": old + SERVICE, "version": version_of(old)}
                async with session.put(url, json=body, ssl=False) as response:
                    assert response.status == 200, await response.text()
                    answer = await response.json()
                assert answer["applied"] == ["lvs2", "lvs1"]
                assert one.text() == two.text() == old + SERVICE
                await two.stop_monitor()
                body = {"toml": old, "version": version_of(old + SERVICE)}
                async with session.put(url, json=body, ssl=False) as response:
                    assert response.status == 502, await response.text()
                    assert "lvs2 cannot be reached" in (await response.json())["error"]
                assert one.text() == two.text() == old + SERVICE
        finally:
            await one.stop_monitor()
            await two.stop_monitor()

    asyncio.run(main())


# The peer's door, knocked on as no peer would.


async def post(port: int, body: bytes, header: str | None) -> tuple[int, dict[str, Any], bool]:
    """(status, JSON, whether the reply was signed) of a raw request to the peer's PATH."""
    headers = {} if header is None else {push.HEADER: header}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"https://127.0.0.1:{port}{PATH}", data=body, headers=headers, ssl=False) as r,
    ):
        return r.status, await r.json(), push.REPLY_HEADER in r.headers


def test_a_push_not_the_peers_own_is_refused(folders: tuple[Path, Path]) -> None:
    async def main() -> None:
        one, two = await pair_of(folders)
        old = one.text()
        assert two.monitor is not None
        port = two.monitor.addresses[0][1]
        message = {"cmd": "config_apply_here", "toml": old + SERVICE, "version": version_of(old)}
        body = json.dumps(message).encode()

        def signed(
            key: bytes = one.key, sender: str = "lvs1", to: str = "lvs2", data: bytes = body
        ) -> str:
            return push.sign(key, sender, to, PATH, data, time.time(), secrets.token_hex(16))

        try:
            header = signed()
            status, answer, was_signed = await post(port, body, header)
            assert status == 200 and answer["ok"] and was_signed, answer
            assert two.text() == old + SERVICE
            for what, data, head, why in [
                ("replayed", body, header, "a replay"),
                ("altered", body.replace(b"10.0.0.12", b"10.0.0.66"), signed(), "wrong signature"),
                ("another key", body, signed(key=os.urandom(32)), "wrong signature"),
                ("reflected", body, signed(sender="lvs2", to="lvs2"), "signed from lvs2 to lvs2"),
                ("unsigned", body, None, "not a hapair v1 signature"),
                ("garbage", body, "v1 " + "x" * 300, "too long"),
                (
                    "old",
                    body,
                    push.sign(one.key, "lvs1", "lvs2", PATH, body, time.time() - 300, "0" * 32),
                    "more than 30s",
                ),
            ]:
                status, answer, was_signed = await post(port, data, head)
                assert status == 403 and why in answer["error"] and not was_signed, (what, answer)
            assert two.monitor.peer.refused == 7
            assert two.text() == old + SERVICE and two.reloads == 1
            # Signed, but not a command a peer may send.
            odd = json.dumps({"cmd": "release"}).encode()
            status, answer, was_signed = await post(port, odd, signed(data=odd))
            assert status == 400 and "may send only" in answer["error"] and was_signed
        finally:
            await one.stop_monitor()
            await two.stop_monitor()

    asyncio.run(main())


def test_a_reply_not_signed_by_the_peer_is_not_believed(folders: tuple[Path, Path]) -> None:
    """Something else listening where the peer's monitor should be (a plain HTTPS server
    answering 200 ok) is not taken for the peer."""

    async def main() -> None:
        one, two = await pair_of(folders)
        assert two.monitor is not None
        where = f"127.0.0.1:{two.monitor.addresses[0][1]}"
        wrong = Pair(os.urandom(32), "lvs1", "lvs2")
        try:
            with pytest.raises(PeerError, match="without lvs2's signature"):
                await ask(where, wrong, {"cmd": "config_show_here"})
            good = configure.pair_of(one)  # type: ignore[arg-type]
            assert good is not None
            reply = await ask(where, good, {"cmd": "config_show_here"})
            assert reply["ok"] and reply["result"]["version"] == version_of(two.text())
        finally:
            await one.stop_monitor()
            await two.stop_monitor()

    asyncio.run(main())


def test_the_replay_guard_is_bounded() -> None:
    guard = push.ReplayGuard(window=30.0, most=3)
    key, body, now = b"k" * 32, b"{}", 1000.0
    for i in range(3):
        header = push.sign(key, "a", "b", PATH, body, now, f"{i:032x}")
        guard.check(key, header, "b", "a", PATH, body, now)
    fourth = push.sign(key, "a", "b", PATH, body, now, f"{9:032x}")
    with pytest.raises(push.PushRefused, match="too many"):
        guard.check(key, fourth, "b", "a", PATH, body, now)
    # Once the first ones are out of the window, there is room again; a replay of theirs
    # is refused by its time.
    later = now + 61
    header = push.sign(key, "a", "b", PATH, body, later, f"{9:032x}")
    guard.check(key, header, "b", "a", PATH, body, later)
    old = push.sign(key, "a", "b", PATH, body, now, f"{0:032x}")
    with pytest.raises(push.PushRefused, match="more than 30s"):
        guard.check(key, old, "b", "a", PATH, body, later)


@given(st.text(max_size=400))
@settings(max_examples=500, deadline=None)
def test_any_header_is_refused_or_read(header: str) -> None:
    try:
        signed = push.parse(header)
    except push.PushRefused:
        return
    assert push.sign(b"k", signed.sender, signed.receiver, PATH, b"", signed.time, signed.nonce)
