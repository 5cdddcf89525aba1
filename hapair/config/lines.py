"""Where in a TOML text a config path (`services.1.real_servers.0.port`, as a problem
names it) is written: its line, so that an editor can show each error at its line.

A small scanner of the lines, not a TOML parser: it follows table headers (`[a.b]`,
`[[a.b]]`, counting the entries of each array of tables) and `key = value` lines, which
is how hapair's configs are written. What it cannot place (inline tables, a key split
over lines, a key that is missing) gets the line of the nearest table it found, or None.
"""

from __future__ import annotations

import re

_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")


def _unquote(part: str) -> str:
    part = part.strip()
    return part[1:-1] if len(part) >= 2 and part[0] == part[-1] == '"' else part


def paths_and_lines(text: str) -> dict[str, int]:
    """Every table and key path the text writes, with its (1-based) line."""
    found: dict[str, int] = {}
    counts: dict[str, int] = {}  # an array of tables' path -> entries so far
    table = ""  # the current table's path, with array indices
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            names = [_unquote(p) for p in header.group(2).split(".")]
            path = ""
            for i, name in enumerate(names):
                path = f"{path}.{name}" if path else name
                last = i == len(names) - 1
                if last and header.group(1) == "[[":
                    index = counts.get(path, 0)
                    counts[path] = index + 1
                    path = f"{path}.{index}"
                elif not last and path in counts:
                    path = f"{path}.{counts[path] - 1}"  # a table of the latest entry
            table = path
            found.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            path = f"{table}.{_unquote(key.group(1))}" if table else _unquote(key.group(1))
            found.setdefault(path, number)
    return found


def line_of(text: str, path: str, found: dict[str, int] | None = None) -> int | None:
    """The line that writes `path`, or of the nearest table above it that is written;
    None when the text writes none of it."""
    found = paths_and_lines(text) if found is None else found
    parts = path.split(".")
    while parts:
        number = found.get(".".join(parts))
        if number is not None:
            return number
        parts.pop()
    return None


def lines_of_problems(text: str, problems: list[str]) -> list[int | None]:
    """The line of each `path: message` problem in `text` (a TOML syntax error says its
    own: `toml: syntax error: ... (at line N, column M)`)."""
    found = paths_and_lines(text)
    out: list[int | None] = []
    for problem in problems:
        path, _, message = problem.partition(": ")
        at = _AT_LINE.search(message) if path == "toml" else None
        out.append(int(at.group(1)) if at else line_of(text, path, found))
    return out
