"""The heartbeat: a compact, versioned, HMAC-SHA256-authenticated binary message.

Owns encoding, decoding and per-link replay protection. `decode` never raises:
anything malformed, foreign or forged comes back as `Dropped(reason)`.
"""

from __future__ import annotations

import enum
import hmac
import struct
from dataclasses import dataclass

from hapair.core.states import State

MAGIC = b"HP"
VERSION = 1
# magic, version, cluster id, state, priority, flags, name length, epoch, sequence, echo,
# config digest
_HEADER = struct.Struct("!2sBBBBBBQQQ8s")
MAC_SIZE = 32
MAX_NAME = 32
MIN_SIZE = _HEADER.size + 1 + MAC_SIZE
MAX_SIZE = _HEADER.size + MAX_NAME + MAC_SIZE


class Flag(enum.IntFlag):
    NONE = 0
    PREEMPT = 1  # "I outrank you and my preempt delay has passed: release the VIPs"
    YIELD = 2  # "I released the VIPs on purpose: take them even if I outrank you"
    CEDED = 4  # "I was MASTER too and stepped down for you: announce the VIPs again"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    cluster: int
    node: str
    priority: int
    state: State
    flags: Flag
    epoch: int  # grows with every start of the sender's agent
    seq: int  # strictly increasing within an epoch
    echo: int  # the newest epoch of the receiver that the sender has heard (0: none)
    digest: bytes  # of the settings both nodes must share


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: str


def encode(hb: Heartbeat, key: bytes) -> bytes:
    name = hb.node.encode()
    if not 1 <= len(name) <= MAX_NAME or len(hb.digest) != 8:
        raise ValueError(f"cannot encode node name {hb.node!r} or digest {hb.digest!r}")
    body = (
        _HEADER.pack(
            MAGIC,
            VERSION,
            hb.cluster,
            hb.state,
            hb.priority,
            hb.flags,
            len(name),
            hb.epoch,
            hb.seq,
            hb.echo,
            hb.digest,
        )
        + name
    )
    return body + hmac.digest(key, body, "sha256")


def decode(data: bytes, *, key: bytes, cluster: int) -> Heartbeat | Dropped:
    """Check size, magic, version, cluster and MAC before trusting any field."""
    if len(data) < MIN_SIZE:
        return Dropped("short")
    if len(data) > MAX_SIZE:
        return Dropped("long")
    magic, version, cluster_id, state, priority, flags, name_len, epoch, seq, echo, digest = (
        _HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        return Dropped("magic")
    if version != VERSION:
        return Dropped("version")
    if cluster_id != cluster:
        return Dropped("cluster")
    if len(data) != _HEADER.size + name_len + MAC_SIZE:
        return Dropped("length")
    body, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.digest(key, body, "sha256")):
        return Dropped("mac")
    # Authentic from here on; still, a peer of another version may send values we do not know.
    try:
        node = body[_HEADER.size :].decode()
        return Heartbeat(
            cluster_id, node, priority, State(state), Flag(flags), epoch, seq, echo, digest
        )
    except ValueError:
        return Dropped("field")


class ReplayGuard:
    """Refuses replayed heartbeats of one peer, received over several links.

    Per link, (epoch, seq) must grow. Across links, a heartbeat may lag the newest
    one seen on any link by at most `window` sequence numbers (a slow serial line),
    so a heartbeat captured on one link and replayed on another cannot keep a dead
    peer alive. Epochs must grow across restarts of the sender (the agent derives
    them from the clock and a counter on disk): were they random, one replayed
    heartbeat of an older incarnation would make the genuine ones look replayed.
    """

    def __init__(self, window: int = 2) -> None:
        self.window = window
        self.newest: tuple[int, int] = (-1, -1)
        self._last: dict[str, tuple[int, int]] = {}

    def accept(self, link: str, epoch: int, seq: int) -> bool:
        newest_epoch, newest_seq = self.newest
        if epoch < newest_epoch or (epoch == newest_epoch and seq < newest_seq - self.window):
            return False
        if (epoch, seq) <= self._last.get(link, (-1, -1)):
            return False
        self._last[link] = (epoch, seq)
        self.newest = max(self.newest, (epoch, seq))
        return True
