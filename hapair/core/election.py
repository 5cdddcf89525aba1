"""The election: which node of the pair is MASTER. Everything that decides it is here.

Rules, in the order they apply:
- STOP and FAULT win over everything: a stopping or unhealthy node holds no VIP.
- At start a node waits (INIT) for `initdead`, or less if it hears its peer.
- Alone (peer silent on every link, or FAULT, or STOPPED), a healthy node is MASTER.
- Rank decides between two live nodes: priority, then the smaller name. A node that
  released the VIPs on purpose (`release`) ranks below any other until its peer fails.
- Split brain: when two MASTERs hear each other, the lower rank steps down at once
  and the winner re-announces the VIPs (clients may hold the loser's MAC). Whichever
  hears first, the winner learns of it: from the peer's MASTER heartbeat, or from the
  CEDED flag the loser sends while it waits as BACKUP under the winner.
- Preemption is a handover, never an overlap: a higher-ranked BACKUP with
  `preempt = true` waits `preempt_delay`, then asks (the PREEMPT flag); the MASTER
  releases first, and only a BACKUP that sees no MASTER takes over. A hold (the
  agent's: learning the MASTER's connections first) postpones asking, nothing else.
The election does not know which node it runs on beyond its own name and rank;
the peer's view arrives as heartbeats, time as `now`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hapair.core.heartbeat import Flag, Heartbeat
from hapair.core.states import State


class Situation(enum.Enum):
    STOP = "stopping"
    FAULT = "own health failing"
    WAIT = "waiting: for initdead at start, or for news after a stall"
    ALONE = "no live peer"
    YIELDING = "I released the VIPs to the peer"
    PEER_MASTER_I_WIN = "peer is MASTER, I outrank it"
    PEER_MASTER_I_LOSE = "peer is MASTER and outranks me"
    PEER_PREEMPTS = "peer outranks me and asks for the VIPs"
    PEER_WAITS_I_WIN = "peer is not MASTER, I outrank it"
    PEER_WAITS_I_LOSE = "peer is not MASTER and outranks me"


S = Situation
_ALWAYS = {S.STOP: State.STOPPED, S.FAULT: State.FAULT}
_LIKE_BACKUP = {
    **_ALWAYS,
    S.ALONE: State.MASTER,
    S.YIELDING: State.BACKUP,
    S.PEER_MASTER_I_WIN: State.BACKUP,  # preempt, if at all, by handover (the flag)
    S.PEER_MASTER_I_LOSE: State.BACKUP,
    S.PEER_PREEMPTS: State.BACKUP,
    S.PEER_WAITS_I_WIN: State.MASTER,
    S.PEER_WAITS_I_LOSE: State.BACKUP,
}
TRANSITIONS: dict[State, dict[Situation, State]] = {
    State.INIT: {**_LIKE_BACKUP, S.WAIT: State.INIT},
    State.BACKUP: {**_LIKE_BACKUP, S.WAIT: State.BACKUP},
    State.FAULT: {**_LIKE_BACKUP, S.WAIT: State.BACKUP},
    State.MASTER: {
        **_ALWAYS,
        S.ALONE: State.MASTER,
        S.YIELDING: State.BACKUP,  # planned handover: release first
        S.PEER_MASTER_I_WIN: State.MASTER,  # split brain: I stay and re-announce
        S.PEER_MASTER_I_LOSE: State.BACKUP,  # split brain: I step down at once
        S.PEER_PREEMPTS: State.BACKUP,  # handover: release first
        S.PEER_WAITS_I_WIN: State.MASTER,
        S.PEER_WAITS_I_LOSE: State.MASTER,  # no preemption asked (yet)
        S.WAIT: State.BACKUP,  # (a stalled MASTER is demoted before it waits)
    },
    State.STOPPED: dict.fromkeys(Situation, State.STOPPED),
}


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    reason: str


@dataclass(frozen=True, slots=True)
class Announce:
    """Send gratuitous ARPs now: a split brain healed in our favour."""

    reason: str


Decision = Transition | Announce


def outranks(a: tuple[int, str, bool], b: tuple[int, str, bool]) -> bool:
    """(priority, name, yielding): a yielding node ranks below any other; then the
    higher priority wins, then the smaller name."""
    if a[2] != b[2]:
        return b[2]
    return a[0] > b[0] or (a[0] == b[0] and a[1] < b[1])


class Election:
    def __init__(
        self,
        *,
        name: str,
        priority: int,
        preempt: bool,
        preempt_delay: float,
        initdead: float,
        now: float,
    ) -> None:
        self.name = name
        self.priority = priority
        self.preempt = preempt
        self.preempt_delay = preempt_delay
        self.state = State.INIT
        self.since = now
        self.yielding = False  # released on purpose; until the peer is MASTER or gone
        self.released = False  # ... and no preempting back until the peer fails
        self.preempting = False
        self._init_until = now + initdead
        self._hold_until: float | None = None
        self._healthy = True
        self._fault_reason = ""
        self._stopping = False
        self._peer: Heartbeat | None = None
        self._peer_alive = False
        self._preempt_at: float | None = None
        self.preempt_hold: str | None = None  # why preemption waits (e.g. learning connections)
        self._split = False
        self.ceded = False  # stepped down in a split brain, and still BACKUP under the winner

    @property
    def flags(self) -> Flag:
        return (
            (Flag.YIELD if self.yielding else Flag.NONE)
            | (Flag.PREEMPT if self.preempting else Flag.NONE)
            | (Flag.CEDED if self.ceded else Flag.NONE)
        )

    # Inputs. Each returns what to do now.

    def peer_heard(self, hb: Heartbeat, now: float) -> list[Decision]:
        self._peer, self._peer_alive = hb, True
        return self._decide(now)

    def peer_lost(self, now: float) -> list[Decision]:
        self._peer_alive = False
        return self._decide(now)

    def health(self, healthy: bool, reason: str, now: float) -> list[Decision]:
        self._healthy, self._fault_reason = healthy, reason
        return self._decide(now)

    def release(self, now: float) -> list[Decision]:
        """Hand the VIPs to the peer; the caller checks that there is one to take them."""
        self.yielding = self.released = True
        return self._decide(now)

    def stop(self, now: float) -> list[Decision]:
        self._stopping = True
        return self._decide(now)

    def tick(self, now: float) -> list[Decision]:
        return self._decide(now)

    def hold_preemption(self, reason: str | None, now: float) -> list[Decision]:
        """While held, a BACKUP does not ask for the VIPs back; a dead peer's are still taken."""
        self.preempt_hold = reason
        return self._decide(now)

    def stalled(self, hold: float, now: float) -> list[Decision]:
        """We did not run for longer than the peer waits: it has taken over by now.
        A MASTER steps down at once; nobody takes over until `hold` brings news."""
        self._hold_until = now + hold
        decisions: list[Decision] = []
        if self.state is State.MASTER:
            decisions.append(Transition(State.MASTER, State.BACKUP, "stalled longer than deadtime"))
            self.state, self.since = State.BACKUP, now
        return decisions + self._decide(now)

    def next_deadline(self) -> float | None:
        """When the situation may change without news: the end of a wait, or preemption."""
        if self._hold_until is not None:
            return self._hold_until
        if self.state is State.INIT:
            return self._init_until
        if self._preempt_at is not None and not self.preempting and self.preempt_hold is None:
            return self._preempt_at
        return None

    # The decision.

    def situation(self, now: float) -> Situation:
        peer = self._peer if self._peer_alive else None
        if self._stopping:
            return S.STOP
        if not self._healthy:
            return S.FAULT
        if self._hold_until is not None and now < self._hold_until:
            return S.WAIT
        if peer is None or peer.state in (State.FAULT, State.STOPPED):
            if self.state is State.INIT and peer is None and now < self._init_until:
                return S.WAIT
            return S.ALONE
        if self.yielding:
            return S.YIELDING
        me = (self.priority, self.name, False)
        they = (peer.priority, peer.node, Flag.YIELD in peer.flags)
        i_win = outranks(me, they)
        if peer.state is State.MASTER:
            return S.PEER_MASTER_I_WIN if i_win else S.PEER_MASTER_I_LOSE
        if Flag.PREEMPT in peer.flags and not i_win:
            return S.PEER_PREEMPTS
        return S.PEER_WAITS_I_WIN if i_win else S.PEER_WAITS_I_LOSE

    def _peer_master(self) -> bool:
        return self._peer_alive and self._peer is not None and self._peer.state is State.MASTER

    def _decide(self, now: float) -> list[Decision]:
        if self._hold_until is not None and now >= self._hold_until:
            self._hold_until = None
        situation = self.situation(now)
        before = self.state
        if situation is S.ALONE:
            self.yielding = self.released = False  # the peer failed: serve again
        elif self._peer_master():
            self.yielding = False  # the handover is done
        decisions: list[Decision] = []
        new = TRANSITIONS[self.state][situation]
        if new is not self.state:
            reason = situation.value
            if situation is S.FAULT and self._fault_reason:
                reason = f"{reason}: {self._fault_reason}"
            decisions.append(Transition(self.state, new, reason))
            self.state, self.since = new, now
        if before is State.MASTER and situation is S.PEER_MASTER_I_LOSE:
            self.ceded = True  # for as long as we wait under this winner
        elif not (self.state is State.BACKUP and self._peer_master()):
            self.ceded = False
        peer_ceded = (
            self._peer_alive and self._peer is not None and (Flag.CEDED in self._peer.flags)
        )
        split = self.state is State.MASTER and (situation is S.PEER_MASTER_I_WIN or peer_ceded)
        if split and not self._split:
            decisions.append(Announce("split brain healed: the peer MASTER stepped down"))
        self._split = split
        self._update_preempt(situation, now)
        return decisions

    def _update_preempt(self, situation: Situation, now: float) -> None:
        wants = (
            self.preempt
            and not self.released
            and self.state is State.BACKUP
            and situation is S.PEER_MASTER_I_WIN
        )
        if not wants:
            self._preempt_at, self.preempting = None, False
        elif self._preempt_at is None:
            self._preempt_at = now + self.preempt_delay
        self.preempting = (
            wants
            and self.preempt_hold is None
            and self._preempt_at is not None
            and now >= self._preempt_at
        )
