"""Byte framing for heartbeats on a serial line: frames in, payloads out.

Owns the frame layout and resynchronisation after noise, cut cables and garbage.
Pure: no I/O, no clock, no knowledge of what a payload means; `feed` never raises.

Layout: MARKER (2 bytes) | length (2 bytes, big endian) | payload | CRC32 of length+payload.
On any mismatch the decoder drops one byte and scans for the next marker, so a frame that
starts inside a bogus one (a half-written frame, a false marker in noise) is still found.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter

MARKER = b"\xa5\x7e"
MAX_PAYLOAD = 512
_LENGTH = struct.Struct(">H")
_CRC = struct.Struct(">I")
HEADER_SIZE = len(MARKER) + _LENGTH.size
OVERHEAD = HEADER_SIZE + _CRC.size
MAX_FRAME = OVERHEAD + MAX_PAYLOAD


def encode_frame(payload: bytes) -> bytes:
    """One frame carrying `payload`; ValueError if it is longer than MAX_PAYLOAD."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a serial frame carries at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    body = _LENGTH.pack(len(payload)) + payload
    return MARKER + body + _CRC.pack(zlib.crc32(body))


class FrameDecoder:
    """Feed it bytes as they come; it returns the payloads of complete, intact frames.

    `dropped` counts what was thrown away: `noise_bytes` (bytes outside any frame),
    `bad_length` and `bad_crc` (false or damaged frame starts), `truncated` (a frame cut
    short and abandoned because an intact frame follows it).
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = min(max_payload, MAX_PAYLOAD)
        self._buf = bytearray()
        self.dropped: Counter[str] = Counter()
        self.decoded = 0

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame (at most about one frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        payloads: list[bytes] = []
        self._buf += data
        while True:
            payload = self._next()
            if payload is None:
                return payloads
            payloads.append(payload)

    def _next(self) -> bytes | None:
        """The next intact payload in the buffer, or None when more bytes are needed."""
        buf = self._buf
        while True:
            start = buf.find(MARKER)
            if start < 0:
                # Keep a trailing byte that may be the first half of a marker.
                keep = 1 if buf[-1:] == MARKER[:1] else 0
                self._drop_noise(len(buf) - keep)
                return None
            self._drop_noise(start)
            verdict, payload = self._frame_at(0)
            if verdict == "ok":
                assert payload is not None
                del buf[: OVERHEAD + len(payload)]
                self.decoded += 1
                return payload
            if verdict == "short":
                later = self._intact_frame_after(0)
                if later is None:
                    return None  # wait for more bytes
                self.dropped["truncated"] += 1
                self._drop_noise(later)
                continue
            self.dropped[verdict] += 1
            del buf[:1]  # skip this marker only: a real frame may start inside the bogus one

    def _frame_at(self, pos: int) -> tuple[str, bytes | None]:
        buf = self._buf
        if len(buf) - pos < HEADER_SIZE:
            return "short", None
        (length,) = _LENGTH.unpack_from(buf, pos + len(MARKER))
        if length > self.max_payload:
            return "bad_length", None
        end = pos + HEADER_SIZE + length
        if len(buf) < end + _CRC.size:
            return "short", None
        (crc,) = _CRC.unpack_from(buf, end)
        if zlib.crc32(buf[pos + len(MARKER) : end]) != crc:
            return "bad_crc", None
        return "ok", bytes(buf[pos + HEADER_SIZE : end])

    def _intact_frame_after(self, pos: int) -> int | None:
        """Where a later complete, intact frame starts, if one is already buffered."""
        while True:
            pos = self._buf.find(MARKER, pos + 1)
            if pos < 0:
                return None
            if self._frame_at(pos)[0] == "ok":
                return pos

    def _drop_noise(self, count: int) -> None:
        if count > 0:
            del self._buf[:count]
            self.dropped["noise_bytes"] += count
