"""Runs the real-server probes: one schedule per target, jittered, under a global cap.
The checker process runs it (hapair/checker/).

It owns the schedule and the hysteresis state of each target, and reports verdict
changes through a callback; it never touches IPVS (the agent reconciles). A target
that did not change keeps its state across a reload.

Each target has a task (cancelling it stops the target). For most probe types the task
is the loop itself: probe, observe, sleep. TCP probes, the ones that come by the
thousand, run from callbacks instead: their task only waits to be cancelled, one timer
starts every probe that is due (due times in 10 ms slots, a heap of slots; as long as
the cap has room, and for about `tcp.SLICE` per callback; each batch of completions
starts the ones that waited), and a `tcp.Connector` carries their connects, so a probe
costs no task step, future or timer of its own.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any

from hapair.core.hysteresis import RiseFall
from hapair.core.shared_probes import Target
from hapair.probes import tcp

log = logging.getLogger(__name__)

MAX_CONCURRENT = 1000  # probes in flight at once, whatever the number of targets
BATCH = 0.01  # s: TCP probes due this close together start in one go


@dataclass
class Watch:
    target: Target
    verdict: RiseFall
    task: asyncio.Task[None] | None = None
    last: Any = None  # the latest probes.Result
    active: bool = True  # False once the target is gone
    started: float = 0.0  # loop time of the latest probe's start (callback-driven probes)
    handle: Any = None  # what the TCP connector prepared for this target
    done: Any = None  # the TCP connector's callback for this target, made once


OnVerdict = Callable[[Hashable, bool, str], None]


class Cap:
    """At most `limit` holders at once; the others wait, first come first served.

    asyncio.Semaphore scans its waiters on every acquire and release, which is quadratic
    when thousands of probes queue behind the cap; here both are O(1). A release hands
    its slot straight to the oldest live waiter. TCP probes take and give back slots
    through `free` directly, and only when nobody is `waiting`.
    """

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> bool:
        return bool(self._waiters)

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():  # handed a slot, then cancelled
                self.release()
            raise  # a cancelled future stays queued: release() skips it

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            slot = waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.free += 1


class Prober:
    def __init__(self, on_verdict: OnVerdict) -> None:
        self.on_verdict = on_verdict
        self.watches: dict[Hashable, Watch] = {}
        self._cap = Cap(MAX_CONCURRENT)
        self._connector: Any = None  # a tcp.Connector, made with the first TCP target
        # TCP probes' next starts, by BATCH-wide slot: slot number -> watches; the slot
        # numbers in a heap (one entry per slot, not per probe); due ones wait in _ready.
        self._slots: dict[int, list[Watch]] = {}
        self._slot_heap: list[int] = []
        self._ready: deque[Watch] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        # The loop of the TCP probes (asyncio.get_running_loop() costs a getpid() call).
        self._tcp_loop: asyncio.AbstractEventLoop | None = None

    def sync(self, targets: dict[Hashable, Target]) -> None:
        """Probe exactly these targets: new ones start at once, gone ones stop,
        unchanged ones keep their state."""
        for key in list(self.watches):
            if key not in targets or self.watches[key].target != targets[key]:
                watch = self.watches.pop(key)
                watch.active = False
                if watch.task is not None:
                    watch.task.cancel()
        for key, target in targets.items():
            if key not in self.watches:
                t = target.probe
                watch = Watch(target, RiseFall(t.rise, t.fall, up=target.start_up))
                run = self._tcp if t.type == "tcp" else self._loop
                watch.task = asyncio.create_task(run(key, watch), name=f"probe {key}")
                self.watches[key] = watch

    def verdicts(self) -> dict[Hashable, bool]:
        return {key: w.verdict.up for key, w in self.watches.items()}

    async def close(self) -> None:
        tasks = [w.task for w in self.watches.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for watch in self.watches.values():
            watch.active = False
        self.watches.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")
        self._slots.clear()
        self._slot_heap.clear()
        self._ready.clear()
        if self._connector is not None:
            self._connector.close()
            self._connector = self._tcp_loop = None
        self._cap = Cap(MAX_CONCURRENT)  # drops the callbacks still queued
        from hapair import probes

        await probes.close()

    async def _loop(self, key: Hashable, watch: Watch) -> None:
        from hapair import probes

        target = watch.target
        probe, address, port = target.probe, target.address, target.port
        interval = probe.interval
        check, cap, observe = probes.check, self._cap, watch.verdict.observe
        loop = asyncio.get_running_loop()
        sleep = asyncio.sleep
        # Spread the first probes over one interval so thousands do not fire in step.
        await sleep(random.uniform(0, interval))
        while True:
            started = loop.time()
            await cap.acquire()
            try:
                result = await check(probe, address, port)
            finally:
                cap.release()
            watch.last = result
            if observe(result.ok):  # a change: so a verdict, not None
                self.on_verdict(key, bool(result.ok), result.reason)
            await sleep(max(0.0, interval - (loop.time() - started)))

    # TCP probes: callbacks, no task steps.

    async def _tcp(self, key: Hashable, watch: Watch) -> None:
        loop = asyncio.get_running_loop()
        if self._connector is None:
            try:
                self._connector = tcp.Connector(after_batch=self._start_due)
            except OSError as exc:  # no descriptor for the epoll set: one by one, then
                log.error("TCP probe of %s in a task of its own: %s", key, exc)
                await self._loop(key, watch)
                return
            self._tcp_loop = loop
        watch.handle = tcp.prepare(watch.target.address, watch.target.port)
        watch.done = partial(self._result, key, watch)
        # Spread the first probes over one interval so thousands do not fire in step.
        self._plan(loop.time() + random.uniform(0, watch.target.probe.interval), watch)
        try:
            await loop.create_future()  # the probes run from callbacks until cancelled
        finally:
            watch.active = False

    def _plan(self, when: float, watch: Watch) -> None:
        slot = int(when / BATCH)
        planned = self._slots.get(slot)
        if planned is not None:
            planned.append(watch)
            return
        self._slots[slot] = [watch]
        heapq.heappush(self._slot_heap, slot)
        if slot * BATCH + BATCH < self._timer_at:
            self._arm(slot * BATCH)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        assert self._tcp_loop is not None  # set with the connector, before the first plan
        self._timer = self._tcp_loop.call_at(when, self._start_due)

    def _start_due(self) -> None:
        """Start the TCP probes that are due, as long as the cap has free slots; the
        others wait in `_ready` until a batch of completions (the connector calls this
        after each) or the timer frees slots. Probes waiting in `Cap.acquire` go first.
        One call starts probes for about `tcp.SLICE`, then lets the loop run."""
        connector, loop = self._connector, self._tcp_loop
        if connector is None or loop is None:
            return
        now = loop.time()
        slots, heap, ready = self._slots, self._slot_heap, self._ready
        horizon = int((now + BATCH) / BATCH)
        while heap and heap[0] <= horizon:
            ready.extend(slots.pop(heapq.heappop(heap)))
        cap, start, clock = self._cap, connector.start, time.perf_counter
        end = clock() + tcp.SLICE
        started = 0
        while ready and cap.free > 0 and not cap.waiting:
            watch = ready.popleft()
            if watch.active:
                cap.free -= 1
                watch.started = now
                start(watch.handle, watch.target.probe.timeout, watch.done)
                started += 1
                if not started % tcp.SLICE_EVERY and clock() >= end:
                    break
        when: float | None
        if ready and cap.free > 0 and not cap.waiting:
            when = now  # out of time, not of slots: go on after the loop's next turn
        elif ready:
            when = now + BATCH  # slots are short: look again soon even if none completes
        else:
            when = heap[0] * BATCH if heap else None
        if when is None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = None, float("inf")
        elif self._timer is None or self._timer.cancelled() or self._timer_at != when:
            self._arm(when)

    def _result(self, key: Hashable, watch: Watch, result: Any) -> None:
        cap = self._cap
        if cap.waiting:
            cap.release()
        else:
            cap.free += 1
        if not watch.active:
            return
        watch.last = result
        if watch.verdict.observe(result.ok):  # a change: so a verdict, not None
            self.on_verdict(key, bool(result.ok), result.reason)
        # A start that is already past is simply due at once.
        self._plan(watch.started + watch.target.probe.interval, watch)
