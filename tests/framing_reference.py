"""The serial deframer's specification: its first implementation, short and obviously
right, and quadratic on streams dense with false markers. hapair.core.framing's decoder
must return and count exactly what this one does, for any bytes cut into any reads."""

from __future__ import annotations

import struct
import zlib
from collections import Counter

from hapair.core.framing import HEADER_SIZE, MARKER, MAX_PAYLOAD, OVERHEAD

_LENGTH = struct.Struct(">H")
_CRC = struct.Struct(">I")


class ReferenceDecoder:
    """hapair's first serial deframer, kept as the specification of what the decoder
    returns and counts: simple, and quadratic on streams full of false markers.

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
