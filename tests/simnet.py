"""A simulated pair: two HaNodes on a virtual clock and a lossy two-link network.

Links lose, delay (so reorder) and duplicate heartbeats and can be cut; nodes
crash and restart (new epoch), freeze (SIGSTOP) and resume, fail their health
checks, release the VIPs and leave (SIGTERM). A forger injects garbage, packets
under a wrong key and replays. The run records a timeline that `check` judges.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from hapair.core.election import Announce, Transition
from hapair.core.heartbeat import Flag, Heartbeat, encode
from hapair.core.node import HaNode, Notice, Send, Settings
from hapair.core.refused import Refused
from hapair.core.states import State

LINKS = ("udp", "serial")
KEY = b"k" * 32


@dataclass
class Params:
    seed: int
    interval: float
    deadtime: float
    initdead: float
    preempt: bool
    preempt_delay: float
    priorities: tuple[int, int]
    loss: float
    max_delay: float
    dup: float
    duration: float

    @classmethod
    def random(cls, seed: int) -> Params:
        r = random.Random(seed)
        interval = 0.1
        deadtime = r.choice((0.3, 0.5))
        return cls(
            seed=seed,
            interval=interval,
            deadtime=deadtime,
            initdead=r.choice((deadtime, 2 * deadtime)),
            preempt=r.random() < 0.6,
            preempt_delay=r.choice((0.0, 0.0, 0.3)),
            priorities=r.choice(((150, 100), (100, 150), (100, 100))),
            loss=r.choice((0.0, 0.05, 0.3)),
            max_delay=r.choice((0.001, 0.02)),
            dup=r.choice((0.0, 0.05)),
            duration=8.0,
        )


@dataclass
class SimNode:
    name: str
    priority: int
    ha: HaNode | None = None
    paused: bool = False
    healthy: bool = True
    inbox: list[tuple[str, bytes]] = field(default_factory=list)  # queued while frozen
    tick_gen: int = 0  # invalidates scheduled ticks of an older incarnation
    captured: list[bytes] = field(default_factory=list)  # what reached it on the wire

    @property
    def running(self) -> bool:
        return self.ha is not None and not self.paused

    @property
    def master(self) -> bool:
        return self.ha is not None and self.ha.state is State.MASTER


@dataclass
class Sample:
    time: float
    states: tuple[State | None, State | None]
    effective_master: bool  # a running (not frozen) MASTER serves the VIP
    healthy_running: tuple[bool, bool]  # per node: its agent runs, unfrozen and healthy


class Sim:
    def __init__(self, p: Params) -> None:
        self.p = p
        self.rng = random.Random(p.seed * 7919 + 1)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.nodes = [SimNode("a", p.priorities[0]), SimNode("b", p.priorities[1])]
        self.cut: dict[str, bool] = dict.fromkeys(LINKS, False)
        self.timeline: list[Sample] = []
        self.deliveries: list[tuple[float, int]] = []  # (time, receiver index): accepted
        self.forged_accepted = 0
        self.ticks = 0
        self.log: list[str] = []

    # Scheduling.

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (t, next(self._order), fn))

    def run(self) -> None:
        for i in range(2):
            self.at(self.rng.uniform(0, 0.3), lambda i=i: self.start(i))
        self._schedule_faults()
        while self._queue:
            t, _, fn = heapq.heappop(self._queue)
            if t > self.p.duration:
                break
            self.now = t
            fn()
            self._sample()
        self.now = self.p.duration
        last = self.timeline[-1]
        self.timeline.append(
            Sample(self.now, last.states, last.effective_master, last.healthy_running)
        )

    def _sample(self) -> None:
        a, b = self.nodes
        states = (a.ha.state if a.ha else None, b.ha.state if b.ha else None)
        serving = any(n.running and n.master for n in self.nodes)
        healthy = (a.running and a.healthy, b.running and b.healthy)
        last = self.timeline[-1] if self.timeline else None
        if last is None or (last.states, last.effective_master, last.healthy_running) != (
            states,
            serving,
            healthy,
        ):
            self.timeline.append(Sample(self.now, states, serving, healthy))

    # Node lifecycle.

    def settings(self, n: SimNode) -> Settings:
        p = self.p
        return Settings(
            name=n.name,
            priority=n.priority,
            cluster=7,
            key=KEY,
            links=LINKS,
            interval=p.interval,
            deadtime=p.deadtime,
            warntime=(p.interval + p.deadtime) / 2,
            initdead=p.initdead,
            preempt=p.preempt,
            preempt_delay=p.preempt_delay,
        )

    def start(self, i: int) -> None:
        n = self.nodes[i]
        n.ha = HaNode(self.settings(n), epoch=int(self.now * 1e6) + 1, now=self.now)
        n.paused, n.inbox = False, []
        n.tick_gen += 1
        self.log.append(f"{self.now:.3f} {n.name} start")
        if not n.healthy:
            self.handle(i, n.ha.set_health(False, "check failing", self.now))
        self.tick(i, n.tick_gen)

    def crash(self, i: int, downtime: float) -> None:
        n = self.nodes[i]
        if n.ha is None:
            return
        self.log.append(f"{self.now:.3f} {n.name} crash")
        n.ha, n.inbox = None, []
        n.tick_gen += 1
        self.at(self.now + downtime, lambda: self.start(i))

    def stop(self, i: int, downtime: float) -> None:
        n = self.nodes[i]
        if not n.running or n.ha is None:
            return
        self.log.append(f"{self.now:.3f} {n.name} stop")
        self.handle(i, n.ha.stop(self.now))
        n.ha = None
        n.tick_gen += 1
        self.at(self.now + downtime, lambda: self.start(i))

    def pause(self, i: int, length: float) -> None:
        n = self.nodes[i]
        if not n.running:
            return
        self.log.append(f"{self.now:.3f} {n.name} freeze {length:.3f}")
        n.paused = True
        gen = n.tick_gen
        self.at(self.now + length, lambda: self.resume(i, gen))

    def resume(self, i: int, gen: int) -> None:
        n = self.nodes[i]
        if n.tick_gen != gen or n.ha is None:
            return
        self.log.append(f"{self.now:.3f} {n.name} thaw")
        n.paused = False
        inbox, n.inbox = n.inbox, []
        # Health checks that changed while frozen report on wake.
        self.handle(i, n.ha.set_health(n.healthy, "check failing", self.now))
        # On wake, the event loop runs the overdue timer and the queued reads in either order.
        if self.rng.random() < 0.5:
            self.tick(i, gen)
            for link, data in inbox:
                self.receive(i, link, data)
        else:
            for link, data in inbox:
                self.receive(i, link, data)
            self.tick(i, gen)

    def set_health(self, i: int, healthy: bool) -> None:
        n = self.nodes[i]
        n.healthy = healthy
        if n.running and n.ha is not None:
            self.log.append(f"{self.now:.3f} {n.name} healthy={healthy}")
            self.handle(i, n.ha.set_health(healthy, "check failing", self.now))

    def release(self, i: int) -> None:
        n = self.nodes[i]
        if n.running and n.ha is not None:
            try:
                self.handle(i, n.ha.release(self.now))
                self.log.append(f"{self.now:.3f} {n.name} release")
            except Refused:
                pass

    # The node's event loop.

    def tick(self, i: int, gen: int) -> None:
        n = self.nodes[i]
        if n.tick_gen != gen or n.ha is None or n.paused:
            return  # a frozen node's timer fires on resume
        self.ticks += 1
        self.handle(i, n.ha.tick(self.now))
        self.at(max(n.ha.next_deadline(), self.now + 1e-6), lambda: self.tick(i, gen))

    def receive(self, i: int, link: str, data: bytes) -> None:
        n = self.nodes[i]
        if n.ha is None:
            return
        if n.paused:
            n.inbox.append((link, data))
            return
        before = n.ha.received
        self.handle(i, n.ha.receive(link, data, self.now))
        if n.ha is not None and n.ha.received > before:
            self.deliveries.append((self.now, i))

    def handle(self, i: int, actions: list[object]) -> None:
        n = self.nodes[i]
        for action in actions:
            if isinstance(action, Send):
                self.transmit(i, action.payload)
            elif isinstance(action, Transition):
                self.log.append(
                    f"{self.now:.3f} {n.name} {action.old}->{action.new} ({action.reason})"
                )
            elif isinstance(action, Announce | Notice):
                pass

    def transmit(self, i: int, payload: bytes) -> None:
        for link in LINKS:
            if self.cut[link] or self.rng.random() < self.p.loss:
                continue
            copies = 2 if self.rng.random() < self.p.dup else 1
            for _ in range(copies):
                delay = self.rng.uniform(0.0002, self.p.max_delay)
                self.at(self.now + delay, lambda link=link: self.deliver(1 - i, link, payload))

    def deliver(self, i: int, link: str, payload: bytes) -> None:
        self.nodes[i].captured.append(payload)
        self.receive(i, link, payload)

    # What goes wrong.

    def _schedule_faults(self) -> None:
        r = self.rng
        for _ in range(r.randint(2, 7)):
            t = r.uniform(0.5, self.p.duration - 1.0)
            i = r.randrange(2)
            kind = r.choice(
                ("cut", "cut_all", "crash", "pause", "fault", "release", "stop", "forge")
            )
            if kind == "cut":
                self.at(t, self._cutter(r.choice(LINKS), r.uniform(0.2, 3.0)))
            elif kind == "cut_all":
                self.at(t, self._cutter(None, r.uniform(0.2, 3.0)))
            elif kind == "crash":
                self.at(t, partial(self.crash, i, r.uniform(0.1, 2.0)))
            elif kind == "pause":
                self.at(t, partial(self.pause, i, r.uniform(0.05, 2.0)))
            elif kind == "fault":
                d = r.uniform(0.1, 2.0)
                self.at(t, lambda i=i: self.set_health(i, False))
                self.at(t + d, lambda i=i: self.set_health(i, True))
            elif kind == "release":
                self.at(t, lambda: self.release(0 if self.nodes[0].master else 1))
            elif kind == "stop":
                self.at(t, partial(self.stop, i, r.uniform(0.1, 2.0)))
            else:
                for k in range(20):
                    self.at(t + k * 0.01, lambda i=i: self.forge(i))

    def _cutter(self, link: str | None, length: float) -> Callable[[], None]:
        links = LINKS if link is None else (link,)

        def cut() -> None:
            self.log.append(f"{self.now:.3f} cut {links} for {length:.3f}")
            for name in links:
                self.cut[name] = True
            self.at(self.now + length, heal)

        def heal() -> None:
            self.log.append(f"{self.now:.3f} heal {links}")
            for name in links:
                self.cut[name] = False

        return cut

    def forge(self, i: int) -> None:
        """Inject into node i what an attacker on the wire could send."""
        n, other = self.nodes[i], self.nodes[1 - i]
        wire = n.captured  # a replay of valid heartbeats seen going to node i
        r = self.rng
        choice = r.randrange(4)
        if choice == 0:
            data = r.randbytes(r.randrange(0, 120))
        elif choice == 1:  # a perfect heartbeat under the wrong key: "peer is MASTER, yield"
            hb = Heartbeat(7, other.name, 254, State.MASTER, Flag.PREEMPT, 1, 10**9, 0, b"\0" * 8)
            data = encode(hb, b"x" * 32)
        elif choice == 2 and wire:
            data = r.choice(wire)
        else:  # a captured heartbeat with one bit flipped
            if not wire:
                return
            raw = bytearray(r.choice(wire))
            raw[r.randrange(len(raw))] ^= 1 << r.randrange(8)
            data = bytes(raw)
        if n.running and n.ha is not None:
            before = n.ha.received
            self.receive(i, r.choice(LINKS), data)
            if n.ha is not None and choice in (0, 1, 3) and n.ha.received > before:
                self.forged_accepted += 1


def check(sim: Sim) -> list[str]:
    """Safety, liveness and authentication over the recorded run."""
    p = sim.p
    problems = []
    # A node wakes for its heartbeat and its deadlines, not in a busy loop.
    if sim.ticks > 20 * p.duration / p.interval:
        problems.append(f"{sim.ticks} timer wake-ups in {p.duration}s")
    if sim.forged_accepted:
        problems.append(f"{sim.forged_accepted} forged heartbeats accepted")
    # Safety: two MASTERs end at the latest one interval after they hear each other.
    dual_start: float | None = None
    for k, s in enumerate(sim.timeline):
        dual = s.states == (State.MASTER, State.MASTER)
        if dual and dual_start is None:
            dual_start = s.time
        if dual_start is not None and (not dual or k == len(sim.timeline) - 1):
            end = s.time
            heard = [
                min(
                    (t for t, r in sim.deliveries if r == who and dual_start <= t <= end),
                    default=None,
                )
                for who in (0, 1)
            ]
            if heard[0] is not None and heard[1] is not None:
                both = max(h for h in heard if h is not None)
                if end - both > p.interval + 1e-9:
                    problems.append(
                        f"two MASTERs from {dual_start:.3f} to {end:.3f}, "
                        f"though they heard each other at {both:.3f}"
                    )
            dual_start = None
    # Liveness: a node that has run healthy for the bound while nobody served is MASTER.
    # (Its own initdead starts when it starts, so the wait counts from then.)
    bound = max(p.deadtime, p.initdead) + 2 * p.interval + p.max_delay
    needy_since: float | None = None
    running_since: list[float | None] = [None, None]
    for s in sim.timeline:  # one sample per change, and one at the end
        if needy_since is not None:
            for since in running_since:
                if since is not None and s.time - max(since, needy_since) > bound + 1e-9:
                    start = max(since, needy_since)
                    problems.append(
                        f"no MASTER from {start:.3f} to {s.time:.3f} (bound {bound:.3f})"
                    )
                    return problems
        for i, ok in enumerate(s.healthy_running):
            if not ok:
                running_since[i] = None
            elif running_since[i] is None:
                running_since[i] = s.time
        needy = any(s.healthy_running) and not s.effective_master
        if not needy:
            needy_since = None
        elif needy_since is None:
            needy_since = s.time
    return problems


def run(seed: int) -> tuple[Sim, list[str]]:
    sim = Sim(Params.random(seed))
    sim.run()
    return sim, check(sim)


def sweep(seeds: range) -> list[tuple[int, list[str]]]:
    failures = []
    for seed in seeds:
        _, problems = run(seed)
        if problems:
            failures.append((seed, problems))
    return failures


def describe(seed: int) -> str:
    sim, problems = run(seed)
    return "\n".join([f"seed {seed}: {sim.p}", *problems, *sim.log[-60:]])


if __name__ == "__main__":  # replay: python tests/simnet.py SEED
    import sys

    print(describe(int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("SEED", "0"))))
