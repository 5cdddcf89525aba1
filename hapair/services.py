"""The services side of a director: real servers, their probes and verdicts, the
operator's roster, the desired IPVS table and one worker that keeps the kernel's equal
to it, the kernel settings a director needs, and the services' part of the status.

A probe verdict goes checker process -> here -> keeper -> driver; the HA side never sees
it. Pairs of (service, real server) with the same check share one probe (core/
shared_probes.py), and its verdict is each pair's. The
worker coalesces passes: whatever asks for one while a pass runs gets one more pass
after it, and a pass also runs every RECONCILE_PERIOD to undo changes made behind
hapair's back. It must not decide anything about holding the VIPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hapair import control
from hapair.alerts import Alerter
from hapair.checker.client import CheckerClient
from hapair.config import Config
from hapair.config.model import Service as ServiceConfig
from hapair.core.refused import Refused
from hapair.core.roster import Roster
from hapair.core.shared_probes import SharedProbes, Target
from hapair.core.verdicts import quorum_changes, server_changed
from hapair.host import atomic_write
from hapair.ipvs.keeper import Outcome, TableKeeper
from hapair.ipvs.reconcile import Change, ServiceView, desired_table, dest_keys, service_key
from hapair.ipvs.table import DestKey, Table
from hapair.status import ProbeStatus, RealServerStatus, ServiceStatus, Transition

log = logging.getLogger("hapair")

Learned = Callable[[asyncio.Task[None], str], None]  # a warm-up task, and why it ended
RECONCILE_PERIOD = 5.0  # how soon a rule changed behind hapair's back is restored
HISTORY = 10  # up/down transitions kept per real server, for the monitor


def describe_change(change: Change) -> str:
    """`AddDest TCP 10.0.0.100:80 10.0.0.11:80`: the change and what it is about."""
    what: object = getattr(change, "service", None) or getattr(change, "key", None)
    svc = getattr(what, "key", what)
    dest = getattr(change, "dest", None)
    dest_text = "" if dest is None else f" {getattr(dest, 'key', dest)}"
    return f"{type(change).__name__} {svc}{dest_text}"


def load_roster(path: Path) -> Roster:
    try:
        return Roster.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return Roster()
    except (OSError, ValueError) as exc:
        log.error("ignoring the operator's changes in %s: %s", path, exc)
        return Roster()


class Services:
    def __init__(self, cfg: Config, alerter: Alerter) -> None:
        self.cfg = cfg
        self.alerter = alerter
        wants_ipvs = bool(cfg.services) or bool(cfg.sync and cfg.sync.enabled)
        self.keeper = TableKeeper(cfg.sync, cfg.cluster.id) if wants_ipvs else None
        self.healthy: dict[tuple[str, DestKey], bool] = {}  # the probes' verdicts
        self.roster = load_roster(self.roster_path)  # the operator's overrides
        self.shared: SharedProbes[tuple[str, DestKey]] = SharedProbes()
        self.checker = CheckerClient(self._on_shared_probe, self._on_checker_restart)
        self.views: dict[str, ServiceView] = {}
        # The desired IPVS table and its views, made again only when an input changed
        # (config, roster, a verdict): a periodic pass of 1,000 servers spent more on
        # rebuilding it than on reading the kernel.
        self._desired: tuple[Table, dict[str, ServiceView]] | None = None
        self.history: dict[tuple[str, DestKey], deque[Transition]] = {}
        self._wanted = asyncio.Event()
        self._waiters: list[asyncio.Future[Outcome | None]] = []
        self._worker: asyncio.Task[None] | None = None
        self._pass: asyncio.Task[Outcome | None] | None = None
        self._warmup: asyncio.Task[None] | None = None

    # Start, reload, stop.

    async def start(self) -> None:
        """Probes started, IPVS opened (a kernel without it is said once: the views still
        follow the probes), the table loaded, the sync daemon a backup."""
        self._sync_probes()
        opened = self.keeper is not None and self.keeper.open()
        self.apply_sysctls()
        if self.keeper is None:
            return
        await self._reconcile()
        if opened:
            self.keeper.set_sync_role("backup")
        self._worker = asyncio.create_task(self._work(), name="ipvs")

    def reconfigure(self, cfg: Config) -> None:
        """A reload's config: kernel settings, probe targets (unchanged ones keep their
        state); the table follows with the next pass."""
        self.cfg = cfg
        self.apply_sysctls()
        self._sync_probes()

    async def close(self) -> None:
        """A pass under way finishes first: no half-made table."""
        warmup = self._warmup
        self._stop_warmup()
        if warmup is not None:
            await asyncio.gather(warmup, return_exceptions=True)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._pass is not None:
            await asyncio.gather(self._pass, return_exceptions=True)
        await self.checker.close()
        if self.keeper is not None:
            self.keeper.stop_sync()
            self.keeper.close()

    # The IPVS worker.

    def want_pass(self) -> None:
        self._wanted.set()

    async def pass_now(self) -> Outcome | None:
        """One pass that starts after this call (so it sees every change made so far);
        its outcome, or None without IPVS."""
        if self._worker is None:
            return None
        done: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self._wanted.set()
        return await done

    async def _work(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONCILE_PERIOD):
                    await self._wanted.wait()
            self._wanted.clear()
            waiters, self._waiters = self._waiters, []
            # Its own task, shielded: cancelling the worker at stop lets it finish.
            self._pass = asyncio.create_task(self._reconcile())
            try:
                outcome = await asyncio.shield(self._pass)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug, not the kernel (IpvsError is handled per change)
                log.exception("IPVS pass failed")
                outcome = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(outcome)

    async def _reconcile(self) -> Outcome | None:
        """The services' views (healthy servers, quorum, the sorry server) and their
        alerts from the verdicts, then one IPVS pass where the kernel has IPVS."""
        assert self.keeper is not None
        if self._desired is None:
            self._desired = desired_table(
                self.effective(), self.healthy, self.roster.admin_states()
            )
        before = self.views
        desired, self.views = self._desired
        quorums = {s.name: s.quorum for s in self.cfg.services}
        for notice in quorum_changes(before, self.views, quorums):
            self.alerter.emit(*notice)
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

    def warm_up(self, preempt: bool, learned: Learned) -> str | None:
        """With preemption and connection sync, a recovering node first learns the MASTER's
        connections (core/warmup.py says how long), so taking the VIPs back drops none.
        Why preemption must wait, or None; `learned(task, reason)` says when it may go on."""
        self._stop_warmup()
        keeper, sync = self.keeper, self.cfg.sync
        if not preempt or keeper is None or keeper.sync_role != "backup":
            return None
        if sync is None or sync.warmup <= 0:
            return None
        from hapair.core.warmup import WarmUp

        loop = asyncio.get_running_loop()
        warmup = WarmUp(sync.warmup, loop.time())

        async def learn() -> None:
            while not warmup.observe(await keeper.connections(), loop.time()):
                await asyncio.sleep(0.5)
            learned(task, f"{warmup.count} connections learned")

        task = self._warmup = asyncio.create_task(learn(), name="warm-up")
        return warmup.reason()

    def warmed_up(self, task: asyncio.Task[None]) -> bool:
        """True once for the warm-up under way (an earlier, cancelled one is no news)."""
        if task is not self._warmup:
            return False
        self._warmup = None
        return True

    def _stop_warmup(self) -> None:
        if self._warmup is not None:
            self._warmup.cancel()
            self._warmup = None

    async def set_sync_role(self, role: str) -> None:
        if self.keeper is not None:
            self.keeper.set_sync_role(role)

    def apply_sysctls(self) -> None:
        from hapair import sysctl

        services = self.cfg.services
        ipv6 = any(s.address is not None and s.address.version == 6 for s in services)
        sysctl.apply(self.cfg.sysctl, ipv6)
        nat = [s.name for s in services if s.forward == "nat"]
        with contextlib.suppress(OSError):
            if nat and sysctl.PROC.joinpath("net/ipv4/ip_forward").read_text().strip() == "0":
                log.warning(
                    "service %s forwards by NAT but net.ipv4.ip_forward is 0: the real "
                    "servers' replies will not be routed (set [sysctl] ip_forward = true)",
                    ", ".join(nat),
                )

    # Real servers: the operator's roster and the probes.

    @property
    def roster_path(self) -> Path:
        return self.cfg.node.state_dir / f"{self.cfg.node.name}.roster.json"

    def effective(self) -> list[ServiceConfig]:
        """The configured services, with the operator's additions and removals."""
        return [self.roster.effective(s) for s in self.cfg.services]

    async def operator(self, request: control.Request) -> dict[str, Any]:
        """drain, enable, disable, add, remove: done and in the kernel when answered."""
        try:
            done = self.roster.apply(
                list(self.cfg.services),
                request.cmd,
                request.service,
                request.server,
                request.weight,
            )
        except Refused as exc:
            return control.refusal(str(exc))
        try:
            atomic_write(
                self.roster_path, json.dumps(self.roster.to_json(), indent=1, sort_keys=True)
            )
        except OSError as exc:
            log.error("cannot keep the operator's changes in %s: %s", self.roster_path, exc)
        log.info("operator: %s", done)
        self._sync_probes()
        await self.pass_now()
        return {"ok": True, "result": done}

    def _sync_probes(self) -> None:
        targets: dict[tuple[str, DestKey], Target] = {}
        for svc in self.effective():
            for rs, dkey in zip(svc.real_servers, dest_keys(svc), strict=True):
                probe = rs.probe or svc.probe
                if probe is not None:
                    port = probe.port or dkey.port
                    targets[(svc.name, dkey)] = Target(
                        probe, rs.address, port, svc.probe_start == "up"
                    )
        self.checker.sync(self.shared.plan(targets))
        verdicts = self.checker.verdicts
        self.healthy = {pair: verdicts[pid] for pair, pid in self.shared.id_of_pair.items()}
        self.history = {k: v for k, v in self.history.items() if k in self.healthy}
        self._desired = None

    def _on_shared_probe(self, pid: int, ok: bool, reason: str) -> None:
        for pair in self.shared.users.get(pid, ()):
            self._on_probe(pair, ok, reason)

    def _on_checker_restart(self, why: str, delay: float) -> None:
        """The checker died or hung: the verdicts stay as they were meanwhile."""
        again = f"started again in {delay:.0f} s" if delay else "started again"
        summary = f"the probes' checker process failed and was {again}: {why}"
        if delay:
            summary += f" ({self.checker.respawn.count} failures so far: it keeps failing)"
        log.error("%s", summary)
        self.alerter.emit("checker_restarted", "", summary, {"reason": why})

    def _on_probe(self, key: tuple[str, DestKey], ok: bool, reason: str) -> None:
        """A verdict changed: the table follows with the next pass; 1,000 servers coming up
        together cost one pass, not 1,000 (each a dump of the whole table)."""
        entry: Transition = {"up": ok, "time": round(time.time(), 3), "reason": reason}
        self.history.setdefault(key, deque(maxlen=HISTORY)).append(entry)
        service, dest = key
        self.healthy[key] = ok
        self._desired = None
        log.warning("real server %s of %s is %s: %s", dest, service, "up" if ok else "DOWN", reason)
        self.alerter.emit(*server_changed(service, str(dest), ok, reason))
        self.want_pass()

    # Status.

    def _probe_status(self, key: tuple[str, DestKey]) -> ProbeStatus | None:
        last = self.checker.results.get(self.shared.id_of_pair.get(key, 0))
        if last is None:
            return None
        ok, reason, latency = last
        return {"ok": ok, "reason": reason, "latency_ms": round(latency * 1000, 1)}

    def status(self) -> list[ServiceStatus]:
        self.checker.want_results()  # for the next status; `hapair status` waits for them
        actual = self.keeper.actual if self.keeper is not None else {}
        out: list[ServiceStatus] = []
        admin = self.roster.admin_states()
        for svc in self.effective():
            in_kernel = actual.get(service_key(svc))
            view = self.views.get(svc.name)
            servers: list[RealServerStatus] = []
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
