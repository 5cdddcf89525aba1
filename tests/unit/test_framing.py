"""The serial framing: round trips, frames cut anywhere, and resynchronisation after noise,
half-written frames and arbitrary junk."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hapair.core.framing import MARKER, MAX_PAYLOAD, FrameDecoder, encode_frame

pytestmark = pytest.mark.unit

PAYLOADS = [b"", b"x", b"heartbeat 1", MARKER * 10, bytes(range(256)) * 2]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_round_trip(payload: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(payload)) == [payload]
    assert decoder.buffered == 0
    assert not decoder.dropped


def test_several_frames_in_one_chunk() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(encode_frame(p) for p in PAYLOADS)) == PAYLOADS
    assert decoder.decoded == len(PAYLOADS)


def test_too_long_payload_is_refused_by_the_encoder() -> None:
    encode_frame(b"a" * MAX_PAYLOAD)
    with pytest.raises(ValueError, match="at most 512"):
        encode_frame(b"a" * (MAX_PAYLOAD + 1))


def test_split_at_every_byte_boundary() -> None:
    stream = encode_frame(b"first") + encode_frame(b"second frame")
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == [b"first", b"second frame"], cut
        assert not decoder.dropped


def test_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    got = [p for byte in encode_frame(b"slow line") * 3 for p in decoder.feed(bytes([byte]))]
    assert got == [b"slow line"] * 3


def test_noise_before_between_and_after_frames() -> None:
    decoder = FrameDecoder()
    stream = b"\x00\xff line noise" + encode_frame(b"a") + b"\xa5\xa5junk" + encode_frame(b"b")
    assert decoder.feed(stream + b"trailing") == [b"a", b"b"]
    assert decoder.dropped["noise_bytes"] > 0


def test_noise_inside_a_frame_loses_only_that_frame() -> None:
    damaged = bytearray(encode_frame(b"damaged payload"))
    damaged[8] ^= 0x40
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"a") + bytes(damaged) + encode_frame(b"b")) == [b"a", b"b"]
    assert decoder.dropped["bad_crc"] == 1


def test_false_marker_with_an_absurd_length_is_skipped() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(MARKER + b"\xff\xff" + encode_frame(b"ok")) == [b"ok"]
    assert decoder.dropped["bad_length"] == 1


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 10, 20])
def test_truncated_frame_followed_by_a_good_one(cut: int) -> None:
    """The cable was cut mid-frame: the next intact frame is delivered at once, without
    waiting for the bytes the half frame still claims."""
    half = encode_frame(b"x" * 100)[:cut]
    decoder = FrameDecoder()
    assert decoder.feed(half) == []
    assert decoder.feed(encode_frame(b"after the cut")) == [b"after the cut"]
    assert decoder.feed(encode_frame(b"next")) == [b"next"]


def test_buffer_stays_bounded() -> None:
    decoder = FrameDecoder()
    for _ in range(100):
        decoder.feed(MARKER + b"\x01\xf4" + b"\x00" * 300)
        assert decoder.buffered <= 2 * (MAX_PAYLOAD + 8)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(junk: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(junk)
    assert decoder.buffered <= MAX_PAYLOAD + 8


@settings(max_examples=500, deadline=None)
@given(
    junk=st.lists(
        st.one_of(st.binary(max_size=600), st.sampled_from([MARKER, MARKER + b"\x00"])),
        max_size=5,
    ).map(b"".join),
    payload=st.binary(max_size=MAX_PAYLOAD),
    chunk=st.integers(min_value=1, max_value=700),
)
def test_good_frame_after_arbitrary_junk_is_recovered(
    junk: bytes, payload: bytes, chunk: int
) -> None:
    """Junk may hold false markers and half frames claiming more bytes than follow; the
    good frame after it is delivered as soon as its last byte arrives."""
    decoder = FrameDecoder()
    stream = junk + encode_frame(payload)
    got: list[bytes] = []
    for i in range(0, len(stream), chunk):
        got += decoder.feed(stream[i : i + chunk])
    assert got[-1:] == [payload]
    assert decoder.feed(encode_frame(b"next")) == [b"next"]
