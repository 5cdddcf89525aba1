"""The control socket's server and protocol, on a real Unix socket: every line gets an
answer (the lines that once killed the agent among them), a client costs bounded time
and memory, and a flood of clients leaves the socket answering."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loop_thread import LoopThread

from hapair import control, control_client
from hapair.control import ControlServer, Request, decode_request

pytestmark = pytest.mark.unit

# Each of these once killed the agent or closed the connection without an answer.
KILLERS = [
    b'{"cmd":"drain","service":"web","server":"10.0.0.11:80","weight":1e999}\n',
    b'{"cmd":"drain","service":"web","server":"10.0.0.11:80","weight":NaN}\n',
    b'{"cmd":"add","service":"web","server":"10.0.0.11:80","weight":Infinity}\n',
    b'{"cmd":"add","service":"web","server":"10.0.0.11:80","weight":-Infinity}\n',
    b'{"cmd":[]}\n',
    b'{"cmd":{}}\n',
    b'{"cmd":"drain","service":[],"server":{}}\n',
    b'{"cmd":"add","service":"web","server":"10.0.0.11:80","weight":true}\n',
    b'{"cmd":"add","service":"web","server":"10.0.0.11:80","weight":1.5}\n',
    b'{"cmd":"status","x":' + b"[" * 5000 + b"]" * 5000 + b"}\n",
    b"[" * 5000 + b"]" * 5000 + b"\n",
    b'{"cmd":"drain","service":"we\\u0000b","server":"x"}\n',
    b"\xff\xfe\x00garbage\n",
    b"\n",
    b"null\n",
    b'"status"\n',
]


def test_decode_refuses_each_killer_with_a_reason() -> None:
    for line in KILLERS:
        refused = decode_request(line)
        assert isinstance(refused, str) and refused.startswith("bad request: "), (line, refused)


def test_decode_takes_the_cli_s_requests() -> None:
    assert decode_request(b'{"cmd":"status"}\n') == Request("status")
    assert decode_request(
        b'{"cmd":"add","service":"web","server":"10.0.0.12:80","weight":3}'
    ) == Request("add", "web", "10.0.0.12:80", 3)
    assert decode_request(b'{"cmd":"drain","service":"web","server":"10.0.0.12:80"}') == (
        Request("drain", "web", "10.0.0.12:80")
    )
    assert "takes no 'weight'" in str(
        decode_request(b'{"cmd":"drain","service":"w","server":"s","weight":1}')
    )


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["status", "drain", "add", "release", "cmd", "weight", "service"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        JSON,
        st.fixed_dictionaries(
            {"cmd": st.sampled_from(sorted(control.COMMANDS))},
            optional={"service": JSON, "server": JSON, "weight": JSON, "extra": JSON},
        ),
    )
)
def test_decode_never_raises_and_checks_every_field(value: Any) -> None:
    try:
        line = json.dumps(value, allow_nan=True).encode()
    except (ValueError, RecursionError):
        return
    result = decode_request(line)
    if isinstance(result, Request):
        assert result.cmd in control.COMMANDS
        assert type(result.weight) is int and 0 <= result.weight <= 65535
        if result.cmd in control.SERVER_COMMANDS:
            assert result.service.isprintable() and result.server.isprintable()


# The server, on a real socket, its event loop in a thread of its own.


class Served(LoopThread):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.server = ControlServer(path, self._handle)
        self.call(self.server.start())

    @staticmethod
    async def _handle(request: Request) -> dict[str, Any]:
        if request.cmd == "release":
            raise RuntimeError("a bug behind the socket")
        return {"ok": True, "result": request.to_json()}

    def close(self) -> None:
        self.call(self.server.close())
        self.stop()

    def ask(self, data: bytes, timeout: float = 10.0) -> dict[str, Any]:
        """Send raw bytes (from a thread, as a client that writes a lot would) and read
        the reply line."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.path))

            def send() -> None:
                try:
                    sock.sendall(data)
                    if data.endswith(b"\n") or data.endswith(b"}"):
                        sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the server may refuse before reading it all

            writer = threading.Thread(target=send)
            writer.start()
            reply = sock.makefile("rb").readline()
            writer.join(timeout)
        return dict(json.loads(reply))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path / "c.sock")
    yield served
    served.close()


def test_every_line_gets_an_answer(served: Served) -> None:
    for line in [*KILLERS, b'{"cmd":"status"}']:  # the last one without its newline
        reply = served.ask(line)
        if line.startswith(b'{"cmd":"status"}'):
            assert reply == {"ok": True, "result": {"cmd": "status"}}
        else:
            assert reply["ok"] is False and reply["error"], (line, reply)
    assert served.ask(b'{"cmd":"release"}\n') == {
        "ok": False,
        "error": "internal error: RuntimeError",
    }


def test_a_line_over_the_limit_is_answered(served: Served) -> None:
    for size in (control.MAX_MESSAGE + 10, 2 << 20):
        line = b'{"cmd":"status","pad":"' + b"x" * size + b'"}\n'
        assert served.ask(line) == {
            "ok": False,
            "error": f"request larger than {control.MAX_MESSAGE} bytes",
        }
    assert served.ask(b'{"cmd":"status"}\n')["ok"] is True


