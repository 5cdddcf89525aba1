"""One probe per distinct check: the services' (service, real server) pairs that name the
same server with the same probe share one probe and its verdict. Pure.

A distinct check is a `Target`: the probe (type and every parameter), the address, the
port and the verdict before the first probe. Each gets an id that stays its own for as
long as some pair wants it, and is never given to another check (the checker process
knows its probes by these ids, so a reload that keeps a check keeps its state there).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Pair = TypeVar("Pair", bound=Hashable)  # what a probe serves: (service, real server)


@dataclass(frozen=True, slots=True)
class Target:
    probe: Any  # a config Probe model (frozen, comparable)
    address: Any
    port: int
    start_up: bool  # the verdict before the first probe


class SharedProbes(Generic[Pair]):
    def __init__(self) -> None:
        self._id_of: dict[Target, int] = {}
        self._next = 1
        self.users: dict[int, tuple[Pair, ...]] = {}  # probe id -> the pairs it serves
        self.id_of_pair: dict[Pair, int] = {}

    def plan(self, wanted: Mapping[Pair, Target]) -> dict[int, Target]:
        """The distinct probes for these pairs, by id: kept ones keep their id, new ones
        get a fresh one, the ones no pair wants any more are gone."""
        id_of: dict[Target, int] = {}
        users: dict[int, list[Pair]] = {}
        for pair, target in wanted.items():
            pid = id_of.get(target)
            if pid is None:
                pid = self._id_of.get(target)
                if pid is None:
                    pid, self._next = self._next, self._next + 1
                id_of[target] = pid
            users.setdefault(pid, []).append(pair)
        self._id_of = id_of
        self.users = {pid: tuple(pairs) for pid, pairs in users.items()}
        self.id_of_pair = {pair: pid for pid, pairs in users.items() for pair in pairs}
        return {pid: target for target, pid in id_of.items()}
