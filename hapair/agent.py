"""The agent: wires the HA core to the links, the VIPs, the health checks and the
control socket, and owns start-up, reload and shutdown.

All inputs go through one queue and are handled one at a time, in order, so that
the VIPs are released before the heartbeat that tells the peer to take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import signal
import socket
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hapair import control, logs
from hapair.alerts import Alerter
from hapair.config import Config, ConfigError, Problem, load
from hapair.config.model import InterfaceTrack, SerialLink, Vip
from hapair.config.model import Service as ServiceConfig
from hapair.config.reload import restart_needed
from hapair.core.election import Announce, Transition
from hapair.core.node import Action, HaNode, Notice, Refused, Send, Settings
from hapair.core.roster import Refused as RosterRefused
from hapair.core.roster import Roster
from hapair.core.states import State
from hapair.ipvs.keeper import Outcome, TableKeeper
from hapair.ipvs.reconcile import (
    Change,
    ServiceView,
    desired_table,
    dest_keys,
    service_key,
)
from hapair.ipvs.table import DestKey, Table
from hapair.links import LinkError
from hapair.links.serial import SerialHeartbeatLink
from hapair.links.udp import UdpHeartbeatLink
from hapair.prober import Prober, Target
from hapair.track import run_check

if TYPE_CHECKING:
    from hapair.reaper import Reaper

log = logging.getLogger("hapair")

LATE_TIMER_WARNING = 0.05  # a timer this late is worth a log line
RECONCILE_PERIOD = 5.0  # how soon a rule changed behind hapair's back is restored


class ReloadError(Exception):
    """The system refused part of a reload; the message says what."""


def settings_of(cfg: Config, key: bytes) -> Settings:
    c = cfg.cluster
    return Settings(
        name=cfg.node.name,
        priority=cfg.node.priority,
        cluster=c.id,
        key=key,
        links=link_names(cfg),
        interval=c.interval,
        deadtime=c.deadtime,
        warntime=c.warn_after,
        initdead=c.initdead_after,
        preempt=c.preempt,
        preempt_delay=c.preempt_delay,
        digest=cfg.shared_digest(),
    )


def link_names(cfg: Config) -> list[str]:
    return [f"{link.type}:{link.name}" for link in cfg.cluster.links]


def read_key(path: Path) -> bytes:
    return path.read_bytes()


def next_epoch(node: str, state_dir: Path) -> int:
    """An epoch larger than any this node used before: the clock, but never backwards."""
    epoch = time.time_ns()
    path = state_dir / f"{node}.epoch"
    with contextlib.suppress(OSError, ValueError):
        epoch = max(epoch, int(path.read_text()) + 1)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(epoch))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot keep the heartbeat epoch in %s (%s); using the clock alone", path, exc)
    return epoch


def load_roster(path: Path) -> Roster:
    try:
        return Roster.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return Roster()
    except (OSError, ValueError) as exc:
        log.error("ignoring the operator's changes in %s: %s", path, exc)
        return Roster()


def settle_heap() -> None:
    """Take what start-up or a reload made out of the cyclic collector's sight, after
    collecting the old config's garbage: a full collection of the state of thousands of
    probe targets stopped the event loop for 40-110 ms on the host, and would for about
    ten times as long in a slow VM, whenever it came. Called when a pause is expected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@dataclass
class Health:
    """What keeps this node out of FAULT: VIP interfaces up, every [[track]] passing."""

    failing: dict[str, str] = field(default_factory=dict)  # check -> reason

    def set(self, name: str, ok: bool, reason: str) -> bool:
        """True when overall health changed."""
        before = not self.failing
        if ok:
            self.failing.pop(name, None)
        else:
            self.failing[name] = reason
        return before != (not self.failing)

    @property
    def ok(self) -> bool:
        return not self.failing

    def reason(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in sorted(self.failing.items()))


