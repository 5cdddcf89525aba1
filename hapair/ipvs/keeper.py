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
from hapair.ipvs.reconcile import (
    AddDest,
    AddService,
    Change,
    DeleteDest,
    DeleteService,
    EditDest,
    EditService,
    diff,
)
from hapair.ipvs.table import ServiceKey, Table

log = logging.getLogger(__name__)
YIELD_EVERY = 64  # changes applied between two turns of the event loop


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

    async def open(self) -> bool:
        """False (said once, clearly) when the kernel has no IPVS: VIP failover goes on."""
        from hapair.ipvs.driver import IpvsDriver
        from hapair.ipvs.netlink import IpvsError, IpvsNetlink

        try:
            self.driver = await IpvsDriver().__aenter__()
            self.daemons = await IpvsNetlink().__aenter__()
        except IpvsError as exc:
            log.error("IPVS is not usable (%s): hapair keeps doing VIP failover only", exc)
            return False
        self.available = True
        return True

    async def close(self) -> None:
        if self.available:
            await self.driver.__aexit__(None, None, None)
            await self.daemons.__aexit__(None, None, None)

    async def reconcile(self, desired: Table) -> Outcome:
        """One pass: read the kernel, apply the difference, read again to verify."""
        async with self._turn:
            return await self._reconcile(desired)

    async def _reconcile(self, desired: Table) -> Outcome:
        from hapair.ipvs.netlink import IpvsError

        self.owned |= set(desired)
        outcome = Outcome()
        self.actual = await self.driver.dump()
        for n, change in enumerate(diff(desired, self.actual, self.owned), 1):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # heartbeats go on during a long load
            try:
                await self._apply(change)
                outcome.applied.append(change)
            except IpvsError as exc:
                outcome.failed.append((change, str(exc)))
                log.error("IPVS: %s", exc)
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

    async def _apply(self, change: Change) -> None:
        d = self.driver
        if isinstance(change, AddService):
            await d.add_service(change.service)
        elif isinstance(change, EditService):
            await d.edit_service(change.service)
        elif isinstance(change, DeleteService):
            await d.delete_service(change.key)
        elif isinstance(change, AddDest):
            await d.add_dest(change.service, change.dest)
        elif isinstance(change, EditDest):
            await d.edit_dest(change.service, change.dest)
        elif isinstance(change, DeleteDest):
            await d.delete_dest(change.service, change.dest)

    async def set_sync_role(self, role: str) -> None:
        """'master' or 'backup': the new daemon starts before the old one stops, so a
        new master never has a moment without sending."""
        from hapair.ipvs.netlink import IpvsError, SyncState

        if self.sync is None or not self.available or role == self.sync_role:
            return
        new, old = (
            (SyncState.MASTER, SyncState.BACKUP)
            if role == "master"
            else (SyncState.BACKUP, SyncState.MASTER)
        )
        s = self.sync
        assert s.interface is not None
        running = {d.state for d in await self.daemons.list_daemons()}
        try:
            if new not in running:
                await self.daemons.start_daemon(
                    new,
                    s.interface,
                    self.sync_id,
                    maxlen=s.maxlen,
                    group=s.group,
                    port=s.port,
                    ttl=s.ttl,
                )
            if old in running:
                await self.daemons.stop_daemon(old)
        except IpvsError as exc:
            log.error("IPVS sync daemon: %s", exc)
            return
        self.sync_role = role
        log.info(
            "IPVS connection sync: %s daemon on %s, sync id %d", role, s.interface, self.sync_id
        )

    async def stop_sync(self) -> None:
        from hapair.ipvs.netlink import IpvsError

        if self.sync is None or not self.available:
            return
        for daemon in await self.daemons.list_daemons():
            try:
                await self.daemons.stop_daemon(daemon.state)
            except IpvsError as exc:
                log.error("IPVS sync daemon: %s", exc)
        self.sync_role = None


def _service_of(change: Change) -> ServiceKey:
    if isinstance(change, AddService | EditService):
        return change.service.key
    if isinstance(change, DeleteService):
        return change.key
    return change.service
