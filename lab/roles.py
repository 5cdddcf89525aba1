"""What runs inside the lab's namespaces: the real servers' network and services, the ops
host's alert sinks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab.shell import LabError, ip_batch, run_in, sh
from lab.topology import HOSTS, NAT_GATEWAY, PAGER_PORT, REALS, SMTP_SINK_PORT, VIP, ns_name


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block in network namespace `name` (this thread only): sockets made there
    stay there, so one process can serve in several namespaces."""
    from hapair.host import enter_netns

    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as there:
        enter_netns(there.fileno())
        try:
            yield
        finally:
            enter_netns(home.fileno())


async def serve_real(host: str) -> list[Any]:
    """Real server `host`'s services, listening on every address here: lab/traffic.py's
    HTTP (80) and line echo (7), and an SMTP server on 25 (aiosmtpd, its greeting names
    the server). Returns them, to be kept."""
    from aiosmtpd.handlers import Sink
    from aiosmtpd.smtp import SMTP

    from lab.traffic import listen

    loop = asyncio.get_running_loop()
    keep: list[Any] = await listen(host)
    keep.append(await loop.create_server(lambda: SMTP(Sink(), hostname=host), "0.0.0.0", 25))
    return keep


async def serve_ops(alerts: Path) -> list[Any]:
    """The ops host's alert sinks (lab/alert_sinks.py's SMTP and pager) on its public
    address; every alert received is appended to `alerts` as a JSON line."""
    from lab.alert_sinks import PagerSink, SmtpSink

    def record(item: dict[str, Any]) -> None:
        with open(alerts, "a") as f:
            f.write(json.dumps(item | {"received": time.time()}) + "\n")

    sink = HOSTS["ops"]["public"]
    sinks: list[SmtpSink | PagerSink] = [
        SmtpSink(sink, SMTP_SINK_PORT, on_alert=record),
        PagerSink(sink, PAGER_PORT, on_alert=record),
    ]
    for server in sinks:
        await server.start()
    return sinks


async def serve_all(alerts: Path) -> None:
    """Every real server and the alert sinks, in one process (each Python process costs
    seconds in the emulated guest), each listening in its own namespace."""
    keep: list[Any] = []
    for rs in REALS:
        with in_netns(ns_name(rs)):
            keep += await serve_real(rs)
    with in_netns(ns_name("ops")):
        keep += await serve_ops(alerts)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def serve_host(host: str, alerts: Path) -> None:
    """One provisioned machine's services (a real server's, or the ops host's sinks): the
    process its systemd unit runs."""
    keep = await (serve_ops(alerts) if HOSTS[host]["role"] == "ops" else serve_real(host))
    print(f"ready: {len(keep)} servers", flush=True)
    await asyncio.Event().wait()


def real_server_network(host: str, mode: str, where: str | None) -> None:
    """What makes `host` a real server in `mode`, on this machine (`where` None) or in
    namespace `where`. nat: the default route via NAT_GATEWAY (replies go back through the
    MASTER). dr: the VIP on lo, tun: on tunl0 (IPIP arrives there, from the client's
    address: no reverse-path filter); never answered for in ARP. Idempotent."""
    if mode == "nat":
        ip_batch([f"route replace default via {NAT_GATEWAY}"], where)
        return
    dev = "lo" if mode == "dr" else "tunl0"
    if mode == "tun":
        sh("modprobe", "-q", "ipip", check=False)
        if run_in(where, "ip", "link", "show", "tunl0", check=False).returncode != 0:
            raise LabError(f"{host}: no tunl0 for the tun mode: this kernel has no ipip module")
    ip_batch([f"link set {dev} up", f"addr replace {VIP}/32 dev {dev}"], where)
    settings = ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"]
    if mode == "tun":
        settings += [f"net.ipv4.conf.{c}.rp_filter=0" for c in ("all", "tunl0")]
    run_in(where, "sysctl", "-qw", *settings)


async def poll_http(host: str, port: int, period: float, timeout: float) -> None:
    """A client sending a GET on a new connection every `period` s (not waiting for the
    previous one); prints `1 <done> <server>` per answer, `0 <done> <error>` per failure,
    wall-clock times. Ends on EOF or "quit" on stdin."""
    out: list[str] = []

    async def one() -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.write(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
            reply = await asyncio.wait_for(reader.read(), timeout)
            writer.close()
            head, _, body = reply.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace") or "empty")
            who = " ".join(body.decode(errors="replace").split()) or "?"  # one line
            out.append(f"1 {time.time():.4f} {who}\n")
        except (OSError, ConnectionError, TimeoutError) as exc:
            reason = type(exc).__name__
            out.append(f"0 {time.time():.4f} {reason}\n")

    async def flush() -> None:
        while True:
            await asyncio.sleep(0.05)
            if out:
                sys.stdout.write("".join(out))
                sys.stdout.flush()
                out.clear()

    async def send() -> None:
        tasks: set[asyncio.Task[None]] = set()
        nxt = time.monotonic()
        while True:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            nxt = max(nxt, time.monotonic() - period)

    loop = asyncio.get_running_loop()
    workers = [asyncio.create_task(flush()), asyncio.create_task(send())]
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() not in ("quit", ""):
        pass
    for w in workers:
        w.cancel()