class Agent:
    def __init__(self, cfg: Config, config_path: Path, reaper: Reaper | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.reaper = reaper  # removes the VIPs if this process dies without stopping
        self.loop = asyncio.get_running_loop()
        self.key = read_key(cfg.cluster.auth_key_file)
        self.epoch = next_epoch(cfg.node.name, cfg.node.state_dir)
        self.node: HaNode  # made when the links are up: see run()
        self.links: dict[str, UdpHeartbeatLink | SerialHeartbeatLink] = {}
        self.health = Health()
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.vips_held = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.stopped = asyncio.Event()
        self.timer_late_max = 0.0
        self._wake = asyncio.Event()
        self._reconcile_queued = False
        self._ipvs_pass: asyncio.Task[None] | None = None
        self._ipvs_again = False
        self._refresh: asyncio.Task[None] | None = None
        self._warmup_task: asyncio.Task[None] | None = None
        wants_ipvs = bool(cfg.services) or bool(cfg.sync and cfg.sync.enabled)
        self.keeper = TableKeeper(cfg.sync, cfg.cluster.id) if wants_ipvs else None
        self.healthy: dict[tuple[str, DestKey], bool] = {}  # the probes' verdicts
        self.roster = load_roster(self.roster_path)  # the operator's overrides
        self.prober = Prober(self._on_probe)
        self.views: dict[str, ServiceView] = {}
        # The desired IPVS table and its views, made again only when an input changed
        # (config, roster, a verdict): a periodic pass of 1,000 servers spent more on
        # rebuilding it than on reading the kernel.
        self._desired: tuple[Table, dict[str, ServiceView]] | None = None
        self.history: dict[Hashable, deque[dict[str, Any]]] = {}  # up/down, for the monitor
        self.alerter = Alerter(cfg.node.name, cfg.alerts, cfg.node.state_dir)
        self.last_reload: dict[str, Any] | None = None  # the latest SIGHUP's outcome

    # Start-up and shutdown.

    async def run(self) -> int:
        from hapair.vip import VipAddresses

        self.vip = VipAddresses()
        self.alerter.start()  # resends what an earlier run left in the spool
        stale = await self.vip.remove_stale(self.cfg.vips)
        for vip in stale:
            log.warning(
                "removed %s from %s: left over from an earlier run", vip.address, vip.interface
            )
        self._sync_probes()
        if self.keeper is not None and await self.keeper.open():
            self._apply_sysctls()
            await self._reconcile()
            await self.keeper.set_sync_role("backup")
            self.tasks.append(asyncio.create_task(self._reconcile_periodically()))
        else:
            self._apply_sysctls()
            if self.keeper is not None:
                await self._reconcile()  # no kernel table, but the services' views
        self._open_links()
        for link in self.links.values():
            try:
                await link.start()
            except LinkError as exc:
                log.error("%s; the link stays down until it can be opened", exc)
        server = await self._serve_control()
        for sig, handler in (
            (signal.SIGTERM, self._on_stop),
            (signal.SIGINT, self._on_stop),
            (signal.SIGHUP, self._on_reload),
        ):
            self.loop.add_signal_handler(sig, handler)
        from hapair import linkmon, probes  # imported before the clock runs, not in it

        del linkmon
        if self.cfg.monitor is not None:
            # aiohttp: 0.3 s here, 3-6 s in a slow VM, where the clock saw it as a stall
            from hapair.monitor import server as monitor_server

            del monitor_server
        probes.preload(
            {
                p.type
                for s in self.services()
                for p in [s.probe, *(r.probe for r in s.real_servers)]
                if p
            }
        )
        settle_heap()
        # The core's clock starts when the links can carry its first heartbeat.
        self.node = HaNode(settings_of(self.cfg, self.key), epoch=self.epoch, now=self.loop.time())
        self._start_checks()
        self.tasks.append(asyncio.create_task(self._clock(), name="clock"))
        await self._warm_up()
        monitor = await self._start_monitor()
        log.info(
            "%s started: priority %d, links %s, VIPs %s",
            self.cfg.node.name,
            self.cfg.node.priority,
            ", ".join(link_names(self.cfg)),
            ", ".join(str(v.address) for v in self.cfg.vips) or "none",
        )
        try:
            await self._handle_inputs()
        finally:
            server.close()
            if self._ipvs_pass is not None:  # a pass under way finishes: no half-made table
                self._ipvs_again = False
                await asyncio.gather(self._ipvs_pass, return_exceptions=True)
            if monitor is not None:
                await monitor.stop()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for link in self.links.values():
                await link.close()
            self.vip.close()
            await self.prober.close()
            if self.keeper is not None:
                await self.keeper.stop_sync()
                await self.keeper.close()
            await self.alerter.close()  # last: it may wait a moment for a delivery under way
        log.info("%s stopped", self.cfg.node.name)
        return 0

    def _open_links(self) -> None:
        for name, link in zip(link_names(self.cfg), self.cfg.cluster.links, strict=True):
            on = self._receiver(name)
            self.links[name] = (
                SerialHeartbeatLink(link, on)
                if isinstance(link, SerialLink)
                else UdpHeartbeatLink(link, on)
            )

    def _receiver(self, name: str) -> Any:
        def received(payload: bytes) -> None:
            self.inbox.put_nowait(("recv", name, payload))

        return received

    def _start_checks(self) -> None:
        for track in self.cfg.track:
            if not isinstance(track, InterfaceTrack):
                self.tasks.append(asyncio.create_task(run_check(track, self._on_check)))
        ifnames = {v.interface for v in self.cfg.vips} | {
            t.interface for t in self.cfg.track if isinstance(t, InterfaceTrack)
        }
        if ifnames:
            self.tasks.append(asyncio.create_task(self._watch_interfaces(ifnames)))

    async def _watch_interfaces(self, ifnames: set[str]) -> None:
        from hapair.linkmon import watch_links

        async for change in watch_links(ifnames):
            self._on_check(f"interface {change.ifname}", change.up, "up" if change.up else "down")

    def _on_check(self, name: str, ok: bool, reason: str) -> None:
        self.inbox.put_nowait(("check", name, ok, reason))

    def _on_stop(self) -> None:
        self.inbox.put_nowait(("stop",))

    def _on_reload(self) -> None:
        self.inbox.put_nowait(("reload",))

    # The one consumer of inputs.

    async def _handle_inputs(self) -> None:
        while True:
            item = await self.inbox.get()
            now = self.loop.time()
            kind = item[0]
            if kind == "recv":
                await self._carry_out(self.node.receive(item[1], item[2], now))
            elif kind == "tick":
                await self._carry_out(self.node.tick(now))
            elif kind == "check":
                _, name, ok, reason = item
                log.info("check %s: %s (%s)", name, "ok" if ok else "FAILING", reason)
                if self.health.set(name, ok, reason):
                    await self._carry_out(
                        self.node.set_health(self.health.ok, self.health.reason(), now)
                    )
            elif kind == "ctl":
                _, request, reply = item
                try:
                    answer = await self._control(request, now)
                except Exception as exc:  # a bug of ours must not take the MASTER down
                    log.exception("control request %s failed", request.cmd)
                    answer = control.refusal(f"internal error: {type(exc).__name__}: {exc}")
                if not reply.done():
                    reply.set_result(answer)
            elif kind == "reconcile":
                self._reconcile_queued = False
                self._reconcile_beside()
            elif kind == "probe":
                _, key, ok, reason = item
                self.healthy[key] = ok
                self._desired = None
                log.warning(
                    "real server %s of %s is %s: %s", key[1], key[0], "up" if ok else "DOWN", reason
                )
                self.alerter.emit(
                    "server_up" if ok else "server_down",
                    f"{key[0]} {key[1]}",
                    f"real server {key[1]} of {key[0]} is {'up' if ok else 'down'}: {reason}",
                    {"service": key[0], "server": str(key[1]), "reason": reason},
                )
                if self.keeper is not None and not self._reconcile_queued:
                    # One pass after the verdicts already queued: 1,000 servers coming up
                    # together cost one pass, not 1,000 (each a dump of the whole table).
                    self._reconcile_queued = True
                    self.inbox.put_nowait(("reconcile",))
            elif kind == "warm":
                if item[1] is self._warmup_task:
                    self._warmup_task = None
                    log.info("preemption allowed: %s", item[2])
                    await self._carry_out(self.node.hold_preemption(None, now))
            elif kind == "reload":
                await self._reload()
            elif kind == "stop":
                await self._carry_out(self.node.stop(now))
                return
            self._wake.set()  # the next deadline may have moved

    async def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                for link in self.links.values():
                    link.send(action.payload)
            elif isinstance(action, Transition):
                log.info("%s -> %s: %s", action.old, action.new, action.reason)
                if action.new is State.MASTER:
                    await self._take_vips()
                elif action.old is State.MASTER:
                    await self._release_vips()
                if self.keeper is not None and action.new is not State.STOPPED:
                    await self.keeper.set_sync_role(
                        "master" if action.new is State.MASTER else "backup"
                    )
                    if action.old is State.MASTER:
                        await self._warm_up()  # a fresh backup daemon: learn before preempting
                self.alerter.state_changed(action.old.name, action.new.name, action.reason)
            elif isinstance(action, Announce):
                log.info("announcing the VIPs again: %s", action.reason)
                self._announce_all()
            elif isinstance(action, Notice):
                log.warning("%s: %s", action.event, action.detail)
                self.alerter.emit(action.event, action.subject, action.detail)

    async def _take_vips(self) -> None:
        """Each VIP is added and announced before the next is added, the ones no service
        listens on (a NAT gateway) first: a client sent to a service before the real
        servers learnt their gateway's new MAC would lose the first reply (a SYN-ACK is
        sent again only after 1 s)."""
        from hapair.vip import VipError

        served = {s.address for s in self.cfg.services if s.address is not None}
        for vip in sorted(self.cfg.vips, key=lambda v: v.address.ip in served):
            try:
                await self.vip.add(vip)
            except VipError as exc:
                log.error("cannot take %s: %s", vip.address, exc)
                continue
            self._announce(vip)
            await asyncio.sleep(0)  # its first announcement goes out before the next VIP exists
        self.vips_held = True
        self._refresh = asyncio.create_task(self._refresh_announcements())

    async def _release_vips(self) -> None:
        from hapair.vip import VipError

        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        for vip in self.cfg.vips:
            try:
                await self.vip.remove(vip)
            except VipError as exc:
                log.error("cannot release %s: %s", vip.address, exc)
        self.vips_held = False

    def _announce_all(self, repeat: int | None = None) -> None:
        for vip in self.cfg.vips:
            self._announce(vip, repeat)

    def _announce(self, vip: Vip, repeat: int | None = None) -> None:
        from hapair.vip import announce

        task = asyncio.create_task(announce(vip, repeat))
        self.tasks.append(task)
        task.add_done_callback(self.tasks.remove)

    async def _refresh_announcements(self) -> None:
        periods = [v.garp_refresh for v in self.cfg.vips if v.garp_refresh > 0]
        if not periods:
            return
        while True:
            await asyncio.sleep(min(periods))
            self._announce_all(repeat=1)

    # IPVS.

    def _reconcile_beside(self) -> None:
        """A periodic or probe-driven pass, run beside the inputs: a pass over a big table
        (1,000 services: ~0.1 s here, ~1 s in a slow VM) must not hold back heartbeats."""
        if self._ipvs_pass is not None and not self._ipvs_pass.done():
            self._ipvs_again = True  # one more pass when this one ends, with what is new
            return
        self._ipvs_again = True
        self._ipvs_pass = asyncio.create_task(self._passes(), name="ipvs")

    async def _passes(self) -> None:
        while self._ipvs_again:
            self._ipvs_again = False
            try:
                await self._reconcile()
            except Exception:  # a bug, not the kernel (IpvsError is handled per change)
                log.exception("IPVS pass failed")

    async def _reconcile(self) -> Outcome | None:
        """The services' views (healthy servers, quorum, the sorry server) and their
        alerts from the verdicts, then one IPVS pass where the kernel has IPVS."""
        assert self.keeper is not None
        if self._desired is None:
            self._desired = desired_table(self.services(), self.healthy, self.roster.admin_states())
        before = self.views
        desired, self.views = self._desired
        self._alert_quorum(before)
        if not self.keeper.available:
            return None
        first = not self.keeper.owned
        outcome = await self.keeper.reconcile(desired)
        if outcome.applied and not first:
            log.warning(
                "IPVS table differed from the desired one; %d change(s) applied: %s",
                len(outcome.applied),
                "; ".join(map(describe_change, outcome.applied[:5])),
            )
        elif outcome.applied:
            log.info("IPVS table loaded: %d change(s)", len(outcome.applied))
        if outcome.remaining:
            log.error(
                "IPVS table still differs after applying: %s",
                "; ".join(map(describe_change, outcome.remaining[:5])),
            )
        return outcome

    def _alert_quorum(self, before: dict[str, ServiceView]) -> None:
        """quorum_lost / quorum_back for each service whose quorum changed (was met at start)."""
        quorums = {s.name: s.quorum for s in self.services()}
        for name, view in self.views.items():
            was = before[name].quorum_ok if name in before else True
            if view.quorum_ok != was:
                sorry = " (the sorry server stands in)" if view.sorry else ""
                self.alerter.emit(
                    "quorum_back" if view.quorum_ok else "quorum_lost",
                    name,
                    f"service {name}: {view.healthy} healthy real server(s), quorum "
                    f"{quorums.get(name)} {'met again' if view.quorum_ok else 'lost'}{sorry}",
                    {"service": name, "healthy": str(view.healthy)},
                )

    def _apply_sysctls(self) -> None:
        from hapair import sysctl

        ipv6 = any(s.address is not None and s.address.version == 6 for s in self.cfg.services)
        sysctl.apply(self.cfg.sysctl, ipv6)
        nat = [s.name for s in self.cfg.services if s.forward == "nat"]
        with contextlib.suppress(OSError):
            if nat and sysctl.PROC.joinpath("net/ipv4/ip_forward").read_text().strip() == "0":
                log.warning(
                    "service %s forwards by NAT but net.ipv4.ip_forward is 0: the real "
                    "servers' replies will not be routed (set [sysctl] ip_forward = true)",
                    ", ".join(nat),
                )

    async def _warm_up(self) -> None:
        """With preemption and connection sync, a recovering node first learns the MASTER's
        connections (core/warmup.py says how long), so taking the VIPs back drops none."""
        if self._warmup_task is not None:
            self._warmup_task.cancel()
            self._warmup_task = None
        sync = self.cfg.sync
        if (
            not self.cfg.cluster.preempt
            or self.keeper is None
            or self.keeper.sync_role != "backup"
            or sync is None
            or sync.warmup <= 0
        ):
            return
        from hapair.core.warmup import WarmUp

        warmup = WarmUp(sync.warmup, self.loop.time())
        await self._carry_out(self.node.hold_preemption(warmup.reason(), self.loop.time()))

        async def learn() -> None:
            assert self.keeper is not None
            while not warmup.observe(await self.keeper.connections(), self.loop.time()):
                await asyncio.sleep(0.5)
            self.inbox.put_nowait(("warm", task, f"{warmup.count} connections learned"))

        task = self._warmup_task = asyncio.create_task(learn(), name="warm-up")
        self.tasks.append(task)
        task.add_done_callback(self.tasks.remove)

    async def _reconcile_periodically(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_PERIOD)
            if not self._reconcile_queued:
                self._reconcile_queued = True
                self.inbox.put_nowait(("reconcile",))

    # Timers.

    async def _clock(self) -> None:
        while True:
            deadline = self.node.next_deadline()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - self.loop.time()))
                continue  # a heartbeat arrived: the deadline may have moved
            late = self.loop.time() - deadline
            if late > LATE_TIMER_WARNING:
                log.warning("timer %.0f ms late: the agent is starved of CPU", late * 1000)
            self.timer_late_max = max(self.timer_late_max, late)
            self.inbox.put_nowait(("tick",))
            await asyncio.sleep(0)

    # The control socket.

    async def _serve_control(self) -> control.ControlServer:
        server = control.ControlServer(self.cfg.node.socket_path, self._handle_request)
        await server.start()
        return server

    async def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control request from the monitor, checked as the socket's are."""
        try:
            checked = control.check_request(request)
        except ValueError as exc:
            return control.refusal(f"bad request: {exc}")
        return await self._handle_request(checked)

    async def _handle_request(self, request: control.Request) -> dict[str, Any]:
        """A checked request, handled in turn with every other input."""
        answer: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.inbox.put_nowait(("ctl", request, answer))
        return await answer

    async def _start_monitor(self) -> Any:
        """The web monitor when [monitor] is set; without it (a missing users file, a
        world-readable key) the agent goes on failing over, and says why."""
        if self.cfg.monitor is None:
            return None
        from hapair.monitor.server import Monitor, MonitorError

        monitor = Monitor(self.cfg.monitor, lambda: self.status(self.loop.time()), self.request)
        try:
            await monitor.start()
        except MonitorError as exc:
            log.error("web monitor not started: %s", exc)
            return None
        return monitor

    async def _control(self, request: control.Request, now: float) -> dict[str, Any]:
        cmd = request.cmd
        if cmd == "status":
            return {"ok": True, "result": self.status(now)}
        if cmd == "release":
            try:
                await self._carry_out(self.node.release(now))
            except Refused as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "result": "released: the peer takes the VIPs"}
        try:
            done = self.roster.apply(
                self.services(configured=True),
                cmd,
                request.service,
                request.server,
                request.weight,
            )
        except RosterRefused as exc:
            return {"ok": False, "error": str(exc)}
        self._save_roster()
        log.info("operator: %s", done)
        self._sync_probes()
        if self.keeper is not None:
            await self._reconcile()
        return {"ok": True, "result": done}

    def status(self, now: float) -> dict[str, Any]:
        core = self.node.status(now)
        wall = time.time() - (now - self.node.election.since)
        types = {name: name.split(":", 1) for name in link_names(self.cfg)}
        peer = core["peer"]
        peer_since = peer.pop("since_monotonic", None)
        peer["since"] = None if peer_since is None else round(time.time() - (now - peer_since), 3)
        for link in peer["links"]:
            link["type"], link["name"] = types[link["name"]]
        sync = self.cfg.sync
        return {
            "node": core["node"],
            "state": core["state"],
            "priority": core["priority"],
            "since": round(wall, 3),
            "peer": peer,
            "vips": [
                {"address": str(v.address), "interface": v.interface, "held": self.vips_held}
                for v in self.cfg.vips
            ],
            "sync": {
                "enabled": bool(sync and sync.enabled),
                "role": None
                if not (sync and sync.enabled)
                else ("master" if self.node.state is State.MASTER else "backup"),
            },
            "services": self._services_status(),
            "health": {"ok": self.health.ok, "failing": self.health.failing},
            "heartbeats": core["heartbeats"],
            "preempt_hold": core["preempt_hold"],
            "timer_late_max_ms": round(self.timer_late_max * 1000, 1),
            "alerts": self.alerter.status(),
            "reload": self.last_reload,
        }

    # Real servers: the operator's roster and the probes.

    @property
    def roster_path(self) -> Path:
        return self.cfg.node.state_dir / f"{self.cfg.node.name}.roster.json"

    def services(self, configured: bool = False) -> list[ServiceConfig]:
        """The configured services, with the operator's additions and removals."""
        if configured:
            return list(self.cfg.services)
        return [self.roster.effective(s) for s in self.cfg.services]

    def _save_roster(self) -> None:
        path = self.roster_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.roster.to_json(), indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:
            log.error("cannot keep the operator's changes in %s: %s", path, exc)

    def _sync_probes(self) -> None:
        targets: dict[Hashable, Target] = {}
        for svc in self.services():
            for rs, dkey in zip(svc.real_servers, dest_keys(svc), strict=True):
                probe = rs.probe or svc.probe
                if probe is not None:
                    port = probe.port or dkey.port
                    targets[(svc.name, dkey)] = Target(
                        probe, rs.address, port, svc.probe_start == "up"
                    )
        self.prober.sync(targets)
        self.healthy = {k: v for k, v in self.prober.verdicts().items() if isinstance(k, tuple)}
        self._desired = None

    def _on_probe(self, key: Hashable, ok: bool, reason: str) -> None:
        entry = {"up": ok, "time": round(time.time(), 3), "reason": reason}
        self.history.setdefault(key, deque(maxlen=10)).append(entry)
        self.inbox.put_nowait(("probe", key, ok, reason))

    def _probe_status(self, key: tuple[str, DestKey]) -> dict[str, Any] | None:
        watch = self.prober.watches.get(key)
        if watch is None or watch.last is None:
            return None
        r = watch.last
        return {"ok": r.ok, "reason": r.reason, "latency_ms": round(r.latency * 1000, 1)}

    def _services_status(self) -> list[dict[str, Any]]:
        actual = self.keeper.actual if self.keeper is not None else {}
        out = []
        admin = self.roster.admin_states()
        for svc in self.services():
            key = service_key(svc)
            in_kernel = actual.get(key)
            view = self.views.get(svc.name)
            servers = []
            for rs, dkey in zip(svc.real_servers, dest_keys(svc), strict=True):
                dest = in_kernel.dests.get(dkey) if in_kernel else None
                servers.append(
                    {
                        "address": str(rs.address),
                        "port": dkey.port,
                        "weight": dest.weight if dest else rs.weight,
                        "healthy": self.healthy.get((svc.name, dkey), True),
                        "admin": admin.get((svc.name, dkey), "enabled"),
                        "in_ipvs": dest is not None,
                        "active_conns": dest.active_conns if dest else 0,
                        "inactive_conns": dest.inactive_conns if dest else 0,
                        "probe": self._probe_status((svc.name, dkey)),
                        "history": list(self.history.get((svc.name, dkey), ())),
                    }
                )
            out.append(
                {
                    "name": svc.name,
                    "protocol": svc.protocol,
                    "address": None if svc.address is None else str(svc.address),
                    "port": svc.port,
                    "fwmark": svc.fwmark,
                    "scheduler": svc.scheduler,
                    "forward": svc.forward,
                    "healthy": view.healthy if view else len(servers),
                    "quorum_ok": view.quorum_ok if view else True,
                    "sorry_server": bool(view and view.sorry),
                    "real_servers": servers,
                }
            )
        return out

    # Reload.

    async def _reload(self) -> None:
        """A transaction: the new config is loaded, checked as `hapair check` does and
        against this host (interfaces, addresses) before anything changes; if applying it
        fails midway, the running config is applied again. Any failure leaves the agent
        on the config it had, and says why (log, `reload_failed`, status)."""
        old, old_key = self.cfg, self.key
        try:
            cfg = load(self.config_path)
            try:
                key = read_key(cfg.cluster.auth_key_file)
            except OSError as exc:
                raise ConfigError(
                    [Problem("cluster.auth_key_file", f"{exc.filename}: {exc.strerror}")]
                ) from None
            problems = restart_needed(old, cfg) + await self._host_problems(cfg)
        except ConfigError as exc:
            problems = exc.problems
        except Exception as exc:  # a bug of ours: the running config stays
            log.exception("reload of %s", self.config_path)
            problems = [Problem("(top)", f"cannot be loaded: {type(exc).__name__}: {exc}")]
        if problems:
            self._reload_failed("\n".join(map(str, problems)))
            return
        try:
            await self._apply_config(cfg, key)
        except Exception as exc:
            why = str(exc) if isinstance(exc, ReloadError) else f"{type(exc).__name__}: {exc}"
            log.error(
                "reload of %s failed while applying (%s); back to the running config",
                self.config_path,
                why,
            )
            try:
                await self._apply_config(old, old_key)
            except Exception:
                log.exception("going back to the running config failed")
            self._reload_failed(why)
            return
        self.last_reload = {"time": round(time.time(), 3), "ok": True, "error": None}
        log.info("reloaded %s", self.config_path)

    async def _host_problems(self, cfg: Config) -> list[Problem]:
        """What the new config asks of this host that it lacks: a VIP, track or sync
        interface that does not exist, a new VIP that is already an address of the host
        (releasing it would take the host's own address away)."""
        problems = []
        named = [(f"vips.{i}.interface", v.interface) for i, v in enumerate(cfg.vips)]
        named += [
            (f"track.{i}.interface", t.interface)
            for i, t in enumerate(cfg.track)
            if isinstance(t, InterfaceTrack)
        ]
        if cfg.sync is not None and cfg.sync.enabled and cfg.sync.interface is not None:
            named.append(("sync.interface", cfg.sync.interface))
        for path, ifname in named:
            try:
                socket.if_nametoindex(ifname)
            except OSError:
                problems.append(Problem(path, f"no interface {ifname!r} on this host"))
        running = {v.address.ip for v in self.cfg.vips}
        local = await self.vip.local_addresses()
        for i, vip in enumerate(cfg.vips):
            if vip.address.ip not in running and vip.address.ip in local:
                problems.append(
                    Problem(
                        f"vips.{i}.address",
                        f"{vip.address.ip} is already an address of this host (on "
                        f"{local[vip.address.ip]}), not a VIP hapair may take and release",
                    )
                )
        return problems

    async def _apply_config(self, cfg: Config, key: bytes) -> None:
        """Make `cfg` the running config: VIPs that go are removed first, new ones added
        last. Raises ReloadError (or any error) when the system refused a change; applying
        the config that ran before puts back what was changed."""
        from hapair.vip import VipError

        new_vips = {(v.address, v.interface) for v in cfg.vips}
        if self.vips_held:
            for vip in self.cfg.vips:
                if (vip.address, vip.interface) not in new_vips:
                    await self.vip.remove(vip)
        self.cfg, self.key = cfg, key
        if self.reaper is not None:
            self.reaper.tell(cfg.vips)  # before any new VIP is added
        self.node.reconfigure(settings_of(cfg, key))
        self._apply_sysctls()
        self.alerter.reconfigure(cfg.alerts)
        self._sync_probes()
        if self.keeper is not None:
            outcome = await self._reconcile()
            if outcome is not None and outcome.failed:
                change, error = outcome.failed[0]
                raise ReloadError(f"IPVS refused {describe_change(change)}: {error}")
        if self.vips_held:
            for vip in cfg.vips:  # adding is idempotent: a rollback puts back what went
                try:
                    await self.vip.add(vip)
                except VipError as exc:
                    raise ReloadError(str(exc)) from exc
            self._announce_all()
        settle_heap()

    def _reload_failed(self, why: str) -> None:
        log.error("reload of %s refused, running on as before:\n%s", self.config_path, why)
        self.last_reload = {"time": round(time.time(), 3), "ok": False, "error": why}
        self._alert_reload_failed(why)

    def _alert_reload_failed(self, why: str) -> None:
        problems = why.strip().splitlines()
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        self.alerter.emit(
            "reload_failed",
            "",
            f"reload of {self.config_path} refused, running on as before: "
            + "; ".join(problems[:3])
            + more,
            {"config": str(self.config_path), "reason": why.strip()},
        )


