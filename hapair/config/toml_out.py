"""A small TOML writer for what tomllib reads back as the same document: tables,
arrays of tables, strings (and paths), numbers, booleans, dates and arrays (lists or
tuples). Comments are not kept. The one writer: `hapair config merge` and the lab's
director configs use it."""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Mapping
from typing import Any

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def to_toml(doc: Mapping[str, Any]) -> str:
    out: list[str] = []
    _table(out, "", doc)
    return "\n".join(out).lstrip("\n") + "\n"


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else _string(key)


def _tables(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(v, Mapping) for v in value)
    )


def _table(out: list[str], path: str, table: Mapping[str, Any]) -> None:
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _tables(value):
            out.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        inner = f"{path}.{_key(key)}" if path else _key(key)
        if isinstance(value, Mapping):
            out += ["", f"[{inner}]"]
            _table(out, inner, value)
        elif _tables(value):
            for item in value:
                out += ["", f"[[{inner}]]"]
                _table(out, inner, item)


def _string(text: str) -> str:
    chars = (
        _ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
        for c in text
    )
    return '"' + "".join(chars) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str | os.PathLike):
        return _string(os.fspath(value))
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_value, value)) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")
