"""Fuzz campaigns with a fixed budget, run in CI: the inputs that come from outside.

Each campaign is seeded (the same inputs every run, so a failure is reproducible) and
prints how many inputs it tried; HAPAIR_FUZZ=N multiplies the budget for a longer run.
The control socket and the monitor's API bodies are fuzzed against a running agent in
tests/netns/test_hostile_input.py.
"""

from __future__ import annotations

import copy
import os
import random
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hapair.config import UNCHECKED, Config, ConfigError, parse, validate
from hapair.core.framing import MARKER, MAX_PAYLOAD, FrameDecoder, encode_frame
from hapair.core.heartbeat import Dropped, Flag, Heartbeat, decode, encode
from hapair.core.states import State

pytestmark = pytest.mark.unit

SCALE = int(os.environ.get("HAPAIR_FUZZ", "1"))
ETC = Path(__file__).resolve().parents[2] / "etc"
PROBLEM = re.compile(r"[^\s:]+: \S.*")
KEY = b"k" * 32


def test_heartbeat_decoder_takes_nothing_it_did_not_sign() -> None:
    """Random datagrams and mutations of genuine ones (bit flips, cuts, growth, splices):
    decode never raises, and accepts a datagram only if it is a genuine one, unchanged."""
    rng = random.Random(16)
    genuine = [
        encode(
            Heartbeat(
                51, f"lvs{i}", 100 + i, State.MASTER, Flag(i % 8), 10**18 + i, i, 0, b"d" * 8
            ),
            KEY,
        )
        for i in range(32)
    ]
    known = set(genuine)
    tried = 0
    for _ in range(150_000 * SCALE):
        data = bytearray(rng.choice(genuine))
        kind = rng.randrange(6)
        if kind == 0:
            data = bytearray(rng.randbytes(rng.randrange(120)))
        elif kind == 1:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 2:
            del data[rng.randrange(len(data)) :]
        elif kind == 3:
            data += rng.randbytes(rng.randrange(1, 40))
        elif kind == 4:
            other = rng.choice(genuine)
            cut = rng.randrange(len(data))
            data = data[:cut] + other[cut:]
        else:
            data[rng.randrange(len(data))] = rng.randrange(256)
        for cluster in (51, rng.randrange(256)):
            result = decode(bytes(data), key=KEY, cluster=cluster)
            tried += 1
            assert isinstance(result, Heartbeat | Dropped)
            if isinstance(result, Heartbeat):
                assert bytes(data) in known
    print(f"heartbeat decoder: {tried} datagrams")


def test_serial_deframer_survives_any_stream() -> None:
    """Noisy streams dense with false markers, half frames and genuine frames, cut into
    reads of any size: no exception, a bounded buffer, and the stream's last clean frames
    are delivered (the first after the junk may be lost: a half frame whose missing CRC
    bytes happen to equal its first bytes takes them, 1 time in 256 per byte)."""
    rng = random.Random(9)
    streams = total = 0
    for _ in range(4000 * SCALE):
        parts: list[bytes] = []
        for _ in range(rng.randrange(1, 30)):
            kind = rng.randrange(7)
            if kind == 0:
                parts.append(rng.randbytes(rng.randrange(200)))
            elif kind == 1:
                parts.append(MARKER * rng.randrange(1, 50))
            elif kind == 2:
                parts.append((MARKER + rng.randbytes(2)) * rng.randrange(1, 60))
            elif kind == 3:
                frame = encode_frame(rng.randbytes(rng.randrange(MAX_PAYLOAD)))
                parts.append(frame[: rng.randrange(len(frame))])
            else:
                payload = rng.randbytes(rng.randrange(64))
                parts.append(encode_frame(payload))
        tail = [encode_frame(b"clean %d" % i) for i in range(3)]
        stream = b"".join(parts + tail)
        decoder = FrameDecoder()
        got: list[bytes] = []
        i = 0
        while i < len(stream):
            n = rng.choice((1, 2, 3, 7, 64, 600, 5000))
            got += decoder.feed(stream[i : i + n])
            i += n
            assert decoder.buffered <= 2 * (MAX_PAYLOAD + 8) + 5000
        assert got[-2:] == [b"clean 1", b"clean 2"]
        streams += 1
        total += len(stream)
    print(f"serial deframer: {streams} streams, {total} bytes")


