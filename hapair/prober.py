"""Runs the real-server probes: one loop per server, jittered, under a global cap.

It owns the schedule and the hysteresis state of each target, and reports verdict
changes through a callback; it never touches IPVS (the agent reconciles). A target
that did not change keeps its state across a reload.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from hapair.core.hysteresis import RiseFall

log = logging.getLogger(__name__)

MAX_CONCURRENT = 1000  # probes in flight at once, whatever the number of targets


@dataclass(frozen=True, slots=True)
class Target:
    probe: Any  # a config Probe model (frozen, comparable)
    address: Any
    port: int
    start_up: bool  # the verdict before the first probe


@dataclass
class Watch:
    target: Target
    verdict: RiseFall
    task: asyncio.Task[None] | None = None
    last: Any = None  # the latest probes.Result


OnVerdict = Callable[[Hashable, bool, str], None]


class Prober:
    def __init__(self, on_verdict: OnVerdict) -> None:
        self.on_verdict = on_verdict
        self.watches: dict[Hashable, Watch] = {}
        self._cap = asyncio.Semaphore(MAX_CONCURRENT)

    def sync(self, targets: dict[Hashable, Target]) -> None:
        """Probe exactly these targets: new ones start at once, gone ones stop,
        unchanged ones keep their state."""
        for key in list(self.watches):
            if key not in targets or self.watches[key].target != targets[key]:
                watch = self.watches.pop(key)
                if watch.task is not None:
                    watch.task.cancel()
        for key, target in targets.items():
            if key not in self.watches:
                t = target.probe
                watch = Watch(target, RiseFall(t.rise, t.fall, up=target.start_up))
                watch.task = asyncio.create_task(self._loop(key, watch), name=f"probe {key}")
                self.watches[key] = watch

    def verdicts(self) -> dict[Hashable, bool]:
        return {key: w.verdict.up for key, w in self.watches.items()}

    async def close(self) -> None:
        tasks = [w.task for w in self.watches.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.watches.clear()
        from hapair import probes

        await probes.close()

    async def _loop(self, key: Hashable, watch: Watch) -> None:
        from hapair import probes

        probe = watch.target.probe
        loop = asyncio.get_running_loop()
        # Spread the first probes over one interval so thousands do not fire in step.
        await asyncio.sleep(random.uniform(0, probe.interval))
        while True:
            started = loop.time()
            async with self._cap:
                result = await probes.check(probe, watch.target.address, watch.target.port)
            watch.last = result
            if watch.verdict.observe(result.ok):
                self.on_verdict(key, result.ok, result.reason)
            await asyncio.sleep(max(0.0, probe.interval - (loop.time() - started)))
