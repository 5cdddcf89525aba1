"""The sans-I/O HA core, scenario by scenario: codec, detector, election, node."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hapair.core.detector import FailureDetector, Late, LinkDown, LinkUp, PeerDown, PeerUp
from hapair.core.election import TRANSITIONS, Announce, Situation, Transition
from hapair.core.heartbeat import (
    MAX_SIZE,
    Dropped,
    Flag,
    Heartbeat,
    ReplayGuard,
    decode,
    encode,
)
from hapair.core.node import HaNode, Notice, Send, Settings
from hapair.core.refused import Refused
from hapair.core.states import State
from hapair.core.warmup import WarmUp

pytestmark = pytest.mark.unit

KEY = b"s" * 32
HB = Heartbeat(51, "lvs1", 150, State.MASTER, Flag.NONE, 7, 42, 9, b"digest!!")


# The codec.


def test_round_trip() -> None:
    data = encode(HB, KEY)
    assert len(data) <= MAX_SIZE
    assert decode(data, key=KEY, cluster=51) == HB


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda d: d[:20], "short"),
        (lambda d: d + b"x" * 100, "long"),
        (lambda d: b"XX" + d[2:], "magic"),
        (lambda d: d[:2] + b"\x09" + d[3:], "version"),
        (lambda d: d[:3] + b"\x34" + d[4:], "cluster"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "mac"),
        (lambda d: d[:10] + bytes([d[10] ^ 4]) + d[11:], "mac"),
        (lambda d: d + b"x", "length"),
    ],
)
def test_drop_reasons(mangle: object, reason: str) -> None:
    assert decode(mangle(encode(HB, KEY)), key=KEY, cluster=51) == Dropped(reason)  # type: ignore[operator]


def test_wrong_key_is_a_bad_mac() -> None:
    assert decode(encode(HB, b"x" * 32), key=KEY, cluster=51) == Dropped("mac")


def test_authentic_but_unknown_state_is_dropped() -> None:
    bogus = replace(HB, state=9)  # type: ignore[arg-type]
    assert decode(encode(bogus, KEY), key=KEY, cluster=51) == Dropped("field")


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_raises(data: bytes) -> None:
    assert isinstance(decode(data, key=KEY, cluster=51), Heartbeat | Dropped)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 200), st.integers(0, 7))
def test_every_bit_flip_is_caught(position: int, bit: int) -> None:
    data = bytearray(encode(HB, KEY))
    data[position % len(data)] ^= 1 << bit
    assert isinstance(decode(bytes(data), key=KEY, cluster=51), Dropped)


def test_replay_guard() -> None:
    g = ReplayGuard(window=2)
    assert g.accept("udp", 5, 10)
    assert g.accept("serial", 5, 10)  # the same heartbeat on the second link
    assert not g.accept("udp", 5, 10)  # a replay on the first
    assert g.accept("udp", 5, 13)
    assert g.accept("serial", 5, 11)  # a slow link, within the window
    assert not g.accept("serial", 5, 10)  # older than the window
    assert not g.accept("serial", 4, 99)  # an older incarnation
    assert g.accept("serial", 6, 1)  # the peer restarted


# The failure detector.


def test_detector_edges() -> None:
    d = FailureDetector(["udp", "serial"], deadtime=1.0, warntime=0.6)
    assert d.heard("udp", 0.0) == [PeerUp("udp"), LinkUp("udp")]
    assert d.heard("serial", 0.1) == [LinkUp("serial")]
    assert d.tick(0.5) == []
    d.heard("serial", 0.5)
    assert d.tick(1.0) == [LinkDown("udp")]  # serial still carries heartbeats
    assert d.peer_alive
    assert d.tick(1.2) == [Late(pytest.approx(0.7))]
    assert d.tick(1.3) == []  # warned once per silence
    assert d.tick(1.5) == [LinkDown("serial"), PeerDown(pytest.approx(1.0))]
    assert not d.peer_alive and d.next_deadline() is None


def test_detector_ignores_credit_older_than_it_has() -> None:
    d = FailureDetector(["udp"], deadtime=1.0, warntime=0.6)
    d.heard("udp", 5.0)
    assert d.heard("udp", 4.0) == [] and d.last_heard["udp"] == 5.0


# The election table.


def test_every_state_has_a_row_for_every_situation() -> None:
    for state in State:
        assert set(TRANSITIONS[state]) == set(Situation), state


def test_only_master_rows_keep_master() -> None:
    for state in State:
        for situation, new in TRANSITIONS[state].items():
            if new is State.MASTER and state is not State.MASTER:
                assert situation in (Situation.ALONE, Situation.PEER_WAITS_I_WIN)


# The node, driven by hand: two nodes and a perfect wire.


def settings_for(name: str, priority: int, **kw: object) -> Settings:
    base = Settings(
        name=name,
        priority=priority,
        cluster=51,
        key=KEY,
        links=("udp", "serial"),
        interval=0.1,
        deadtime=0.5,
        warntime=0.3,
        initdead=1.0,
        preempt=True,
        preempt_delay=0.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


class Pair:
    """Two nodes; `step` delivers what each sends to the other on `links`."""

    def __init__(self, a: Settings, b: Settings, now: float = 0.0) -> None:
        self.now = now
        self.nodes = {"a": HaNode(a, epoch=1, now=now), "b": HaNode(b, epoch=1, now=now)}
        self.links = {"udp", "serial"}
        self.actions: dict[str, list[object]] = {"a": [], "b": []}
        self.wire: list[tuple[str, bytes]] = []  # (to, payload)

    def _out(self, name: str, actions: list[object]) -> None:
        self.actions[name] += actions
        other = "b" if name == "a" else "a"
        self.wire += [(other, x.payload) for x in actions if isinstance(x, Send)]

    def step(self, dt: float = 0.01) -> None:
        self.now += dt
        for name, node in self.nodes.items():
            self._out(name, node.tick(self.now))
        while self.wire:
            to, payload = self.wire.pop(0)
            for link in sorted(self.links):
                self._out(to, self.nodes[to].receive(link, payload, self.now))

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.01)):
            self.step()

    def states(self) -> tuple[State, State]:
        return self.nodes["a"].state, self.nodes["b"].state

    def restart(self, name: str, s: Settings) -> None:
        old = self.nodes[name]
        self.nodes[name] = HaNode(s, epoch=old.epoch + 1, now=self.now)


def settled_pair() -> Pair:
    """a (priority 150) MASTER and b (100) BACKUP, 0.2 s after both started."""
    pair = Pair(settings_for("a", 150), settings_for("b", 100))
    pair.run(0.2)
    return pair


def transitions(actions: list[object]) -> list[tuple[State, State]]:
    return [(a.old, a.new) for a in actions if isinstance(a, Transition)]


def test_higher_priority_becomes_master_without_waiting_initdead() -> None:
    pair = Pair(settings_for("a", 150), settings_for("b", 100))
    pair.run(0.1)
    assert pair.states() == (State.MASTER, State.BACKUP)


def test_equal_priority_smaller_name_wins() -> None:
    pair = Pair(settings_for("lvs2", 100), settings_for("lvs1", 100))
    pair.run(0.1)
    assert pair.states() == (State.BACKUP, State.MASTER)


def test_alone_waits_initdead() -> None:
    node = HaNode(settings_for("a", 150), epoch=1, now=0.0)
    for step in range(1, 10):
        node.tick(step / 10)
    assert node.state is State.INIT
    assert transitions(node.tick(1.0)) == [(State.INIT, State.MASTER)]


def test_backup_takes_over_after_deadtime_on_all_links() -> None:
    pair = settled_pair()
    pair.links = {"serial"}  # the UDP link is cut: the serial line still carries heartbeats
    pair.run(1.0)
    assert pair.states() == (State.MASTER, State.BACKUP)
    assert any(isinstance(x, Notice) and x.event == "link_lost" for x in pair.actions["b"])
    pair.links = set()  # both cut: each believes the other dead
    pair.run(0.35)
    assert pair.states() == (State.MASTER, State.BACKUP)
    pair.run(0.2)
    assert pair.states() == (State.MASTER, State.MASTER)


def test_split_brain_heals_at_once_and_the_winner_announces() -> None:
    pair = settled_pair()
    pair.links = set()
    pair.run(1.0)
    assert pair.states() == (State.MASTER, State.MASTER)
    pair.actions = {"a": [], "b": []}
    pair.links = {"udp"}
    pair.run(0.1)  # one interval
    assert pair.states() == (State.MASTER, State.BACKUP)
    assert [x for x in pair.actions["a"] if isinstance(x, Announce)]
    assert transitions(pair.actions["b"]) == [(State.MASTER, State.BACKUP)]


def test_preempt_is_a_handover_without_overlap() -> None:
    a, b = settings_for("a", 150, preempt_delay=0.3), settings_for("b", 100)
    pair = Pair(a, b)
    pair.run(0.2)
    pair._out("a", pair.nodes["a"].stop(pair.now))
    pair.run(0.5)
    assert pair.states() == (State.STOPPED, State.MASTER)
    pair.restart("a", a)
    seen = []
    for _ in range(100):
        pair.step()
        seen.append(pair.states())
    assert pair.states() == (State.MASTER, State.BACKUP)
    assert (State.MASTER, State.MASTER) not in seen
    first_master = next(i for i, s in enumerate(seen) if s[0] is State.MASTER)
    assert first_master >= 30  # after preempt_delay


def test_a_held_preemption_waits_but_a_dead_peer_is_still_replaced() -> None:
    a, b = settings_for("a", 150), settings_for("b", 100)
    pair = Pair(a, b)
    pair.run(0.2)

    def restart_a_holding_preemption() -> None:
        pair._out("a", pair.nodes["a"].stop(pair.now))
        pair.run(0.5)  # b takes over
        pair.restart("a", a)
        pair._out("a", pair.nodes["a"].hold_preemption("learning connections", pair.now))

    restart_a_holding_preemption()
    pair.run(3.0)
    assert pair.states() == (State.BACKUP, State.MASTER)
    assert pair.nodes["a"].next_deadline() > pair.now  # no busy timer while held
    assert pair.nodes["a"].status(pair.now)["preempt_hold"] == "learning connections"
    pair._out("a", pair.nodes["a"].hold_preemption(None, pair.now))
    pair.run(0.2)
    assert pair.states() == (State.MASTER, State.BACKUP)
    # Held again (e.g. the node restarted), it still takes over from a peer that dies.
    restart_a_holding_preemption()
    pair.run(0.5)
    assert pair.states() == (State.BACKUP, State.MASTER)
    pair.links = set()
    pair.run(1.0)
    assert pair.states()[0] is State.MASTER


def test_warm_up_ends_when_learning_stops_or_at_the_limit() -> None:
    w = WarmUp(limit=10.0, now=0.0)
    assert not w.observe(0, 0.0)
    assert not w.observe(150, 1.0)
    assert not w.observe(200, 2.5)
    assert not w.observe(200, 6.0)  # 3.5 s without a new one
    assert w.observe(190, 6.6)  # settled (some expired meanwhile)
    busy = WarmUp(limit=10.0, now=0.0)
    assert not any(busy.observe(n, n / 2) for n in range(20))  # ever growing
    assert busy.observe(21, 10.0)  # the limit
    assert WarmUp(limit=0.0, now=0.0).observe(0, 0.0)


def test_no_preempt_keeps_the_recovered_node_backup() -> None:
    a, b = settings_for("a", 150, preempt=False), settings_for("b", 100, preempt=False)
    pair = Pair(a, b)
    pair.run(0.2)
    pair.links = set()
    pair.restart("a", a)
    pair.run(1.5)
    pair.links = {"udp", "serial"}
    pair.restart("a", a)
    pair.run(2.0)
    assert pair.states() == (State.BACKUP, State.MASTER)


def test_release_hands_over_at_once_and_does_not_preempt_back() -> None:
    pair = settled_pair()
    pair._out("a", pair.nodes["a"].release(pair.now))
    pair.step()
    assert pair.states() == (State.BACKUP, State.MASTER)
    pair.run(2.0)
    assert pair.states() == (State.BACKUP, State.MASTER)
    with pytest.raises(Refused, match="not MASTER"):
        pair.nodes["a"].release(pair.now)


def test_release_refused_without_a_peer() -> None:
    node = HaNode(settings_for("a", 150), epoch=1, now=0.0)
    for step in range(1, 12):
        node.tick(step / 10)
    assert node.state is State.MASTER
    with pytest.raises(Refused, match="no healthy peer"):
        node.release(1.1)


def test_stop_hands_over_at_once() -> None:
    pair = settled_pair()
    pair._out("a", pair.nodes["a"].stop(pair.now))
    pair.step()
    assert pair.states() == (State.STOPPED, State.MASTER)


def test_fault_hands_over_and_recovery_preempts() -> None:
    pair = settled_pair()
    pair.actions["a"] = []
    pair._out("a", pair.nodes["a"].set_health(False, "icmp 10.0.0.254: no reply", pair.now))
    pair.step()
    assert pair.states() == (State.FAULT, State.MASTER)
    reason = next(x.reason for x in pair.actions["a"] if isinstance(x, Transition))
    assert "icmp 10.0.0.254" in reason
    pair._out("a", pair.nodes["a"].set_health(True, "", pair.now))
    pair.run(0.1)
    assert pair.states() == (State.MASTER, State.BACKUP)


def test_a_stalled_master_steps_down_when_it_wakes() -> None:
    pair = settled_pair()
    actions = pair.nodes["a"].tick(pair.now + 2.0)  # the first thing it does after a freeze
    assert transitions(actions) == [(State.MASTER, State.BACKUP)]
    assert any(isinstance(x, Notice) and x.event == "stalled" for x in actions)


def test_forgeries_and_replays_change_nothing() -> None:
    pair = Pair(settings_for("a", 150), settings_for("b", 100))
    pair.run(0.3)
    b = pair.nodes["b"]
    before = (b.state, b.received)
    forged = Heartbeat(51, "a", 254, State.STOPPED, Flag.YIELD, 99, 10**9, 1, b"\0" * 8)
    old = encode(Heartbeat(51, "a", 150, State.FAULT, Flag.NONE, 1, 1, 1, b"\0" * 8), KEY)
    for data in (encode(forged, b"w" * 32), old, b"", b"HP" + b"\0" * 100):
        for link in ("udp", "serial"):
            assert b.receive(link, data, pair.now) == []
    assert (b.state, b.received) == before
    assert b.dropped["mac"] == 2 and b.dropped["replay"] == 2


def test_a_replay_to_a_restarted_node_is_not_trusted() -> None:
    a, b = settings_for("a", 150), settings_for("b", 100)
    pair = Pair(a, b)
    pair.run(0.3)
    recorded = encode(
        Heartbeat(51, "a", 150, State.MASTER, Flag.NONE, 1, 5, 1, b"\0" * 8), KEY
    )  # what "a" said to the old "b"
    fresh = HaNode(b, epoch=2, now=pair.now)
    fresh.receive("udp", recorded, pair.now)
    assert fresh.received == 0 and fresh.dropped["unverified"] == 1
    assert fresh.state is State.INIT


def test_a_frozen_master_whose_first_news_is_the_new_master_steps_down() -> None:
    a, b = settings_for("a", 150, preempt=False), settings_for("b", 100, preempt=False)
    pair = Pair(a, b)
    pair.run(0.2)
    frozen = pair.nodes["a"]
    pair.nodes["a"] = HaNode(a, epoch=99, now=pair.now)  # stand-in: "a" is silent meanwhile
    pair.links = set()
    pair.run(1.0)
    assert pair.nodes["b"].state is State.MASTER
    pair.nodes["a"], pair.links = frozen, {"udp", "serial"}
    news = pair.nodes["b"].tick(pair.now + 0.1)  # the first thing "a" reads when it wakes
    payload = next(x.payload for x in news if isinstance(x, Send))
    actions = frozen.receive("udp", payload, pair.now + 0.1)
    assert transitions(actions) == [(State.MASTER, State.BACKUP)]
    assert not [x for x in actions if isinstance(x, Announce)]  # no claim on the VIPs


def test_the_winner_announces_even_when_the_loser_hears_first() -> None:
    # keepalived's stale-ARP case: the loser's gratuitous ARPs were the last ones clients saw.
    pair = settled_pair()
    pair.links = set()
    pair.run(1.0)
    a, b = pair.nodes["a"], pair.nodes["b"]
    assert pair.states() == (State.MASTER, State.MASTER)
    now = pair.now + 0.1
    from_a = next(x.payload for x in a.tick(now) if isinstance(x, Send))
    b_acts = b.receive("udp", from_a, now)  # only a -> b works at first
    assert transitions(b_acts) == [(State.MASTER, State.BACKUP)]
    from_b = next(x.payload for x in b_acts if isinstance(x, Send))
    a_acts = a.receive("udp", from_b, now)  # a only ever hears b as BACKUP
    assert [x for x in a_acts if isinstance(x, Announce)]
    later = next(x.payload for x in b.tick(now + 0.1) if isinstance(x, Send))
    assert not [x for x in a.receive("udp", later, now + 0.1) if isinstance(x, Announce)]


def mismatch_notices(actions: list[object]) -> list[str]:
    return [a.detail for a in actions if isinstance(a, Notice) and a.event == "config_mismatch"]


def test_a_config_that_differs_for_a_minute_is_told_once_and_again_after_agreeing() -> None:
    pair = Pair(
        settings_for("a", 150, digest=b"v1v1v1v1", whole_file=True),
        settings_for("b", 100, digest=b"v1v1v1v1", whole_file=True),
    )
    pair.run(0.5)
    a = pair.nodes["a"]
    assert a.in_sync is True and mismatch_notices(pair.actions["a"]) == []
    # b is given a new config; a, not yet: a change under way on both takes a moment.
    b = pair.nodes["b"]
    b.reconfigure(replace(b.settings, digest=b"v2v2v2v2"))
    pair.run(1.0)
    assert a.in_sync is False and b.in_sync is False
    pair.run(58.0)
    assert mismatch_notices(pair.actions["a"]) == []
    pair.run(1.5)
    told = mismatch_notices(pair.actions["a"])
    assert told == ["b's config differs from ours for 60s"], told
    assert mismatch_notices(pair.actions["b"]) == ["a's config differs from ours for 60s"]
    pair.run(120.0)
    assert len(mismatch_notices(pair.actions["a"])) == 1  # once, not every tick
    # a takes it too: in sync, and a later difference is told again.
    a.reconfigure(replace(a.settings, digest=b"v2v2v2v2"))
    pair.run(0.5)
    assert a.in_sync is True and b.in_sync is True
    b.reconfigure(replace(b.settings, digest=b"v3v3v3v3"))
    pair.run(61.0)
    assert len(mismatch_notices(pair.actions["a"])) == 2


def test_a_dead_peer_is_not_compared() -> None:
    pair = Pair(
        settings_for("a", 150, digest=b"v1v1v1v1"), settings_for("b", 100, digest=b"zzzzzzzz")
    )
    pair.run(0.5)
    assert pair.nodes["a"].in_sync is False
    pair.links = set()  # b is cut off: its old config is not news
    pair.run(61.0)
    assert pair.nodes["a"].in_sync is None
    assert mismatch_notices(pair.actions["a"]) == []