def test_the_bound_is_chosen_from_the_start_of_the_line(served: Served) -> None:
    """A line that is not a config_* command is refused once it passes MAX_MESSAGE, at
    once, not buffered up to the config bound (the client here never ends its line);
    a config_* line of the same size is still being read when the read times out."""
    start = time.monotonic()
    other = b'{"cmd":"status","pad":"' + b"x" * (control.MAX_MESSAGE + 10)
    refused = served.ask(other)
    assert refused == control.refusal(f"request larger than {control.MAX_MESSAGE} bytes")
    assert time.monotonic() - start < control.READ_TIMEOUT / 2
    config = b'{"cmd":"config_check","toml":"' + b"x" * (control.MAX_MESSAGE * 2)
    assert served.ask(config) == control.refusal(
        f"no request line within {control.READ_TIMEOUT:g}s"
    )
    assert control.line_bound(b"") == control.MAX_CONFIG_MESSAGE  # not known yet
    assert control.line_bound(b'{"cmd":"conf') == control.MAX_CONFIG_MESSAGE
    assert control.line_bound(b'{"cmd":"status"') == control.MAX_MESSAGE
    assert control.line_bound(b' {"cmd":"config_check"') == control.MAX_MESSAGE


def test_config_lines_have_their_own_bound_and_checked_fields(served: Served) -> None:
    """A config_* line may carry a config file (up to MAX_CONFIG_MESSAGE), no more; the
    larger bound is the config commands' only, and their fields are checked as strings."""
    big = b'{"cmd":"config_check","toml":"' + b"x" * (control.MAX_CONFIG_MESSAGE + 10) + b'"}\n'
    refused = served.ask(big)
    assert refused == control.refusal(f"request larger than {control.MAX_CONFIG_MESSAGE} bytes")
    toml = b"x" * (control.MAX_MESSAGE * 4)
    fits = b'{"cmd":"config_check","toml":"' + toml + b'"}\n'
    answer = served.ask(fits)
    assert answer == {"ok": True, "result": {"cmd": "config_check", "toml": toml.decode()}}
    for line in (
        b'{"cmd":"config_check","toml":7}',
        b'{"cmd":"config_apply","toml":"a","version":null,"user":"u"}',
        b'{"cmd":"config_rollback","version":"v\\u0000","user":"u"}',
        b'{"cmd":"config_show","toml":"a"}',
        b'{"cmd":"config_nothing"}',
        b'{"cmd":"config_show","pad":"' + b"x" * (control.MAX_MESSAGE * 2) + b'"}',
    ):
        assert isinstance(decode_request(line), str), line
    assert served.ask(b'{"cmd":"status"}\n')["ok"] is True


def test_a_silent_client_is_answered_and_dropped_in_time(served: Served) -> None:
    start = time.monotonic()
    reply = served.ask(b'{"cmd":')  # and then nothing, not even EOF
    assert reply == {"ok": False, "error": f"no request line within {control.READ_TIMEOUT:g}s"}
    assert time.monotonic() - start < control.READ_TIMEOUT + 1


def test_a_flood_of_idle_clients_leaves_the_socket_answering(served: Served) -> None:
    """Another process opens 300 connections and says nothing: it gets MAX_PER_PROCESS
    slots, the rest are told BUSY at once, and the CLI is answered at once all the same."""
    flood = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "held = []\n"
            "for _ in range(300):\n"
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            f"    s.connect({str(served.path)!r})\n"
            "    held.append(s)\n"
            "print('held', flush=True)\n"
            "time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert flood.stdout is not None and flood.stdout.readline() == "held\n"
        start = time.monotonic()
        reply = control_client.request(served.path, {"cmd": "status"}, 5.0)
        assert reply == {"ok": True, "result": {"cmd": "status"}}
        assert time.monotonic() - start < 1.0
        wait = time.monotonic() + 5
        while served.server.refused < 300 - control.MAX_PER_PROCESS:
            assert time.monotonic() < wait, served.server.refused
            time.sleep(0.05)
    finally:
        flood.kill()
        flood.wait()


def test_the_client_retries_a_full_listen_backlog(tmp_path: Path) -> None:
    """A connect flood fills the socket's backlog: connect() fails with EAGAIN at once,
    which `hapair status` once took for "no agent" (exit 3)."""
    path = tmp_path / "full.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    pending = []
    while True:  # fill the backlog
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            break
        pending.append(sock)

    def serve_later() -> None:
        time.sleep(1.0)
        for sock in pending:
            sock.close()
        while True:
            conn, _ = listener.accept()
            with conn:
                if conn.makefile("rb").readline():
                    conn.sendall(b'{"ok":true,"result":"late but there"}\n')
                    return

    server = threading.Thread(target=serve_later, daemon=True)
    server.start()
    try:
        assert control_client.request(path, {"cmd": "status"}, timeout=5.0) == {
            "ok": True,
            "result": "late but there",
        }
    finally:
        server.join(5)
        listener.close()


def test_close_ends_every_client_being_served(tmp_path: Path) -> None:
    """A client whose answer never comes (the agent stopping) is cut off by close(), and
    close() returns only once its task is gone: no task outlives the event loop."""

    async def scenario() -> tuple[bytes, int, list[str]]:
        never: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def handle(request: Request) -> dict[str, Any]:
            return await never

        server = ControlServer(tmp_path / "c.sock", handle)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "c.sock"))
        writer.write(b'{"cmd":"status"}\n')
        await writer.drain()
        await asyncio.sleep(0.2)  # being served: waiting for the answer
        waiting = len(server._tasks)
        await asyncio.wait_for(server.close(), 5)
        left = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return reply, waiting, left

    reply, waiting, left = asyncio.run(scenario())
    assert waiting == 1
    assert left == []
    assert reply == b""  # cut off, no answer
    assert not (tmp_path / "c.sock").exists()
