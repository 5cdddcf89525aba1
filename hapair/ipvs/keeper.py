"""Keeps the kernel's IPVS table equal to the desired one, and runs the sync daemon role.

The only code that writes IPVS: it applies the reconciler's changes through the
driver, re-reads the table to verify, and reports drift. It decides nothing about
health or ownership beyond "the services in the config are ours".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from hapair.config.model import Sync
from hapair.ipvs.reconcile import AddService, Change, DeleteService, EditService, diff
from hapair.ipvs.table import ServiceKey, Table

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    applied: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)
    remaining: list[Change] = field(default_factory=list)  # still different after applying


class TableKeeper:
    def __init__(self, sync: Sync | None, cluster_id: int) -> None:
        self.sync = sync if sync is not None and sync.enabled else None
        self.sync_id = sync.sync_id if sync and sync.sync_id is not None else cluster_id
        self.owned: set[ServiceKey] = set()
        self.actual: Table = {}
        self.available = False
        self.sync_role: str | None = None
        # The driver's socket carries one request at a time, and a pass yields to the
        # event loop between services: passes and connection counts take turns.
        self._turn = asyncio.Lock()

    def open(self) -> bool:
        """False (said once, clearly) when the kernel has no IPVS: VIP failover goes on."""
        from hapair.ipvs.driver import IpvsDriver, IpvsError

        try:
            self.driver = IpvsDriver().__enter__()
        except IpvsError as exc:
            log.error("IPVS is not usable (%s): hapair keeps doing VIP failover only", exc)
            return False
        self.available = True
        return True

    def close(self) -> None:
        if self.available:
            self.driver.__exit__(None, None, None)
            self.available = False

    async def reconcile(self, desired: Table) -> Outcome:
        """One pass: read the kernel, apply the difference, read again to verify."""
        async with self._turn:
            return await self._reconcile(desired)

    async def _reconcile(self, desired: Table) -> Outcome:
        self.owned |= set(desired)
        outcome = Outcome()
        self.actual = await self.driver.dump()
        changes = diff(desired, self.actual, self.owned)
        for n, batch in enumerate(self.driver.batches(changes)):
            if n:
                await asyncio.sleep(0)  # heartbeats go on during a long load
            for change, error in batch:
                if error is None:
                    outcome.applied.append(change)
                else:
                    outcome.failed.append((change, str(error)))
                    log.error("IPVS: %s", error)
        if outcome.applied or outcome.failed:
            touched = {_service_of(c) for c in outcome.applied} | {
                _service_of(c) for c, _ in outcome.failed
            }
            if len(touched) * 2 > len(desired):  # one full dump asks the kernel less
                self.actual = await self.driver.dump()
            else:
                fresh = await self.driver.dump(touched)
                for key in touched:
                    self.actual.pop(key, None)
                self.actual |= fresh
            outcome.remaining = diff(desired, self.actual, self.owned)
        self.owned = set(desired) | {k for k in self.owned if k in self.actual}
        return outcome

    async def connections(self) -> int:
        """How many connections the kernel holds for our services (synced ones too)."""
        async with self._turn:
            table = await self.driver.dump()
        return sum(
            d.active_conns + d.inactive_conns
            for key in self.owned
            if key in table
            for d in table[key].dests.values()
        )

    def set_sync_role(self, role: str) -> None:
        """'master' or 'backup': the new daemon starts before the old one stops, so a
        new master never has a moment without sending."""
        from hapair.ipvs.driver import IpvsError, SyncDaemon, SyncState

        if self.sync is None or not self.available or role == self.sync_role:
            return
        new, old = (
            (SyncState.MASTER, SyncState.BACKUP)
            if role == "master"
            else (SyncState.BACKUP, SyncState.MASTER)
        )
        s = self.sync
        assert s.interface is not None
        try:
            running = {d.state for d in self.driver.list_daemons()}
            if new not in running:
                daemon = SyncDaemon(
                    new, s.interface, self.sync_id, s.maxlen, s.group, s.port, s.ttl
                )
                self.driver.start_daemon(daemon)
            if old in running:
                self.driver.stop_daemon(old)
        except IpvsError as exc:
            log.error("IPVS sync daemon: %s", exc)
            return
        self.sync_role = role
        log.info(
            "IPVS connection sync: %s daemon on %s, sync id %d", role, s.interface, self.sync_id
        )

    def stop_sync(self) -> None:
        from hapair.ipvs.driver import IpvsError

        if self.sync is None or not self.available:
            return
        try:
            daemons = self.driver.list_daemons()
        except IpvsError as exc:
            log.error("IPVS sync daemon: %s", exc)
            daemons = []
        for daemon in daemons:  # each one, whatever became of the one before
            try:
                self.driver.stop_daemon(daemon.state)
            except IpvsError as exc:
                log.error("IPVS sync daemon: %s", exc)
        self.sync_role = None


def _service_of(change: Change) -> ServiceKey:
    if isinstance(change, AddService | EditService):
        return change.service.key
    if isinstance(change, DeleteService):
        return change.key
    return change.service
