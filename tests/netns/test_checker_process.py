"""The checker process beside a real agent, in a namespace, under load: 1,000 TCP targets
probed every second (100 loopback addresses x 10 ports, a listener that accepts them
all). A checker killed or frozen is replaced, and no real server's verdict moves meanwhile;
the agent tells the operator once; the checker runs at normal priority while the agent is
SCHED_FIFO, and it never outlives the agent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pair import wait_for
from topology import Netns

from hapair import control_client
from hapair.checker.client import HANG
from lab import shell
from lab.config import director_toml, service, write_authkey

pytestmark = pytest.mark.netns

ADDRESSES = [f"127.0.1.{i}" for i in range(1, 101)]
PORTS = list(range(21000, 21010))
LISTENER = """
import os, select, socket, sys
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    socks.append(s)
ep = select.epoll()
for s in socks:
    ep.register(s.fileno(), select.EPOLLIN)
by_fd = {s.fileno(): s for s in socks}
print("ready", flush=True)
while True:
    for fd, _ in ep.poll():
        while True:
            try:
                conn, _ = by_fd[fd].accept()
            except BlockingIOError:
                break
            except ConnectionAbortedError:
                continue
            conn.close()
"""


class Agent:
    def __init__(self, ns: Netns, config: Path, log: Path) -> None:
        self.ns, self.config, self.log = ns, config, log
        self.socket = config.with_suffix(".sock")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                shell.agent_command(ns.name, config), stdout=out, stderr=subprocess.STDOUT
            )

    def status(self) -> dict[str, Any]:
        reply = control_client.request(self.socket, {"cmd": "status"}, timeout=5)
        assert reply.get("ok"), reply
        result: dict[str, Any] = reply["result"]
        return result

    def status_or_none(self) -> dict[str, Any] | None:
        try:
            return self.status()
        except (control_client.NoAgent, OSError):
            return None

    def agent_pid(self) -> int:
        """The agent itself (under `ip netns exec`, which execs it: the same pid)."""
        return self.proc.pid


def servers(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [rs for svc in status["services"] for rs in svc["real_servers"]]


def all_probed_ok(status: dict[str, Any] | None) -> bool:
    if status is None or status["checker"]["state"] != "running":
        return False
    rss = servers(status)
    return len(rss) == len(ADDRESSES) * len(PORTS) and all(
        rs["healthy"] and rs["probe"] is not None and rs["probe"]["ok"] for rs in rss
    )


def restarted_alerts(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in status["alerts"]["recent"] if a["event"] == "checker_restarted"]


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def agent(tmp_path: Path, netns_factory: Callable[[str], Netns]) -> Iterator[Agent]:
    ns = netns_factory("chk")
    listener = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", LISTENER, *map(str, PORTS)],
        stdout=subprocess.PIPE,
    )
    assert listener.stdout is not None and listener.stdout.readline() == b"ready\n"
    probe = {"type": "tcp", "interval": "1s", "timeout": "1s"}
    config = tmp_path / "hapair.toml"
    config.write_text(
        director_toml(
            name="chk",
            priority=100,
            socket=config.with_suffix(".sock"),
            state_dir=tmp_path,
            cluster_id=79,
            auth_key_file=write_authkey(tmp_path / "authkey"),
            cluster={"interval": "0.2s", "deadtime": "1s"},
            links=[{"type": "udp", "interface": "lo", "peer": "127.0.0.2", "port": 7794}],
            services=[
                service(f"p{port}", "10.255.0.1", port, "dr", ADDRESSES, probe=probe)
                for port in PORTS
            ],
        )
    )
    running = Agent(ns, config, tmp_path / "agent.log")
    try:
        wait_for(lambda: all_probed_ok(running.status_or_none()), 30, step=0.2)
        yield running
    finally:
        code = shell.stop(running.proc, 10)
        listener.kill()
        listener.wait()
        sys.stdout.write(f"--- agent log ---\n{running.log.read_text()[-4000:]}\n")
        assert code in (0, -9), code


def test_the_checker_runs_at_normal_priority_beside_a_realtime_agent(agent: Agent) -> None:
    pid = agent.status()["checker"]["pid"]
    policy = os.sched_getscheduler(agent.agent_pid()) & ~os.SCHED_RESET_ON_FORK
    assert policy == os.SCHED_FIFO
    assert os.sched_getscheduler(pid) == os.SCHED_OTHER
    assert Path(f"/proc/{pid}/comm").read_text() == "hapair-checker\n"
    assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == (
        agent.agent_pid()
    ), "the checker is the agent's own child"
    status = agent.status()
    assert status["checker"]["probes"] == len(ADDRESSES) * len(PORTS)
    assert status["checker"]["restarts"] == 0


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_checker_killed_or_frozen_under_load_is_replaced_and_no_verdict_moves(
    agent: Agent, how: str
) -> None:
    before = agent.status()
    old = before["checker"]["pid"]
    assert restarted_alerts(before) == []
    os.kill(old, getattr(signal, how))
    start = time.monotonic()
    statuses = []
    while True:
        status = agent.status()
        statuses.append(status)
        checker = status["checker"]
        if checker["pid"] not in (None, old) and checker["state"] == "running":
            break
        assert time.monotonic() - start < HANG + 5, f"not replaced: {checker}"
        time.sleep(0.02)
    took = time.monotonic() - start
    assert took < (1.0 if how == "SIGKILL" else HANG + 1.0), took
    assert gone(old), "the old checker is still there"
    # Through the change and after it: every real server healthy, none left the services.
    time.sleep(2.5)  # the new checker has probed every target twice by now
    statuses.append(agent.status())
    for status in statuses:
        rss = servers(status)
        assert len(rss) == len(ADDRESSES) * len(PORTS)
        down = [f"{rs['address']}:{rs['port']}" for rs in rss if not rs["healthy"]]
        assert not down, f"{len(down)} real servers went down with the checker: {down[:5]}"
    last = statuses[-1]
    assert all_probed_ok(last)
    assert last["checker"]["restarts"] == 1
    assert "SIGKILL" in last["checker"]["last_restart"]["reason"]
    alerts = restarted_alerts(last)
    assert len(alerts) == 1, alerts
    assert not [a for a in last["alerts"]["recent"] if a["event"] == "server_down"]
    assert last["timer_late_max_ms"] < 250, "the agent's timers suffered"


def test_a_checker_never_outlives_its_agent(agent: Agent) -> None:
    pid = agent.status()["checker"]["pid"]
    agent.proc.kill()  # the agent dies without a word: the checker sees its socket end
    agent.proc.wait()
    wait_for(lambda: gone(pid), 2)
