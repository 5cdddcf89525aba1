"""The messages between the agent and its checker process, and their framing on the
socket pair that joins them: a 4-byte big-endian length, then the message as JSON.

Agent -> checker: `Targets` (every probe to run, by id; at start, after a reload or an
operator's change, and to a restarted checker) and `AskResults`. Checker -> agent:
`Alive` (every ALIVE_EVERY s, so a checker that hangs is seen, with the number of
`Targets` taken so far: a take may be long, and the agent waits for it), `Verdicts` (only the
changes) and `Results` (the latest result of every probe, when asked: what the status
shows). Either side treats a message it cannot read as the end of the other.
"""

from __future__ import annotations

import asyncio
import functools
import json
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from hapair.core.shared_probes import Target

ALIVE_EVERY = 0.25  # s
MAX_MESSAGE = 64 << 20  # bytes: 100,000 targets' results take ~10 MB
_LENGTH = struct.Struct(">I")

# (probe id, ok, reason, latency in s); ok None: the attempt gave no verdict.
Entry = tuple[int, "bool | None", str, float]


class BadMessage(Exception):
    """A message that is not one of ours, or too long."""


@dataclass(frozen=True, slots=True)
class Targets:
    targets: dict[int, Target]


@dataclass(frozen=True, slots=True)
class AskResults:
    pass


@dataclass(frozen=True, slots=True)
class Alive:
    taken: int  # Targets messages taken so far


@dataclass(frozen=True, slots=True)
class Verdicts:
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class Results:
    entries: list[Entry]


Message = Targets | AskResults | Alive | Verdicts | Results


def encode(msg: Message) -> bytes:
    body: dict[str, Any]
    if isinstance(msg, Targets):
        probes: dict[Any, int] = {}  # many targets share one probe model: sent once
        rows = []
        for pid, t in msg.targets.items():
            index = probes.setdefault(t.probe, len(probes))
            rows.append([pid, index, str(t.address), t.port, t.start_up])
        body = {"t": "targets", "probes": [p.model_dump(mode="json") for p in probes], "rows": rows}
    elif isinstance(msg, Verdicts | Results):
        body = {"t": "verdicts" if isinstance(msg, Verdicts) else "results", "e": msg.entries}
    elif isinstance(msg, Alive):
        body = {"t": "alive", "n": msg.taken}
    else:
        body = {"t": "ask_results"}
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise BadMessage(f"a message of {len(data)} bytes (at most {MAX_MESSAGE})")
    return _LENGTH.pack(len(data)) + data


def decode(data: bytes) -> Message:
    try:
        body = json.loads(data)
        kind = body["t"]
        if kind == "alive":
            taken = body["n"]
            if type(taken) is not int or taken < 0:
                raise BadMessage(f"not a count: {str(taken)[:40]}")
            return Alive(taken)
        if kind == "ask_results":
            return AskResults()
        if kind in ("verdicts", "results"):
            entries = [_entry(e) for e in body["e"]]
            return Verdicts(entries) if kind == "verdicts" else Results(entries)
        if kind == "targets":
            return Targets(_targets(body["probes"], body["rows"]))
    except BadMessage:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise BadMessage(f"{type(exc).__name__}: {exc}") from None
    raise BadMessage(f"no message of type {str(kind)[:40]!r}")


def _entry(e: Any) -> Entry:
    pid, ok, reason, latency = e
    if (
        type(pid) is not int
        or ok not in (True, False, None)
        or type(reason) is not str
        or type(latency) not in (int, float)
    ):
        raise BadMessage(f"not a result: {str(e)[:80]}")
    return (pid, ok, reason, float(latency))


@functools.cache
def probe_adapter() -> Any:
    """The validator of a probe's fields (pydantic: made once, slow to import)."""
    from pydantic import TypeAdapter

    from hapair.config.checks import Probe

    return TypeAdapter(Probe)


def _targets(probes: Any, rows: Any) -> dict[int, Target]:
    from pydantic import ValidationError

    adapter = probe_adapter()
    try:
        models = [adapter.validate_python(p) for p in probes]
    except ValidationError as exc:
        raise BadMessage(f"a probe that is not valid: {exc.errors()[:1]}") from None
    out: dict[int, Target] = {}
    for pid, index, address, port, up in rows:
        if type(pid) is not int or type(index) is not int or index < 0 or type(up) is not bool:
            raise BadMessage(f"not a target: {str([pid, index, address, port, up])[:80]}")
        if type(port) is not int or not 0 < port < 65536:
            raise BadMessage(f"not a port: {port!r}")
        addr: IPv4Address | IPv6Address = ip_address(address)
        out[pid] = Target(models[index], addr, port, up)
    return out


async def send(writer: asyncio.StreamWriter, msg: Message) -> None:
    writer.write(encode(msg))
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Message:
    """The next message; IncompleteReadError at the end of the stream."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_MESSAGE:
        raise BadMessage(f"a message of {length} bytes (at most {MAX_MESSAGE})")
    return decode(await reader.readexactly(length))