def describe_change(change: Change) -> str:
    kind = type(change).__name__
    what = getattr(change, "service", None) or getattr(change, "key", None)
    svc = what.key if hasattr(what, "key") else what
    dest = getattr(change, "dest", None)
    dest_text = "" if dest is None else f" {getattr(dest, 'key', dest)}"
    return f"{kind} {svc}{dest_text}"


def raise_file_limit() -> None:
    """The soft limit on open files up to the hard one: probes, the monitor's clients,
    the links and the control socket share it (systemd's soft default is 1,024, and a
    flood of web clients once starved the rest)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("open files stay limited to %d: %s", soft, exc)


def run_realtime(priority: int) -> None:
    """Heartbeats must go out on time on a saturated machine (like Linux-HA heartbeat):
    SCHED_FIFO and memory locked. Children (probe scripts, notify scripts) get the
    normal policy back (SCHED_RESET_ON_FORK)."""
    if priority <= 0:
        return
    try:
        policy = os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0)
        os.sched_setscheduler(0, policy, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        log.warning("running without realtime priority %d: %s", priority, exc)
        return
    import ctypes

    mcl_current, mcl_future = 1, 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(mcl_current | mcl_future) != 0:
        log.warning("memory not locked: %s", os.strerror(ctypes.get_errno()))


def run(config_path: Path) -> int:
    """`hapair run`: the config is loaded by the caller's check; exit 0 on a clean stop."""
    logs.setup(os.environ.get("HAPAIR_LOG", "INFO"))
    cfg = load(config_path)
    raise_file_limit()
    run_realtime(cfg.node.realtime_priority)
    from hapair.reaper import Reaper

    # Forked before any thread and the event loop; after mlockall, which would otherwise
    # copy every page the two processes share.
    reaper = Reaper.start(cfg.vips, cfg.node.realtime_priority)

    async def main() -> int:
        return await Agent(cfg, config_path, reaper).run()

    code = asyncio.run(main())
    reaper.done()  # only after a clean stop: otherwise the reaper removes the VIPs
    return code
