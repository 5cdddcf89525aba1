"""The failure detector: is the peer alive, and on which heartbeat links.

A link is alive while it carried a heartbeat within `deadtime`; the peer is
alive while ANY link is. Reports edges (link down/up, peer down/up) and one
late-heartbeat warning per silence longer than `warntime`. Time is an input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkDown:
    link: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    link: str


@dataclass(frozen=True, slots=True)
class PeerDown:
    silent_for: float


@dataclass(frozen=True, slots=True)
class PeerUp:
    link: str


@dataclass(frozen=True, slots=True)
class Late:
    silent_for: float


Event = LinkDown | LinkUp | PeerDown | PeerUp | Late


class FailureDetector:
    def __init__(self, links: Sequence[str], *, deadtime: float, warntime: float) -> None:
        self.deadtime = deadtime
        self.warntime = warntime
        self.last_heard: dict[str, float | None] = dict.fromkeys(links)
        self._alive: dict[str, bool] = dict.fromkeys(links, False)
        self._warned = False

    @property
    def peer_alive(self) -> bool:
        return any(self._alive.values())

    def link_alive(self, link: str) -> bool:
        return self._alive[link]

    def heard(self, link: str, at: float) -> list[Event]:
        """A heartbeat on `link`, as fresh as one received at `at`."""
        events: list[Event] = []
        heard = self.last_heard[link]
        if heard is not None and at <= heard:
            return events
        if not self.peer_alive:
            events.append(PeerUp(link))
        if not self._alive[link]:
            self._alive[link] = True
            events.append(LinkUp(link))
        self.last_heard[link] = at
        self._warned = False
        return events

    def tick(self, now: float) -> list[Event]:
        events: list[Event] = []
        was_alive = self.peer_alive
        for link, heard in self.last_heard.items():
            if self._alive[link] and heard is not None and now - heard >= self.deadtime:
                self._alive[link] = False
                events.append(LinkDown(link))
        silent = self.silent_for(now)
        if was_alive and not self.peer_alive:
            events.append(PeerDown(silent))
        elif self.peer_alive and not self._warned and silent >= self.warntime:
            self._warned = True
            events.append(Late(silent))
        return events

    def silent_for(self, now: float) -> float:
        heard = [t for t in self.last_heard.values() if t is not None]
        return now - max(heard) if heard else float("inf")

    def next_deadline(self) -> float | None:
        """When `tick` may next have something to report."""
        times = [
            heard + self.deadtime
            for link, heard in self.last_heard.items()
            if heard is not None and self._alive[link]
        ]
        heard = [t for t in self.last_heard.values() if t is not None]
        if self.peer_alive and not self._warned and heard:
            times.append(max(heard) + self.warntime)
        return min(times) if times else None
