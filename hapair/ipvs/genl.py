"""A generic-netlink socket bound to the kernel's IPVS family, in one network namespace.

Blocking by design: the kernel handles a request inside the `send` that carries it and
queues its answers before `send` returns, so a call waits on nothing but the kernel (the
30 s timeout only guards a bug). Writes are pipelined: one `send` carries up to
`BATCH` requests and an acknowledged no-op after them; the kernel answers a request only
when it refuses it, each error tied to its request by sequence number.
"""

from __future__ import annotations

import errno as errno_codes
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

from hapair.host import enter_netns
from hapair.ipvs import netlink as nl
from hapair.ipvs.netlink import KernelError

_SOL_NETLINK, _NETLINK_CAP_ACK, _NETLINK_EXT_ACK = 270, 10, 11
_NETLINK_GENERIC = 16
_RECV_SIZE = 1 << 16  # a dump's datagram is at most 32 KiB
# Requests per send: their refusals (each at most ~1 KiB of the receive buffer) must fit
# in the default 208 KiB, or the kernel would drop some and we would think them done.
BATCH = 64


class NoIpvs(Exception):
    """The kernel has no generic-netlink family IPVS."""


class GenlSocket:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0  # of the last request sent
        self.family = 0

    @classmethod
    def open(cls, netns: str | None) -> GenlSocket:
        """OSError: no such namespace, or no socket; NoIpvs; KernelError."""
        sock = _netlink_socket(netns)
        self = cls(sock)
        try:
            sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)  # acks without our request
            sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)  # the kernel's reason text
            sock.settimeout(30)
            answers = self._exchange(
                nl.GENL_ID_CTRL,
                nl.CTRL_CMD_GETFAMILY,
                nl.family_request("IPVS"),
                nl.NLM_F_REQUEST,
            )
            if not answers:
                raise OSError(errno_codes.EPROTO, "no answer to the family lookup")
            self.family = nl.family_id(answers[0])
        except KernelError as e:
            sock.close()
            if e.code == errno_codes.ENOENT:
                raise NoIpvs() from e
            raise
        except OSError:
            sock.close()
            raise
        return self

    def close(self) -> None:
        self._sock.close()

    def request(self, cmd: int, payload: bytes, *, dump: bool = False) -> list[bytes]:
        """One request; the payloads of its answers (none for an acknowledged write)."""
        flags = nl.NLM_F_REQUEST | (nl.NLM_F_DUMP if dump else nl.NLM_F_ACK)
        return self._exchange(self.family, cmd, payload, flags)

    def write(self, requests: Sequence[tuple[int, bytes]]) -> list[KernelError | None]:
        """Writes (cmd, payload) requests, at most BATCH, in one send: each one's refusal,
        or None. OSError: the socket failed, and what was done is unknown."""
        if not 0 < len(requests) <= BATCH:
            raise ValueError(f"1 to {BATCH} requests at once, not {len(requests)}")
        first = self._take(len(requests) + 1)
        end = first + len(requests)  # the acknowledged no-op after them
        data = b"".join(
            nl.message(self.family, nl.NLM_F_REQUEST, n, cmd, p)
            for n, (cmd, p) in enumerate(requests, first)
        )
        # The no-op, not the last request, asks for the ack: a handler that fails with
        # EINTR gets no answer at all (IPVS's DEL_DAEMON does, when the sync thread it
        # stops had not run yet), and the send would wait for one that never comes.
        self._sock.send(data + nl.acked_noop(end))
        results: list[KernelError | None] = [None] * len(requests)
        while True:
            data = self._sock.recv(_RECV_SIZE)
            if nl.ended(data, end):  # the kernel handles requests in order
                return results
            for answer in nl.answers(data):
                if answer.kind != nl.NLMSG_ERROR:
                    continue
                if first <= answer.seq < end:
                    results[answer.seq - first] = answer.error
                elif answer.seq == end:
                    return results

    def _take(self, count: int) -> int:
        """The first of `count` fresh sequence numbers (32 bits on the wire)."""
        if self._seq + count > 0xFFFFFFFF:
            self._seq = 0
        first = self._seq + 1
        self._seq += count
        return first

    def _exchange(self, msg_type: int, cmd: int, payload: bytes, flags: int) -> list[bytes]:
        """Send one message; return the payloads (after the genl header) of its answers.
        KernelError: the kernel refused it."""
        seq = self._take(1)
        self._sock.send(nl.message(msg_type, flags, seq, cmd, payload))
        dump = flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP
        found: list[bytes] = []
        while True:
            data = self._sock.recv(_RECV_SIZE)
            if nl.ended(data, seq):
                return found
            if dump and (same := nl.uniform(data, seq)) is not None:
                found += same  # a datagram of same-sized answers, read in one pass
                continue
            for answer in nl.answers(data):
                if answer.seq != seq:
                    continue  # answers to an abandoned request
                if answer.kind in (nl.NLMSG_ERROR, nl.NLMSG_DONE):
                    if answer.error is not None:
                        raise answer.error
                    return found
                found.append(answer.payload)
                if not answer.flags & nl.NLM_F_MULTI and not flags & nl.NLM_F_ACK:
                    return found  # a single answer without an ack to follow


def _netlink_socket(netns: str | None) -> socket.socket:
    """A NETLINK_GENERIC socket in `netns` (a name under /run/netns, or a path), which must
    exist: it is entered by a helper thread, so the caller's thread never changes namespace."""

    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC)

    if netns is None:
        return make()
    path = netns if "/" in netns else f"/run/netns/{netns}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    result: dict[str, Any] = {}

    def enter_and_make() -> None:
        try:
            enter_netns(fd)
            result["sock"] = make()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    try:
        thread = threading.Thread(target=enter_and_make, name="ipvs-netns")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in result:
        raise result["error"]
    sock: socket.socket = result["sock"]
    return sock
