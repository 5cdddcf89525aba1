"""One director's HA protocol, sans-I/O: heartbeats in and out, the detector, the election.

The agent feeds it bytes from a link, health changes, operator commands and the
time, and carries out the actions it returns (send these bytes on every link,
hold or release the VIPs, announce them, tell the operator). No sockets, no
clock, no sleeps: the simulation in the tests runs exactly this code.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hapair.config import Config
from hapair.core import detector as fd
from hapair.core.election import Announce, Decision, Election, Transition
from hapair.core.heartbeat import Dropped, Flag, Heartbeat, ReplayGuard, decode, encode
from hapair.core.refused import Refused
from hapair.core.states import State

LEAVING_COPIES = 3  # a STOPPED heartbeat is sent this often: one may be lost
MISMATCH_AFTER = 60.0  # s the peer's config may differ (a change under way) before an alert


@dataclass(frozen=True, slots=True)
class Send:
    """Send this heartbeat on every link."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Notice:
    """Something an operator should hear about (a log line, maybe an alert)."""

    event: (
        str  # peer_lost, peer_back, link_lost, link_back, heartbeat_late, config_mismatch, stalled
    )
    detail: str
    subject: str = ""  # what it is about (a link, the peer): one alert per subject


Action = Send | Transition | Announce | Notice


@dataclass(frozen=True, slots=True)
class Settings:
    name: str
    priority: int
    cluster: int
    key: bytes
    links: Sequence[str]
    interval: float
    deadtime: float
    warntime: float
    initdead: float
    preempt: bool
    preempt_delay: float
    digest: bytes = b"\0" * 8  # of the config; heartbeats carry it
    whole_file: bool = False  # digest is of the whole pair file (else: the shared settings)


def link_names(cfg: Config) -> list[str]:
    """`type:name` of each heartbeat link, as the core names them."""
    return [f"{link.type}:{link.name}" for link in cfg.cluster.links]


def settings_of(cfg: Config, key: bytes) -> Settings:
    """The HA settings of a checked config."""
    c = cfg.cluster
    return Settings(
        name=cfg.node.name,
        priority=cfg.node.priority,
        cluster=c.id,
        key=key,
        links=link_names(cfg),
        interval=c.interval,
        deadtime=c.deadtime,
        warntime=c.warn_after,
        initdead=c.initdead_after,
        preempt=c.preempt,
        preempt_delay=c.preempt_delay,
        digest=config_digest(cfg),
        whole_file=cfg.pair and cfg.version is not None,
    )


def config_digest(cfg: Config) -> bytes:
    """What heartbeats carry of the config: for a pair file, the first 8 bytes of its
    version (both directors run the same file); for a `[node]` file, of the settings
    both directors must share."""
    if cfg.pair and cfg.version is not None:
        return bytes.fromhex(cfg.version[:16])
    return cfg.shared_digest()


@dataclass
class PeerView:
    name: str | None = None
    heartbeat: Heartbeat | None = None
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    verified_epoch: int | None = None  # the peer epoch that echoed ours
    newest_at: float = float("-inf")  # when the newest heartbeat arrived
    state_since: float | None = None  # when we first heard the peer in its current state


