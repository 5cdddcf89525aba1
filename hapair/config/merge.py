"""`hapair config merge A B`: two one-director files ([node]) made one pair file.

The part they share (all but [node] and [monitor] listen) must be the same in both;
each [node] becomes a [[nodes]] entry (name, priority, monitor_listen, its other keys).
Relative paths are kept as written, so they mean files beside the pair file, as they
did beside each input; inputs in different folders that use relative paths are refused,
since such a path would name a different file for each.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hapair.config import MAX_BYTES, PATH_KEYS, ConfigError, parse, parse_all
from hapair.config.store import changes_in
from hapair.config.toml_out import to_toml

REFUSED, INVALID = 1, 2


class MergeError(Exception):
    """Not merged: `code` REFUSED or INVALID, `lines` what to print."""

    def __init__(self, code: int, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.code = code
        self.lines = lines


@dataclass(frozen=True, slots=True)
class _Input:
    path: Path
    raw: dict[str, Any]
    dump: dict[str, Any]


def merge(a: Path, b: Path) -> str:
    """The pair file's text, or MergeError."""
    first, second = _input(a), _input(b)
    _same_folder(first, second)
    doc = pair_document(first.raw, second.raw, (str(a), str(b)))
    text = f"# A pair file: hapair config merge {a} {b}\n\n" + to_toml(doc)
    _same_views(text, first, second)
    return text


def pair_document(
    a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")
) -> dict[str, Any]:
    """The pair file of two one-director documents (as tomllib reads them), or
    MergeError (REFUSED) with every difference in what they share; `names` say which
    is which in the message."""
    shared = [_shared(a), _shared(b)]
    differences = changes_in(*shared)
    one, two = names
    if differences:
        head = f"hapair: {one} and {two} differ in what a pair shares ({one} -> {two}):"
        raise MergeError(REFUSED, [head, *(f"  {line}" for line in differences)])
    nodes = [_entry(a), _entry(b)]
    for key in ("name", "priority"):
        if nodes[0][key] == nodes[1][key]:
            raise MergeError(
                REFUSED, [f"hapair: {one} and {two} have the same node.{key} ({nodes[0][key]!r})"]
            )
    return {"nodes": nodes, **shared[0]}


def _input(path: Path) -> _Input:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise MergeError(INVALID, [f"{path}: {exc.strerror or exc}"]) from None
    if len(data) > MAX_BYTES:
        raise MergeError(INVALID, [f"{path}: larger than {MAX_BYTES} bytes; not a config file"])
    try:
        cfg = parse(data, base_dir=path.parent)
        raw = tomllib.loads(data.decode())
    except ConfigError as exc:
        raise MergeError(INVALID, [f"{path}: {p}" for p in exc.problems]) from None
    if "node" not in raw:
        raise MergeError(
            INVALID, [f"{path}: nodes: a pair file already; merge two files with [node]"]
        )
    return _Input(path, raw, _dump(cfg))


def _dump(cfg: Any) -> dict[str, Any]:
    dump: dict[str, Any] = cfg.model_dump()
    dump.pop("version", None)
    return dump


def _shared(raw: dict[str, Any]) -> dict[str, Any]:
    shared = copy.deepcopy({k: v for k, v in raw.items() if k != "node"})
    if isinstance(shared.get("monitor"), dict):
        shared["monitor"].pop("listen", None)
    return shared


def _entry(raw: dict[str, Any]) -> dict[str, Any]:
    node = dict(raw["node"])
    entry = {"name": node.pop("name"), "priority": node.pop("priority")}
    monitor = raw.get("monitor")
    if isinstance(monitor, dict) and "listen" in monitor:
        entry["monitor_listen"] = monitor["listen"]
    return entry | node


def _relative(raw: dict[str, Any]) -> list[str]:
    found = []
    for *sections, key in sorted(PATH_KEYS):
        table: Any = raw
        for section in sections:
            table = table.get(section) if isinstance(table, dict) else None
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            found.append(f"{'.'.join([*sections, key])} = {value!r}")
    return found


def _same_folder(a: _Input, b: _Input) -> None:
    if a.path.resolve().parent == b.path.resolve().parent:
        return
    lines = [f"{i.path}: {use}" for i in (a, b) for use in _relative(i.raw)]
    if lines:
        raise MergeError(
            REFUSED,
            [
                f"hapair: {a.path} and {b.path} are in different folders and use relative "
                "paths, which would name a different file for each; put both files in one "
                "folder or make these paths absolute:",
                *(f"  {line}" for line in lines),
            ],
        )


def _same_views(text: str, a: _Input, b: _Input) -> None:
    """The pair file, as each director sees it, is that director's file."""
    try:
        views = parse_all(text, base_dir=a.path.parent)
    except ConfigError as exc:
        raise MergeError(REFUSED, [f"merged: {p}" for p in exc.problems]) from None
    for view, original in zip(views, (a, b), strict=True):
        if _dump(view) != original.dump:
            raise MergeError(
                REFUSED, [f"hapair: the pair file would change {original.path} (a bug in hapair)"]
            )
