"""Real traffic for the kernel tests: real servers, a client that counts which server
answered, and a client that keeps long-lived connections talking across a failover.

Run in a namespace (`ip netns exec NS python -m lab.traffic ...`):

  serve NAME             HTTP on port 80 (aiohttp; the body is NAME) and a line echo on
                         port 7 that answers "NAME <line>", on every address (under DR
                         the packets are for the VIP); prints "ready" when listening.
  spread URL N           N requests, each on a new connection; prints {"NAME": count}.
  hold ADDR PORT N [P]   N connections that each send a line every P s (PERIOD) and wait for the
                         answer (one in flight, so TCP retransmits across an outage); on
                         "report" (stdin) prints one JSON line with every connection's
                         state; "quit" ends it.

The test side (`Servers`, `Holder`) starts these and reads their output.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

PERIOD = 0.5  # seconds between a connection's lines


# --- in the namespaces ---------------------------------------------------------------------


async def serve(name: str) -> None:
    servers = await listen(name)
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        del servers  # referenced while serving


async def listen(name: str) -> list[Any]:
    """Start real server NAME's HTTP (80) and echo (7) servers on every address of this
    network namespace; return them (an aiohttp runner, an asyncio server)."""
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(f"{name} ".encode() + line)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", 80).start()
    server = await asyncio.start_server(echo, "0.0.0.0", 7, backlog=1024)
    return [runner, server]


def spread(url: str, n: int) -> None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    counts: dict[str, int] = {}
    for _ in range(n):
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=30)
        conn.request("GET", parts.path or "/", headers={"Connection": "close"})
        body = conn.getresponse().read().decode()
        conn.close()
        counts[body] = counts.get(body, 0) + 1
    print(json.dumps(counts), flush=True)


@dataclass
class Conn:
    server: str = ""
    answered: int = 0
    last_ok: float = 0.0  # wall clock, to compare with the test's
    error: str = ""
    moved: bool = False  # a different server answered: the connection was not the same


async def hold(addr: str, port: int, n: int, period: float = PERIOD) -> None:
    conns = [Conn() for _ in range(n)]
    ready = asyncio.Event()

    async def talk(i: int, c: Conn) -> None:
        try:
            reader, writer = await asyncio.open_connection(addr, port)
            seq = 0
            while True:
                writer.write(f"{i} {seq}\n".encode())
                await writer.drain()
                line = await reader.readline()
                if not line:
                    raise ConnectionError("closed by the other end")
                server = line.split()[0].decode()
                if c.server and server != c.server:
                    c.moved = True
                c.server, c.answered, c.last_ok = server, c.answered + 1, time.time()
                seq += 1
                if all(x.answered >= 5 for x in conns):
                    ready.set()
                await asyncio.sleep(period)
        except (OSError, ConnectionError) as exc:
            c.error = str(exc) or type(exc).__name__

    tasks = []
    for i, c in enumerate(conns):
        tasks.append(asyncio.create_task(talk(i, c)))
        await asyncio.sleep(0.005)  # no SYN storm
    await ready.wait()
    print(json.dumps({"ready": n}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if command == "report":
            print(json.dumps([c.__dict__ for c in conns]), flush=True)
        elif command in ("quit", ""):
            break
    for t in tasks:
        t.cancel()


# --- the test side -------------------------------------------------------------------------


def _python_in(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "lab.traffic", *args]


def _expect_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line of `proc`'s output, or fail after `timeout` s."""
    stdout = proc.stdout
    assert stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result or not result[0]:
        raise AssertionError(f"no answer from {proc.args!r} within {timeout}s")
    return result[0]


@dataclass
class Servers:
    """Real servers, one process per namespace; stopped by `close()`."""

    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def start(self, name: str, ns: str, timeout: float) -> None:
        proc = subprocess.Popen(_python_in(ns, "serve", name), stdout=subprocess.PIPE, text=True)
        self.procs[name] = proc
        assert _expect_line(proc, timeout).strip() == "ready"

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def request_spread(ns: str, url: str, n: int, timeout: float) -> dict[str, int]:
    out = subprocess.run(
        _python_in(ns, "spread", url, str(n)), capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-2000:]
    counts: dict[str, int] = json.loads(out.stdout)
    return counts


class Holder:
    """The long-lived connections of `hold`, as the test drives them."""

    def __init__(
        self, ns: str, addr: str, port: int, n: int, timeout: float, period: float = PERIOD
    ) -> None:
        self.proc = subprocess.Popen(
            _python_in(ns, "hold", addr, str(port), str(n), str(period)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.timeout = timeout
        assert json.loads(_expect_line(self.proc, timeout)) == {"ready": n}

    def report(self) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        conns: list[dict[str, Any]] = json.loads(_expect_line(self.proc, self.timeout))
        return conns

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "serve":
        asyncio.run(serve(rest[0]))
    elif cmd == "spread":
        spread(rest[0], int(rest[1]))
    elif cmd == "hold":
        asyncio.run(
            hold(rest[0], int(rest[1]), int(rest[2]), float(rest[3]) if rest[3:] else PERIOD)
        )
    else:
        sys.exit(f"unknown command {cmd!r}")
