"""Netlink and generic-netlink messages and attributes (linux/netlink.h, linux/genetlink.h),
as pure functions: what genl.py sends and reads, whatever the family.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
_NLM_F_ACK_TLVS = 0x200
_NLMSGERR_ATTR_MSG = 1
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
HDR = struct.Struct("=IHHII")  # nlmsghdr
GENL = struct.Struct("=BBH")  # genlmsghdr
NLA = struct.Struct("=HH")
ANSWER_AT = HDR.size + GENL.size  # where an answer's payload starts


class KernelError(Exception):
    """The kernel refused a request: `code` is its errno, `reason` strerror and its text."""

    def __init__(self, code: int, text: str | None) -> None:
        self.code = code
        reason = os.strerror(code)
        self.reason = f"{reason} ({text})" if text else reason
        super().__init__(self.reason)


# --- netlink messages ----------------------------------------------------------------------


def message(
    msg_type: int, flags: int, seq: int, cmd: int, payload: bytes, version: int = 1
) -> bytes:
    """One generic-netlink request (IPVS and the controller are both at version 1)."""
    size = ANSWER_AT + len(payload)
    return HDR.pack(size, msg_type, flags, seq, 0) + GENL.pack(cmd, version, 0) + payload


def acked_noop(seq: int) -> bytes:
    """A request that does nothing but be acknowledged: the kernel acks a control message
    without handing it to any family (netlink_rcv_skb)."""
    return HDR.pack(HDR.size, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, seq, 0)


@dataclass(frozen=True, slots=True)
class Answer:
    seq: int
    kind: int  # NLMSG_ERROR, NLMSG_DONE, or the family's id
    flags: int
    payload: bytes  # after the genl header; empty for ERROR and DONE
    error: KernelError | None = None  # ERROR with a code other than 0, DONE with one


def answers(data: bytes) -> Iterator[Answer]:
    """The messages of one datagram from the kernel; a truncated tail is ignored."""
    offset = 0
    while offset + HDR.size <= len(data):
        size, kind, flags, seq, _ = HDR.unpack_from(data, offset)
        if size < HDR.size or offset + size > len(data):
            return
        if kind in (NLMSG_ERROR, NLMSG_DONE):
            yield Answer(seq, kind, flags, b"", _error_of(data, offset, size, kind, flags))
        else:
            yield Answer(seq, kind, flags, data[offset + ANSWER_AT : offset + size])
        offset += (size + 3) & ~3


_END = struct.Struct("=IHHIIi")  # nlmsghdr, then the code of DONE or ERROR


def ended(data: bytes, seq: int) -> bool:
    """True when `data` is one message alone that ends `seq`'s answers well: DONE of a
    dump, or an acknowledgement (ERROR with code 0); read without building objects."""
    if len(data) < _END.size:
        return False
    size, kind, _, mseq, _, code = _END.unpack_from(data)
    return size == len(data) and mseq == seq and code == 0 and kind in (NLMSG_DONE, NLMSG_ERROR)


def uniform(data: bytes, seq: int) -> list[bytes] | None:
    """The payloads of `data` when it holds only dump answers to `seq`, all of one size (a
    destination dump: one datagram of ten costs one call); else None."""
    if len(data) < HDR.size:
        return None
    size, kind, _, _, _ = HDR.unpack_from(data)
    if kind <= NLMSG_DONE or size <= ANSWER_AT or len(data) % size:
        return None
    header = (size, kind, NLM_F_MULTI, seq)
    found = [r[5] for r in _uniform_layout(size).iter_unpack(data) if r[:4] == header]
    return found if len(found) * size == len(data) else None


@functools.lru_cache(maxsize=64)
def _uniform_layout(size: int) -> struct.Struct:
    # nlmsghdr, genlmsghdr (skipped), then the payload
    return struct.Struct(f"=IHHII4x{size - ANSWER_AT}s")


def _error_of(data: bytes, offset: int, size: int, kind: int, flags: int) -> KernelError | None:
    if size < HDR.size + 4:
        return None
    code = -struct.unpack_from("=i", data, offset + HDR.size)[0]
    if code == 0:
        return None
    text = None
    if kind == NLMSG_ERROR and flags & _NLM_F_ACK_TLVS:
        # error, then our header (capped ack: no payload), then the extended-ack attributes
        tlvs = attrs(data[offset + HDR.size + 4 + HDR.size : offset + size])
        if _NLMSGERR_ATTR_MSG in tlvs:
            text = tlvs[_NLMSGERR_ATTR_MSG].split(b"\0", 1)[0].decode(errors="replace")
    return KernelError(code, text)


def family_request(name: str) -> bytes:
    """The payload of CTRL_CMD_GETFAMILY: which family's number to look up."""
    return attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")


def family_id(payload: bytes) -> int:
    return get_u16(attrs(payload), CTRL_ATTR_FAMILY_ID)


# --- netlink attributes --------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def attrs(buf: bytes, offset: int = 0) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    end = len(buf)
    while offset + 4 <= end:
        size, kind = NLA.unpack_from(buf, offset)
        if size < 4:
            break
        out[kind & 0x3FFF] = buf[offset + 4 : offset + size]  # without NESTED/BYTEORDER bits
        offset += (size + 3) & ~3
    return out


def u16(value: int) -> bytes:
    return struct.pack("=H", value)


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def be16(value: int) -> bytes:
    return struct.pack(">H", value)


def get_u16(a: dict[int, bytes], kind: int) -> int:
    return struct.unpack_from("=H", a[kind])[0] if len(a.get(kind, b"")) >= 2 else 0


def get_u32(a: dict[int, bytes], kind: int) -> int:
    return struct.unpack_from("=I", a[kind])[0] if len(a.get(kind, b"")) >= 4 else 0
