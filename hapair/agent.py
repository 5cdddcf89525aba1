"""The agent: wires the HA core to the links, the VIPs, the checks, the services and the
control socket, and owns start-up, reload and shutdown.

Every input that can change the HA state goes through one queue, as a small typed event,
and is handled one at a time, in order, so that the VIPs are released before the
heartbeat that tells the peer to take them. The services side (services.py) takes the
probes' verdicts itself: they never move the VIPs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hapair import answers, control, host, logs
from hapair.alerts import Alerter
from hapair.config import Config, ConfigError, Problem, load
from hapair.config.reload import restart_needed
from hapair.core.election import Announce, Transition
from hapair.core.health import Health
from hapair.core.node import Action, HaNode, Notice, Send, link_names, settings_of
from hapair.core.states import State
from hapair.holder import VipHolder
from hapair.inputs import Asked, Checked, Input, Pet, Received, Reload, Stop, Tick, WarmedUp
from hapair.links import open_links
from hapair.services import Services, describe_change
from hapair.status import ReloadStatus, Status
from hapair.systemd import Notifier, status_line
from hapair.track import start_checks

if TYPE_CHECKING:
    from hapair.links import Link
    from hapair.vipguard import VipGuard

log = logging.getLogger("hapair")

LATE_TIMER_WARNING = 0.05  # a timer this late is worth a log line


class ReloadError(Exception):
    """The system refused part of a reload; the message says what."""


class Agent:
    def __init__(
        self,
        cfg: Config,
        config_path: Path,
        guard: VipGuard | None = None,
        node: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.node_asked = node  # `run --node`: a pair file's entry (None: the host's)
        self.guard = guard  # removes the VIPs if this process dies without stopping
        self.loop = asyncio.get_running_loop()
        self.key = host.read_key(cfg.cluster.auth_key_file)
        self.epoch = host.next_epoch(cfg.node.name, cfg.node.state_dir)
        self.node: HaNode  # made when the links are up: see run()
        self.links: dict[str, Link] = {}
        self.health = Health()
        self.inbox: asyncio.Queue[Input] = asyncio.Queue()
        self.tasks: list[asyncio.Task[Any]] = []
        self.timer_late_max = 0.0
        self._wake = asyncio.Event()
        self.alerter = Alerter(cfg.node.name, cfg.alerts, cfg.node.state_dir)
        self.services = Services(cfg, self.alerter)
        self.vips = VipHolder(cfg.vips)
        self.last_reload: ReloadStatus | None = None  # the latest SIGHUP's outcome
        self.config_lock = asyncio.Lock()  # one config change at a time (configure.py)
        self.peer_version: str | None = None  # the pair file's version the peer runs
        self.systemd = Notifier()

    # Start-up and shutdown.

    async def run(self) -> int:
        self.alerter.start()  # resends what an earlier run left in the spool
        await self.vips.remove_stale()
        await self.services.start()
        self.links = await open_links(self.cfg, lambda *got: self.inbox.put_nowait(Received(*got)))
        server = control.ControlServer(
            self.cfg.node.socket_path, lambda request: answers.handle(self, request)
        )
        await server.start()
        for sig, event in (
            (signal.SIGTERM, Stop()),
            (signal.SIGINT, Stop()),
            (signal.SIGHUP, Reload()),
        ):
            self.loop.add_signal_handler(sig, self.inbox.put_nowait, event)
        self._preload()
        host.settle_heap()
        # The core's clock starts when the links can carry its first heartbeat.
        self.node = HaNode(settings_of(self.cfg, self.key), epoch=self.epoch, now=self.loop.time())
        self.tasks += start_checks(self.cfg, lambda *seen: self.inbox.put_nowait(Checked(*seen)))
        self.tasks.append(asyncio.create_task(self._clock(), name="clock"))
        if self.systemd.watchdog_every is not None:
            self.tasks.append(asyncio.create_task(self._pets(self.systemd.watchdog_every)))
        await self._warm_up()
        monitor = await answers.start_monitor(self)
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
            await server.close()
            if monitor is not None:
                await monitor.stop()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for link in self.links.values():
                await link.close()
            await self.vips.close()
            await self.services.close()  # a pass under way finishes: no half-made table
            await self.alerter.close()  # last: it may wait a moment for a delivery under way
            self.systemd.close()
        log.info("%s stopped", self.cfg.node.name)
        return 0

    def _preload(self) -> None:
        """Import what the agent will need before the clock runs, not in it (aiohttp: 0.3 s
        here, 3-6 s in a slow VM, where the clock saw it as a stall)."""
        from hapair import interfaces

        del interfaces
        if self.cfg.monitor is not None:
            from hapair.monitor import server as monitor_server

            del monitor_server

    # The one consumer of inputs.

    async def _handle_inputs(self) -> None:
        while True:
            item = await self.inbox.get()
            now = self.loop.time()
            if isinstance(item, Received):
                await self.carry_out(self.node.receive(item.link, item.payload, now))
            elif isinstance(item, Tick):
                await self.carry_out(self.node.tick(now))
            elif isinstance(item, Checked):
                log.info(
                    "check %s: %s (%s)", item.check, "ok" if item.ok else "FAILING", item.reason
                )
                if self.health.set(item.check, item.ok, item.reason):
                    await self.carry_out(
                        self.node.set_health(self.health.ok, self.health.reason(), now)
                    )
            elif isinstance(item, Asked):
                answer = await answers.answer(self, item.request, now)
                if not item.reply.done():
                    item.reply.set_result(answer)
            elif isinstance(item, WarmedUp):
                if self.services.warmed_up(item.task):
                    log.info("preemption allowed: %s", item.reason)
                    await self.carry_out(self.node.hold_preemption(None, now))
            elif isinstance(item, Pet):
                self.systemd.watchdog()
            elif isinstance(item, Reload):
                with self.systemd.reloading():
                    await self._reload()
            elif isinstance(item, Stop):
                self.systemd.stopping()
                await self.carry_out(self.node.stop(now))
                return
            self.systemd.status(status_line(self.node, self.vips.held, len(self.cfg.vips)))
            self._wake.set()  # the next deadline may have moved

    async def carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                for link in self.links.values():
                    link.send(action.payload)
                if not self.systemd.ready_sent:  # the control socket listens already
                    self.systemd.ready()
            elif isinstance(action, Transition):
                event = logs.event("state_change", old=action.old.name, new=action.new.name)
                log.info("%s -> %s: %s", action.old, action.new, action.reason, extra=event)
                if action.new is State.MASTER:
                    await self.vips.take(list(self.cfg.services))
                elif action.old is State.MASTER:
                    await self.vips.release()
                if action.new is not State.STOPPED:
                    await self.services.set_sync_role(
                        "master" if action.new is State.MASTER else "backup"
                    )
                    if action.old is State.MASTER:
                        await self._warm_up()  # a fresh backup daemon: learn before preempting
                self.alerter.state_changed(action.old.name, action.new.name, action.reason)
            elif isinstance(action, Announce):
                log.info("announcing the VIPs again: %s", action.reason)
                self.vips.announce_all()
            elif isinstance(action, Notice):
                log.warning("%s: %s", action.event, action.detail, extra=logs.event(action.event))
                self.alerter.emit(action.event, action.subject, action.detail)

    async def _warm_up(self) -> None:
        """With preemption and connection sync, a recovering node first learns the MASTER's
        connections before it takes the VIPs back (services.py watches them)."""
        done = self.inbox.put_nowait
        reason = self.services.warm_up(self.cfg.cluster.preempt, lambda t, r: done(WarmedUp(t, r)))
        if reason is not None:
            await self.carry_out(self.node.hold_preemption(reason, self.loop.time()))

    async def _clock(self) -> None:
        """A Tick at each of the core's deadlines. Waits with asyncio.timeout_at, not
        wait_for: Python 3.11's wait_for swallows a cancellation that comes as the awaited
        event is set, and a clock that outlived its cancellation at a stop spun at 100 %
        of a CPU, as SCHED_FIFO, for good (the deadlines stay past once the core stopped)."""
        while True:
            deadline = self.node.next_deadline()
            self._wake.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
                continue  # a heartbeat arrived: the deadline may have moved
            except TimeoutError:
                pass
            late = self.loop.time() - deadline
            if late > LATE_TIMER_WARNING:
                log.warning("timer %.0f ms late: the agent is starved of CPU", late * 1000)
            self.timer_late_max = max(self.timer_late_max, late)
            self.inbox.put_nowait(Tick())
            await asyncio.sleep(0)

    async def _pets(self, every: float) -> None:
        """A Pet in the inbox every `every` s: the watchdog is told only by the loop of
        inputs itself, so a loop that hangs stops telling it."""
        while True:
            await asyncio.sleep(every)
            self.inbox.put_nowait(Pet())

    async def ask(self, request: control.Request) -> dict[str, Any]:
        """A checked request, handled in turn with every other input (answers.py)."""
        answer: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.inbox.put_nowait(Asked(request, answer))
        return await answer

    def status(self, now: float) -> Status:
        return answers.status(self, now)

    # Reload.

    async def _reload(self) -> None:
        """A transaction: the new config is loaded, checked as `hapair check` does and
        against this host (interfaces, addresses) before anything changes; if applying it
        fails midway, the running config is applied again. Any failure leaves the agent
        on the config it had, and says why (log, `reload_failed`, status)."""
        old, old_key = self.cfg, self.key
        try:
            cfg = load(self.config_path, self._reload_node())
            problems = await self.refusals(cfg)
            key = b"" if problems else host.read_key(cfg.cluster.auth_key_file)
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
            log.error("reload failed while applying (%s); back to the running config", why)
            try:
                await self._apply_config(old, old_key)
            except Exception:
                log.exception("going back to the running config failed")
            self._reload_failed(why)
            return
        self.last_reload = {"time": round(time.time(), 3), "ok": True, "error": None}
        log.info("reloaded %s", self.config_path)

    async def refusals(self, cfg: Config) -> list[Problem]:
        """Why the running agent cannot take the valid `cfg` by a reload: what needs a
        restart, interfaces this host lacks, VIPs held by another host, an unreadable key."""
        problems = restart_needed(self.cfg, cfg) + host.missing_interfaces(cfg)
        try:
            host.read_key(cfg.cluster.auth_key_file)
        except OSError as exc:
            problems.append(Problem("cluster.auth_key_file", f"{exc.filename}: {exc.strerror}"))
        return problems + await self.vips.conflicts(cfg.vips)

    def _reload_node(self) -> str | None:
        """The director a reload reads the file for: the pair entry running now (so the
        same one, whatever the host is named by then), or what `run --node` asked."""
        return self.cfg.node.name if self.cfg.pair else self.node_asked

    async def _apply_config(self, cfg: Config, key: bytes) -> None:
        """Make `cfg` the running config: VIPs that go are removed first, new ones added
        last. Raises ReloadError (or any error) when the system refused a change; applying
        the config that ran before puts back what was changed."""
        from hapair.vip import VipError

        await self.vips.drop(cfg.vips)
        self.cfg, self.key = cfg, key
        if self.guard is not None:
            self.guard.tell(cfg.vips)  # before any new VIP is added
        self.node.reconfigure(settings_of(cfg, key))
        self.alerter.reconfigure(cfg.alerts)
        self.services.reconfigure(cfg)
        outcome = await self.services.pass_now()
        if outcome is not None and outcome.failed:
            change, error = outcome.failed[0]
            raise ReloadError(f"IPVS refused {describe_change(change)}: {error}")
        try:
            await self.vips.add_all()
        except VipError as exc:
            raise ReloadError(str(exc)) from exc
        host.settle_heap()

    def _reload_failed(self, why: str) -> None:
        log.error("reload of %s refused, running on as before:\n%s", self.config_path, why)
        self.last_reload = {"time": round(time.time(), 3), "ok": False, "error": why}
        self.alerter.reload_failed(str(self.config_path), why)


def run(config_path: Path, node: str | None = None, log_format: str | None = None) -> int:
    """`hapair run`: the config is loaded by the caller's check; exit 0 on a clean stop.
    `node` names a pair file's entry (None: the one named like this host); `log_format`
    one of logs.STYLES (None: the journal's under systemd, else text)."""
    cfg = load(config_path, node)
    style = logs.style_of(log_format)
    logs.setup(os.environ.get("HAPAIR_LOG", "INFO"), style, cfg.node.name)
    host.raise_file_limit()
    host.run_realtime(cfg.node.realtime_priority)
    from hapair.vipguard import VipGuard

    guard = VipGuard.start(cfg.vips, cfg.node.realtime_priority, style, cfg.node.name)

    async def main() -> int:
        return await Agent(cfg, config_path, guard, node).run()

    code = asyncio.run(main())
    guard.done()  # only after a clean stop: otherwise the guard removes the VIPs
    return code
