"""Byte framing for heartbeats on a serial line: frames in, payloads out.

Owns the frame layout and resynchronisation after noise, cut cables and garbage.
Pure: no I/O, no clock, no knowledge of what a payload means; `feed` never raises.

Layout: MARKER (2 bytes) | length (2 bytes, big endian) | payload | CRC32 of length+payload.
On any mismatch the decoder drops one byte and scans for the next marker, so a frame that
starts inside a bogus one (a half-written frame, a false marker in noise) is still found.
"""

from __future__ import annotations

import heapq
import struct
import zlib
from collections import Counter, deque

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

    Its work is linear in the bytes fed, whatever they are: each marker is found once and
    its frame judged once, when its last byte is in (a frame's verdict depends only on the
    bytes from its marker on). Positions are counted from the start of the stream; the
    buffer holds what lies after `_base`, at most about one frame.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = min(max_payload, MAX_PAYLOAD)
        self._buf = bytearray()
        self._base = 0  # stream position of _buf[0]
        self._scanned = 0  # markers are known up to here (a marker starts before it)
        self._markers: deque[int] = deque()  # positions of markers not yet judged as head
        self._unread: deque[int] = deque()  # markers whose length field is not in yet
        self._waiting: list[tuple[int, int]] = []  # (end, position) of frames not complete
        self._verdicts: dict[int, tuple[str, int]] = {}  # position -> (verdict, end)
        self._intact: list[int] = []  # positions of intact frames (a heap)
        self.dropped: Counter[str] = Counter()
        self.decoded = 0

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame (at most about one frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        self._learn()
        payloads: list[bytes] = []
        while True:
            payload = self._next()
            if payload is None:
                return payloads
            payloads.append(payload)

    def _learn(self) -> None:
        """Find the new markers and judge every frame whose bytes are now all in."""
        buf, base = self._buf, self._base
        end = base + len(buf)
        pos = max(self._scanned - base - (len(MARKER) - 1), 0)
        while True:
            pos = buf.find(MARKER, pos)
            if pos < 0:
                break
            self._markers.append(base + pos)
            self._unread.append(base + pos)
            pos += 1
        self._scanned = end
        unread = self._unread
        while unread and unread[0] + HEADER_SIZE <= end:
            at = unread.popleft()
            if at < base:
                continue  # inside a frame already taken
            (length,) = _LENGTH.unpack_from(buf, at - base + len(MARKER))
            if length > self.max_payload:
                self._verdicts[at] = ("bad_length", 0)
            else:
                heapq.heappush(self._waiting, (at + OVERHEAD + length, at))
        waiting = self._waiting
        while waiting and waiting[0][0] <= end:
            frame_end, at = heapq.heappop(waiting)
            if at < base:
                continue
            i = at - base + len(MARKER)
            (crc,) = _CRC.unpack_from(buf, frame_end - _CRC.size - base)
            if zlib.crc32(buf[i : frame_end - _CRC.size - base]) == crc:
                self._verdicts[at] = ("ok", frame_end)
                heapq.heappush(self._intact, at)
            else:
                self._verdicts[at] = ("bad_crc", 0)

    def _next(self) -> bytes | None:
        """The next intact payload in the buffer, or None when more bytes are needed."""
        markers, verdicts = self._markers, self._verdicts
        while True:
            while markers and markers[0] < self._base:
                verdicts.pop(markers.popleft(), None)
            if not markers:
                # Keep a trailing byte that may be the first half of a marker.
                keep = 1 if self._buf[-1:] == MARKER[:1] else 0
                self._drop_noise(len(self._buf) - keep)
                return None
            head = markers[0]
            self._drop_noise(head - self._base)
            verdict, frame_end = verdicts.get(head, ("short", 0))
            if verdict == "ok":
                payload = bytes(self._buf[HEADER_SIZE : frame_end - self._base - _CRC.size])
                self._drop(frame_end - self._base)
                self.decoded += 1
                return payload
            if verdict == "short":
                later = self._intact_after(head)
                if later is None:
                    return None  # wait for more bytes
                self.dropped["truncated"] += 1
                self._drop_noise(later - self._base)
                continue
            self.dropped[verdict] += 1
            self._drop(1)  # skip this marker only: a real frame may start inside the bogus one

    def _intact_after(self, head: int) -> int | None:
        """Where a later complete, intact frame starts, if one is already buffered."""
        intact = self._intact
        while intact and intact[0] <= head:
            heapq.heappop(intact)
        return intact[0] if intact else None

    def _drop(self, count: int) -> None:
        del self._buf[:count]
        self._base += count

    def _drop_noise(self, count: int) -> None:
        if count > 0:
            self._drop(count)
            self.dropped["noise_bytes"] += count
