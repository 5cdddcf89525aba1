"""The monitor's front door (hapair/monitor/listener.py) on a real socket: however a
connection ends (refused at accept, cut or stalled in the TLS handshake, slow in its
head, answered, kept alive), it is counted in and out once; the caps hold at every
moment; and when the clients are gone, nothing of them is left. (A connection whose
handshake failed was once counted out twice: the caps stopped holding, and a flood grew
the agent by 450 MB.)"""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hapair.config.model import Monitor as MonitorConfig
from hapair.config.types import HostPort
from hapair.monitor.server import MonitorServer

pytestmark = pytest.mark.unit

TOTAL, PER_CLIENT = 12, 4


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("listener")
    cert, key, users = tmp / "m.crt", tmp / "m.key", tmp / "users"
    run = [sys.executable, "-m", "hapair"]
    subprocess.run([*run, "gen-cert", str(cert), str(key), "--cn", "127.0.0.1"], check=True)
    subprocess.run(
        [*run, "passwd", "-f", str(users), "alice"], input="correct horse\n", text=True, check=True
    )
    return {"cert": cert, "key": key, "users": users}


async def _client(way: str, port: int, source: str, context: ssl.SSLContext) -> str:
    """One client of one way; what it saw."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        return "refused"
    try:
        if way == "cut":  # gone before any TLS
            return "cut"
        if way == "junk":
            writer.write(b"\x16\x03\x01" + b"\xff" * 200)
            return "closed" if await reader.read() == b"" else "answered?"
        if way == "silent":  # never a hello: the handshake times out
            return "closed" if await reader.read() == b"" else "answered?"
        await writer.start_tls(context)
        if way == "tls-cut":
            return "tls-cut"
        if way == "slow-head":
            writer.write(b"GET /api/status HTTP/1.1\r\n")
            return "closed" if await reader.read() == b"" else "answered?"
        token = base64.b64encode(b"alice:correct horse").decode()
        writer.write(
            f"GET /api/status HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        return "answered" if head.startswith(b"HTTP/1.1 200") else head[:20].decode()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        return type(exc).__name__
    finally:
        writer.transport.abort()


def test_every_connection_is_counted_in_and_out_once(files: dict[str, Path]) -> None:
    async def scenario() -> dict[str, Any]:
        settings = MonitorConfig.model_construct(
            listen=HostPort("127.0.0.1", 0),
            tls_cert=files["cert"],
            tls_key=files["key"],
            users_file=files["users"],
            metrics_listen=None,
            max_connections=TOTAL,
            max_connections_per_client=PER_CLIENT,
        )

        async def act(request: dict[str, Any]) -> dict[str, Any]:
            return {"ok": True}

        monitor = MonitorServer(settings, lambda: {"node": "lvs1"}, act)  # type: ignore[arg-type,return-value]
        await monitor.start()
        listener = monitor.listeners[0]
        listener.handshake_timeout = listener.head_timeout = 0.5
        port = monitor.addresses[0][1]
        context = ssl.create_default_context(cafile=str(files["cert"]))
        context.check_hostname = False

        async def watch() -> None:
            while True:
                assert 0 <= listener.open <= TOTAL, listener.open
                assert max(listener.per_client.values(), default=0) <= PER_CLIENT
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        failed: list[BaseException] = []
        watcher.add_done_callback(
            lambda t: failed.append(t.exception()) if not t.cancelled() and t.exception() else None
        )
        ways = ["cut", "junk", "silent", "tls-cut", "slow-head", "answered"]
        seen: dict[str, list[str]] = {way: [] for way in ways}
        for _ in range(3):  # rounds of every way at once, from four addresses
            clients = [
                (way, _client(way, port, f"127.0.0.{2 + i % 4}", context))
                for i, way in enumerate(ways * 6)
            ]
            results = await asyncio.gather(*(c for _, c in clients))
            for (way, _), result in zip(clients, results, strict=True):
                seen[way].append(result)
        await asyncio.sleep(0.2)  # the last connection_lost callbacks
        watcher.cancel()
        left = {
            "open": listener.open,
            "per_client": dict(listener.per_client),
            "guards": len(listener._guards),
            "handshakes": len(listener._handshakes),
            "handlers": len(monitor.runners[0].server.connections),  # type: ignore[union-attr]
        }
        after = await _client("answered", port, "127.0.0.9", context)
        await monitor.stop()
        out = {"seen": seen, "left": left, "most": listener.most, "after": after}
        out["counts"] = listener.counts
        return out | ({"error": repr(failed[0])} if failed else {})

    out = asyncio.run(scenario())
    print(out)
    assert "error" not in out, out["error"]
    assert out["left"] == {"open": 0, "per_client": {}, "guards": 0, "handshakes": 0, "handlers": 0}
    assert out["most"] == TOTAL  # the flood did reach the cap
    assert out["counts"]["refused"] > 0 and out["counts"]["handshake_failed"] > 0
    assert out["counts"]["timed_out"] > 0  # the slow heads
    assert "answered" in out["seen"]["answered"] and out["after"] == "answered"
    for way in ("junk", "silent", "slow-head"):
        assert set(out["seen"][way]) <= {"closed", "refused", "ConnectionResetError"}, out["seen"]