class HaNode:
    def __init__(self, settings: Settings, *, epoch: int, now: float) -> None:
        self.settings = s = settings
        self.epoch = epoch
        self.seq = 0
        self.election = Election(
            name=s.name,
            priority=s.priority,
            preempt=s.preempt,
            preempt_delay=s.preempt_delay,
            initdead=s.initdead,
            now=now,
        )
        self.detector = fd.FailureDetector(s.links, deadtime=s.deadtime, warntime=s.warntime)
        self.peer = PeerView()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.received = 0
        self.sent = 0
        self._next_send = now
        self._last_tick = now
        self._grace_until = now
        self.peer_digest: bytes | None = None  # of the peer's config, from its heartbeats
        self._mismatch_since: float | None = None  # the two differ since then
        self._mismatch_told = False
        self._last_announced: tuple[State, int] = (State.INIT, 0)

    @property
    def state(self) -> State:
        return self.election.state

    # Inputs.

    def receive(self, link: str, data: bytes, now: float) -> list[Action]:
        """A datagram or frame from `link`. Only an authentic, fresh heartbeat of our peer
        that echoes our epoch (or comes from a peer epoch that once did) counts; anything
        else is dropped and counted by reason."""
        woke = self._woke(now)
        result = decode(data, key=self.settings.key, cluster=self.settings.cluster)
        if isinstance(result, Dropped):
            return woke + self._drop(result.reason)
        return woke + self._heard(link, result, now)

    def _heard(self, link: str, hb: Heartbeat, now: float) -> list[Action]:
        peer = self.peer
        if link not in self.detector.last_heard:
            return self._drop("link")
        if hb.node == self.settings.name:
            return self._drop("own name")
        if hb.node != peer.name:
            if peer.name is not None and self.detector.peer_alive:
                return self._drop("third node")
            peer = self.peer = PeerView(hb.node)
        before = peer.guard.newest
        newer_epoch = hb.epoch > before[0]
        if not peer.guard.accept(link, hb.epoch, hb.seq):
            return self._drop("replay")
        # Answer a new peer epoch at once: our echo of it is what lets the peer trust us.
        actions: list[Action] = [self._heartbeat(now)] if newer_epoch else []
        if hb.echo == self.epoch:
            peer.verified_epoch = hb.epoch
        elif hb.epoch != peer.verified_epoch:
            # Maybe a replay from before we started; the live peer will echo us shortly.
            return actions + self._drop("unverified")
        self.received += 1
        # Only a heartbeat newer than any before is news; a copy of one already seen
        # (the second link, or a replay onto it) proves nothing more than the first did.
        newest = (hb.epoch, hb.seq) > before
        if newest:
            peer.newest_at = now
        actions += self._detector_events(
            self.detector.heard(link, now if newest else peer.newest_at)
        )
        self._config_heard(hb.digest, now)
        if not newest:
            return actions  # its state is old news too
        if peer.heartbeat is None or peer.heartbeat.state != hb.state:
            peer.state_since = now
        peer.heartbeat = hb
        return actions + self._carry_out(self.election.peer_heard(hb, now), now)

    def tick(self, now: float) -> list[Action]:
        """Timers: heartbeats due, peer silence, initdead, preempt delay."""
        actions = self._woke(now)
        if now >= self._grace_until:  # after a stall, read what queued up before judging
            events = self.detector.tick(now)
            actions += self._detector_events(events)
            if any(isinstance(e, fd.PeerDown) for e in events):
                actions += self._carry_out(self.election.peer_lost(now), now)
        actions += self._carry_out(self.election.tick(now), now)
        actions += self._mismatch(now)
        if now >= self._next_send:
            actions.append(self._heartbeat(now))
        return actions

    def _config_heard(self, digest: bytes, now: float) -> None:
        self.peer_digest = digest
        if digest == self.settings.digest:
            self._mismatch_since, self._mismatch_told = None, False
        elif self._mismatch_since is None:
            self._mismatch_since = now

    def _mismatch(self, now: float) -> list[Action]:
        """`config_mismatch`, once, when the live peer's config has differed for
        MISMATCH_AFTER (a change under way on both takes a moment)."""
        since = self._mismatch_since
        if since is None or self._mismatch_told or not self.detector.peer_alive:
            return []
        if now - since < MISMATCH_AFTER:
            return []
        self._mismatch_told = True
        what = "config differs" if self.settings.whole_file else "shared settings differ"
        return [
            Notice("config_mismatch", f"{self.peer.name}'s {what} from ours for {now - since:.0f}s")
        ]

    @property
    def in_sync(self) -> bool | None:
        """Whether the live peer runs our config (None: no live peer to compare with)."""
        if self.peer_digest is None or not self.detector.peer_alive:
            return None
        return self.peer_digest == self.settings.digest

    def set_health(self, healthy: bool, reason: str, now: float) -> list[Action]:
        woke = self._woke(now)
        return woke + self._carry_out(self.election.health(healthy, reason, now), now)

    def hold_preemption(self, reason: str | None, now: float) -> list[Action]:
        """Hold (with the reason) or allow asking a lower-ranked MASTER for the VIPs."""
        woke = self._woke(now)
        return woke + self._carry_out(self.election.hold_preemption(reason, now), now)

    def _woke(self, now: float) -> list[Action]:
        """Whatever input comes first after the agent did not run for longer than the
        peer waits (SIGSTOP, a paused VM): the peer has taken over by now, so step down
        before anything else, and judge again on fresh news."""
        stalled = now - self._last_tick
        self._last_tick = max(self._last_tick, now)
        if stalled <= self.settings.deadtime:
            return []
        self._grace_until = now + self.settings.interval
        notice = Notice("stalled", f"the agent did not run for {stalled:.3f}s")
        return [notice, *self._carry_out(self.election.stalled(self.settings.interval, now), now)]

    def release(self, now: float) -> list[Action]:
        if self.state is not State.MASTER:
            raise Refused(f"this node is {self.state}, not MASTER")
        hb = self.peer.heartbeat
        if not self.detector.peer_alive or hb is None or hb.state not in (State.BACKUP, State.INIT):
            raise Refused("no healthy peer is listening to take the VIPs")
        if Flag.YIELD in hb.flags:
            raise Refused(f"{hb.node} released the VIPs itself and will not take them back")
        return self._carry_out(self.election.release(now), now)

    def stop(self, now: float) -> list[Action]:
        actions = self._carry_out(self.election.stop(now), now)
        return actions + [self._heartbeat(now) for _ in range(LEAVING_COPIES - 1)]

    def reconfigure(self, settings: Settings) -> None:
        """New timing, priority or preemption from a reload; the state is kept."""
        if (settings.name, tuple(settings.links)) != (
            self.settings.name,
            tuple(self.settings.links),
        ):
            raise ValueError("the node name and the links change only with a restart")
        self.settings = settings
        e = self.election
        e.priority, e.preempt, e.preempt_delay = (
            settings.priority,
            settings.preempt,
            settings.preempt_delay,
        )
        self.detector.deadtime, self.detector.warntime = settings.deadtime, settings.warntime
        if self.peer_digest is not None:  # compared again with our new config
            self._mismatch_since = None
            self._config_heard(self.peer_digest, self._last_tick)
        self._next_send = min(self._next_send, self._last_tick + settings.interval)

    def next_deadline(self) -> float:
        judge = self.detector.next_deadline()
        if judge is not None:
            judge = max(judge, self._grace_until)  # no verdicts during the grace after a stall
        mismatch = None
        if self._mismatch_since is not None and not self._mismatch_told:
            mismatch = self._mismatch_since + MISMATCH_AFTER
        times = [self._next_send, judge, self.election.next_deadline(), mismatch]
        return min(t for t in times if t is not None)

    # Outputs.

    def status(self, now: float) -> dict[str, Any]:
        hb = self.peer.heartbeat
        links = [
            {
                "name": link,
                "alive": self.detector.link_alive(link),
                "last_heard": None if heard is None else round(now - heard, 3),
            }
            for link, heard in self.detector.last_heard.items()
        ]
        silent = self.detector.silent_for(now)
        return {
            "node": self.settings.name,
            "state": str(self.state),
            "priority": self.settings.priority,
            "since_monotonic": self.election.since,
            "peer": {
                "node": self.peer.name,
                "state": str(hb.state) if hb else None,
                "priority": hb.priority if hb else None,
                "since_monotonic": self.peer.state_since,
                "alive": self.detector.peer_alive,
                "last_heard": None if silent == float("inf") else round(silent, 3),
                "links": links,
            },
            "preempt_hold": self.election.preempt_hold,
            "heartbeats": {
                "sent": self.sent,
                "received": self.received,
                "dropped": dict(self.dropped),
            },
        }

    def _drop(self, reason: str) -> list[Action]:
        self.dropped[reason] += 1
        return []

    def _detector_events(self, events: list[fd.Event]) -> list[Action]:
        notices: list[Action] = []
        for e in events:
            if isinstance(e, fd.LinkDown):
                notices.append(
                    Notice(
                        "link_lost",
                        f"no heartbeat on {e.link} for {self.settings.deadtime:g}s",
                        e.link,
                    )
                )
            elif isinstance(e, fd.LinkUp):
                notices.append(Notice("link_back", f"heartbeats on {e.link} again", e.link))
            elif isinstance(e, fd.PeerDown):
                notices.append(
                    Notice(
                        "peer_lost",
                        f"{self.peer.name} silent on every link for {e.silent_for:.3f}s",
                        self.peer.name or "",
                    )
                )
            elif isinstance(e, fd.PeerUp):
                notices.append(
                    Notice("peer_back", f"{self.peer.name} heard on {e.link}", self.peer.name or "")
                )
            else:
                notices.append(
                    Notice("heartbeat_late", f"{self.peer.name} silent for {e.silent_for:.3f}s")
                )
        return notices

    def _carry_out(self, decisions: list[Decision], now: float) -> list[Action]:
        """Decisions plus an immediate heartbeat whenever what we announce changed."""
        if not decisions and self._last_announced == (self.state, self.election.flags):
            return []
        return [*decisions, self._heartbeat(now)]

    def _heartbeat(self, now: float) -> Send:
        s = self.settings
        self.seq += 1
        self.sent += 1
        self._next_send = now + s.interval
        self._last_announced = (self.state, self.election.flags)
        hb = Heartbeat(
            s.cluster,
            s.name,
            s.priority,
            self.state,
            self.election.flags,
            self.epoch,
            self.seq,
            self.peer.guard.newest[0] if self.peer.guard.newest[0] > 0 else 0,
            s.digest,
        )
        return Send(encode(hb, s.key))
