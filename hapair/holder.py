"""Holding the VIPs: taking them on a takeover, releasing them, announcing them (at once,
and again every `garp_refresh`), and changing them on a reload.

Owns whether this node holds the VIPs and the announcement tasks; every address write
goes through vip.py. It does not decide whether to hold them (the election does) nor in
which order (core/vips.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hapair.config import Problem
from hapair.config.model import Service, Vip
from hapair.core.vips import leaving, takeover_order

log = logging.getLogger("hapair")


class VipHolder:
    def __init__(self, vips: list[Vip]) -> None:
        from hapair.vip import VipAddresses

        self.vips = vips
        self.held = False
        self.addresses = VipAddresses()
        self._refresh: asyncio.Task[None] | None = None
        self._announcing: set[asyncio.Task[Any]] = set()

    async def remove_stale(self) -> None:
        """At start: the configured VIPs left on their interfaces by an earlier run that
        was killed with its guard (e.g. `systemctl kill -s KILL`) go first."""
        for vip in await self.addresses.remove_stale(self.vips):
            log.warning(
                "removed %s from %s: left over from an earlier run", vip.address, vip.interface
            )

    async def conflicts(self, vips: list[Vip]) -> list[Problem]:
        """The VIPs new to `vips` that are already addresses of this host: releasing one
        would take the host's own address away."""
        running = {v.address.ip for v in self.vips}
        local = await self.addresses.local_addresses()
        return [
            Problem(
                f"vips.{i}.address",
                f"{vip.address.ip} is already an address of this host (on "
                f"{local[vip.address.ip]}), not a VIP hapair may take and release",
            )
            for i, vip in enumerate(vips)
            if vip.address.ip not in running and vip.address.ip in local
        ]

    async def take(self, services: list[Service]) -> None:
        """Each VIP is added and announced before the next is added, in takeover order;
        one that cannot be added is logged and the others are taken."""
        from hapair.vip import VipError

        for vip in takeover_order(self.vips, services):
            try:
                await self.addresses.add(vip)
            except VipError as exc:
                log.error("cannot take %s: %s", vip.address, exc)
                continue
            self._announce(vip)
            await asyncio.sleep(0)  # its first announcement goes out before the next VIP exists
        self.held = True
        self._refresh = asyncio.create_task(self._refresh_announcements())

    async def release(self) -> None:
        from hapair.vip import VipError

        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        for vip in self.vips:
            try:
                await self.addresses.remove(vip)
            except VipError as exc:
                log.error("cannot release %s: %s", vip.address, exc)
        self.held = False

    async def drop(self, vips: list[Vip]) -> None:
        """A reload's first step: `vips` become the holder's, and when held, the running
        ones that `vips` lacks are removed."""
        old, self.vips = self.vips, vips
        if self.held:
            for vip in leaving(old, vips):
                await self.addresses.remove(vip)

    async def add_all(self) -> None:
        """A reload's last step: when held, every VIP is added (adding is idempotent, so
        after a failure, going back to the running config puts back what went) and all
        are announced. VipError when the kernel refuses one."""
        if self.held:
            for vip in self.vips:
                await self.addresses.add(vip)
            self.announce_all()

    def announce_all(self, repeat: int | None = None) -> None:
        for vip in self.vips:
            self._announce(vip, repeat)

    def _announce(self, vip: Vip, repeat: int | None = None) -> None:
        from hapair.vip import announce

        task = asyncio.create_task(announce(vip, repeat))
        self._announcing.add(task)  # held until done: the loop keeps weak references
        task.add_done_callback(self._announcing.discard)

    async def _refresh_announcements(self) -> None:
        while True:
            periods = [v.garp_refresh for v in self.vips if v.garp_refresh > 0]
            if not periods:
                return
            await asyncio.sleep(min(periods))
            self.announce_all(repeat=1)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        for task in list(self._announcing):
            task.cancel()
        await asyncio.gather(*self._announcing, return_exceptions=True)
        self.addresses.close()
