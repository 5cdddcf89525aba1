"""The serial deframer against its specification (tests/framing_reference.py): the same
payloads and counters for any stream cut into any reads, and work linear in the bytes
read whatever they are (a stream of false markers once cost 60x the CPU of noise)."""

from __future__ import annotations

import os
import random
import time

import pytest
from framing_reference import ReferenceDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from hapair.core.framing import MARKER, MAX_PAYLOAD, FrameDecoder, encode_frame

pytestmark = pytest.mark.unit

ADVERSARIAL = b"\xa5\x7e\x02\x00"  # a marker claiming a 512-byte frame, four bytes apart


def _pieces() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=40),
        st.sampled_from([MARKER, MARKER + b"\x00", MARKER[:1], ADVERSARIAL, MARKER + b"\xff\xff"]),
        st.binary(max_size=MAX_PAYLOAD).map(encode_frame),
        st.binary(min_size=1, max_size=60).map(lambda p: encode_frame(p)[: len(p) // 2 + 3]),
        st.builds(lambda n: ADVERSARIAL * n, st.integers(1, 200)),
    )


def _feed(decoder: FrameDecoder | ReferenceDecoder, stream: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    start = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = max(start, cut)
    return out


@settings(max_examples=1500, deadline=None)
@given(st.lists(_pieces(), max_size=12).map(b"".join), st.lists(st.integers(0, 10**6), max_size=40))
def test_same_payloads_and_counts_as_the_specification(stream: bytes, cuts: list[int]) -> None:
    new, reference = FrameDecoder(), ReferenceDecoder()
    assert _feed(new, stream, cuts) == _feed(reference, stream, cuts)
    assert (new.dropped, new.decoded, new.buffered) == (
        reference.dropped,
        reference.decoded,
        reference.buffered,
    )


def test_one_byte_at_a_time_matches_the_specification() -> None:
    rng = random.Random(7)
    stream = b"".join(
        rng.choice([ADVERSARIAL * 50, encode_frame(os.urandom(rng.randrange(100))), os.urandom(9)])
        for _ in range(40)
    )
    new, reference = FrameDecoder(), ReferenceDecoder()
    got = [p for b in stream for p in new.feed(bytes([b]))]
    assert got == [p for b in stream for p in reference.feed(bytes([b]))]
    assert new.dropped == reference.dropped


def _cpu_per_byte(stream: bytes) -> float:
    """CPU seconds per byte to decode `stream` read one byte at a time; best of three."""
    best = float("inf")
    for _ in range(3):
        decoder = FrameDecoder()
        feed = decoder.feed
        start = time.process_time()
        for i in range(len(stream)):
            feed(stream[i : i + 1])
        best = min(best, time.process_time() - start)
    return best / len(stream)


def test_false_markers_cost_about_what_noise_costs() -> None:
    """`a5 7e 02 00` repeated, one byte per read (each marker claims a frame 128 markers
    long): the first decoder spent ~60x the CPU per byte of random noise on it (~30 kB/s,
    ~78 % of a core at 230400 baud); now every marker is judged once."""
    size = 40_000
    noise = _cpu_per_byte(random.Random(1).randbytes(size))
    adversarial = _cpu_per_byte(ADVERSARIAL * (size // 4))
    print(f"per byte: noise {noise * 1e6:.2f} us, false markers {adversarial * 1e6:.2f} us")
    assert adversarial < 5 * noise
