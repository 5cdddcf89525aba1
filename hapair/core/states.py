"""The node states of the contract and their one-byte wire codes."""

from __future__ import annotations

import enum


class State(enum.IntEnum):
    INIT = 1  # waiting for initdead or a peer
    BACKUP = 2
    MASTER = 3  # the only state that holds the VIPs
    FAULT = 4  # own health bad: a VIP interface down or a tracked check failing
    STOPPED = 5  # leaving: the peer takes over at once

    def __str__(self) -> str:
        return self.name