# Values an attacker or a careless operator puts into a config file, as TOML text.
HOSTILE_VALUES = [
    "true",
    "false",
    "0",
    "-1",
    "1e-9",
    "1e999",
    "-inf",
    "nan",
    "9" * 30,
    "9" * 400,
    "-" + "9" * 19,
    "0x7fffffffffffffff",
    '""',
    '"\\u0000"',
    '"a\\nb"',
    '"a\\r\\nX: 1"',
    '"' + "x" * 5000 + '"',
    '"1000000000h"',
    '"-1s"',
    '"/"',
    '"../../etc/shadow"',
    '"0.0.0.0:0"',
    '"[::1]:99999"',
    '"10.0.0.1/0"',
    '"ff02::1/128"',
    '"127.0.0.1"',
    "[]",
    "[1, 2, 3]",
    '["a", "b"]',
    "[" * 40 + "]" * 40,
    "{}",
    "{a = 1}",
    "{" * 1 + " type = 'tcp' }",
    "1979-05-27T07:32:00Z",
    "07:32:00",
]
HOSTILE_LINES = [
    "[[services]]",
    "[[vips]]",
    "[[cluster.links]]",
    "[node]",
    "[" + ".".join(["a"] * 40) + "]",
    "x = " + "[" * 300 + "]" * 300,
    "x = " + "{a = " * 200 + "1" + "}" * 200,
    "type = 'icmp'",
    "weight = true",
    "persistence = 99999999999",
]
KEY_VALUE = re.compile(r"^(\s*[A-Za-z_][\w.]*\s*=\s*)(.+?)(\s*#.*)?$")


def _mutate(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    for _ in range(rng.randrange(1, 4)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        kind = rng.randrange(8)
        match = KEY_VALUE.match(lines[i])
        if kind <= 2 and match:
            lines[i] = match.group(1) + rng.choice(HOSTILE_VALUES)
        elif kind == 3:
            del lines[i]
        elif kind == 4:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif kind == 5:
            lines.insert(i, rng.choice(HOSTILE_LINES))
        elif kind == 6 and lines[i]:
            chars = list(lines[i])
            chars[rng.randrange(len(chars))] = chr(
                rng.choice([0, 9, 10, 13, 34, 39, 91, 93, 61, 0xFFFF, rng.randrange(32, 127)])
            )
            lines[i] = "".join(chars)
        else:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines) + "\n"


def _assert_clean(outcome: Config | ConfigError, text: str) -> None:
    if isinstance(outcome, ConfigError):
        problems = [str(p) for p in outcome.problems]
        assert problems, text
        for problem in problems:
            assert PROBLEM.fullmatch(problem), (problem, text[:2000])
            assert UNCHECKED not in problem, (problem, text[:2000])


def test_config_loader_on_mutations_of_the_examples(etc: Path) -> None:
    """Mutations of etc/*.toml (hostile values, lines deleted, doubled, swapped, garbled,
    tables nested deep): every one loads or is refused with `path: message` lines, never
    an exception (that `hapair check` would show as a traceback)."""
    rng = random.Random(5)
    examples = [p.read_text() for p in sorted(ETC.glob("*.toml"))]
    outcomes = {"valid": 0, "refused": 0}
    for _ in range(10_000 * SCALE):
        text = _mutate(rng, rng.choice(examples))
        try:
            outcome: Config | ConfigError = parse(text, base_dir=etc)
        except ConfigError as exc:
            outcome = exc
        _assert_clean(outcome, text)
        outcomes["valid" if isinstance(outcome, Config) else "refused"] += 1
    print(f"config mutations: {sum(outcomes.values())} files, {outcomes}")
    assert outcomes["valid"] > 0 and outcomes["refused"] > 0


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 20 else 6)
    if kind == 0:
        return rng.choice([True, False])
    if kind == 1:
        return rng.choice(
            [0, -1, 1, 2**31, 2**32, 2**63, -(2**64), 10**400, rng.randrange(-9, 70000)]
        )
    if kind == 2:
        return rng.choice([0.0, -0.5, 1e-9, 1e308, float("inf"), float("nan"), rng.random() * 100])
    if kind == 3:
        return rng.choice(
            ["", "\x00", "a\nb", "x" * 3000, "1000000000h", "eth0\n", "10.0.0.1/0", "tcp", "udp"]
        )
    if kind == 4:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(12)))
    if kind == 5:
        return None  # deletes the key
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {
        rng.choice(["type", "name", "a", "probe"]): _random_value(rng, depth + 1) for _ in range(2)
    }


def _places(raw: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    items = (
        raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else ()
    )
    for key, value in items:
        out += _places(value, (*path, key))
    return out


def test_config_validator_on_any_value_anywhere(etc: Path) -> None:
    """Any TOML-like value (deep lists and tables, huge and odd numbers, control
    characters) put in place of any key of the examples, or deleted."""
    rng = random.Random(6)
    examples = [tomllib.loads(p.read_text()) for p in sorted(ETC.glob("*.toml"))]
    tried = 0
    for _ in range(10_000 * SCALE):
        raw = copy.deepcopy(rng.choice(examples))
        for _ in range(rng.randrange(1, 3)):
            places = [p for p in _places(raw) if p]
            if not places:
                break
            *parent_path, key = rng.choice(places)
            parent = raw
            for part in parent_path:
                parent = parent[part]
            value = _random_value(rng)
            if value is None and isinstance(parent, dict):
                del parent[key]
            elif value is not None:
                parent[key] = value
        try:
            outcome: Config | ConfigError = validate(raw, base_dir=etc)
        except ConfigError as exc:
            outcome = exc
        _assert_clean(outcome, repr(raw)[:2000])
        tried += 1
    print(f"config values: {tried} documents")
