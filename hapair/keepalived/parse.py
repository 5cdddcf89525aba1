"""keepalived.conf(5) read as a tree of statements, each with its file and line.

Handled as keepalived does: `!` and `#` comments, "quoted" words, `{ }` blocks (the
`{` may end the line or stand on the next), a trailing `\\` continuing a line,
`include GLOB` relative to the including file, `$NAME=value` definitions and
`$NAME`/`${NAME}` substitution. An `@NAME` (or `@^NAME`) line is kept with its
condition; the converter decides, since it needs the router id.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_BYTES = 4 * 1024 * 1024  # a keepalived.conf is small; more is not one
MAX_INCLUDE_DEPTH = 8  # keepalived's own limit is similar; a loop must end
MAX_TOTAL_BYTES = 4 * MAX_BYTES  # every file read, includes counted each time: a file
# that includes itself twice a line would otherwise grow as lines ** depth
_DEFINE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_GLOB_CHARS = re.compile(r"[*?\[]")


class ParseError(Exception):
    """The input cannot be read or parsed; str() is `FILE:LINE: message`."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line, self.message = file, line, message


@dataclass(frozen=True, slots=True)
class Statement:
    file: str
    line: int
    words: tuple[str, ...]
    block: tuple[Statement, ...] | None = None  # None: no `{ }` followed
    condition: str | None = None  # `@NAME` -> "NAME", `@^NAME` -> "^NAME"

    @property
    def keyword(self) -> str:
        return self.words[0].lower() if self.words else ""

    @property
    def args(self) -> tuple[str, ...]:
        return self.words[1:]

    @property
    def children(self) -> tuple[Statement, ...]:
        return self.block or ()

    def text(self) -> str:
        """The statement as written, shortened, for a report."""
        shown = " ".join(self.words)
        return shown if len(shown) <= 60 else shown[:57] + "..."


@dataclass(slots=True)
class _Token:
    file: str
    line: int
    words: list[str]
    condition: str | None
    opens: bool = False
    closes: bool = False


Reader = Callable[[Path], bytes]


def read_disk(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_BYTES + 1)


def parse_file(
    path: str | Path, reader: Reader = read_disk, instance: str | None = None
) -> list[Statement]:
    """The top-level statements of `path` and what it includes, or ParseError.
    `instance` is the name an `@NAME $VAR=value` definition must have to apply."""
    path = Path(path)
    scope = _Scope(reader, {}, instance)
    return _tree(list(_lines(path, str(path), 1, scope, 0)), str(path))


def parse_text(text: str, name: str = "keepalived.conf") -> list[Statement]:
    """The statements of `text` (includes are refused: there is no folder)."""

    def no_files(p: Path) -> bytes:
        raise OSError(2, "No such file or directory")

    return _tree(list(_split(text, name, _Scope(no_files, {}, None), 0, Path("."))), name)


@dataclass(slots=True)
class _Scope:
    """What a whole parse shares: how files are read, the variables defined so far."""

    reader: Reader
    variables: dict[str, str]
    instance: str | None
    read: int = 0  # bytes read so far, against MAX_TOTAL_BYTES


def applies(condition: str | None, instance: str | None) -> bool:
    """Whether an `@NAME` (`@^NAME`: all but NAME) line applies when running as `instance`."""
    if condition is None:
        return True
    negated, name = condition.startswith("^"), condition.lstrip("^")
    return (name == instance) != negated


def _lines(path: Path, shown: str, line: int, scope: _Scope, depth: int) -> Iterator[_Token]:
    try:
        data = scope.reader(path)
    except OSError as exc:
        why = str(exc.strerror or exc)
        raise ParseError(shown, line, why if shown == str(path) else f"{path}: {why}") from None
    if len(data) > MAX_BYTES:
        raise ParseError(shown, line, f"{path}: larger than {MAX_BYTES} bytes")
    scope.read += len(data)
    if scope.read > MAX_TOTAL_BYTES:
        raise ParseError(
            shown, line, f"{path}: the includes read more than {MAX_TOTAL_BYTES} bytes"
        )
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        bad = data[: exc.start].count(b"\n") + 1
        raise ParseError(str(path), bad, "not UTF-8 text") from None
    yield from _split(text, str(path), scope, depth, path.parent)


def _split(text: str, name: str, scope: _Scope, depth: int, folder: Path) -> Iterator[_Token]:
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if pending:
            raw = pending + raw
        else:
            start = number
        if raw.endswith("\\") and not _words(_strip(raw[:-1]), name, start)[1]:
            pending = raw[:-1] + " "
            continue
        pending = ""
        yield from _line(raw, name, start, scope, depth, folder)
    if pending:
        yield from _line(pending, name, start, scope, depth, folder)


def _line(
    raw: str, name: str, number: int, scope: _Scope, depth: int, folder: Path
) -> Iterator[_Token]:
    stripped = raw.strip()
    condition = None
    if stripped.startswith("@"):
        head, _, stripped = stripped.partition(" ")
        condition = head[1:]
        if not condition.lstrip("^"):
            raise ParseError(name, number, f"{head!r}: a condition names a router id")
        stripped = stripped.strip()
    define = _DEFINE.fullmatch(stripped)
    if define:
        if applies(condition, scope.instance):
            scope.variables[define[1]] = _substitute(define[2].strip(), scope.variables)
        if condition is not None:  # kept, for the converter to report when it does not apply
            yield _Token(name, number, [stripped], condition)
        return
    words, unclosed = _words(_strip(_substitute(stripped, scope.variables)), name, number)
    if unclosed:
        raise ParseError(name, number, 'a quote (") is not closed on its line')
    if words and words[0].lower() == "include" and len(words) == 2 and condition is None:
        yield from _include(words[1], name, number, scope, depth, folder)
        return
    token = _Token(name, number, [], condition)
    for word in words:
        if word in ("{", "}"):
            if token.words or token.opens or token.closes:
                yield token
            token = _Token(name, number, [], condition, opens=word == "{", closes=word == "}")
            yield token
            token = _Token(name, number, [], condition)
        else:
            token.words.append(word)
    if token.words:
        yield token


def _include(
    pattern: str, name: str, number: int, scope: _Scope, depth: int, folder: Path
) -> Iterator[_Token]:
    if depth >= MAX_INCLUDE_DEPTH:
        raise ParseError(name, number, f"include {pattern}: nested more than {depth} deep")
    full = pattern if pattern.startswith("/") else str(folder / pattern)
    # A glob matching nothing is fine, as in keepalived; a missing file is not
    paths = sorted(glob.glob(full)) if _GLOB_CHARS.search(pattern) else [full]
    for found in paths:
        yield from _lines(Path(found), name, number, scope, depth + 1)


def _substitute(text: str, variables: dict[str, str]) -> str:
    # An undefined $NAME is left as written (a script's own variable, say).
    return _VAR.sub(lambda m: variables.get(m[1] or m[2], m[0]), text)


def _strip(text: str) -> str:
    """`text` without its comment (`!` or `#` outside quotes)."""
    quoted = False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char in "!#" and not quoted:
            return text[:i]
    return text


def _words(text: str, name: str, number: int) -> tuple[list[str], bool]:
    """The words of a line (`{` and `}` words of their own), and whether a quote is open."""
    words: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char in "{}":
            words.append(char)
            i += 1
        elif char == '"':
            end = text.find('"', i + 1)
            if end < 0:
                return words, True
            words.append(text[i + 1 : end])
            i = end + 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in '{}"':
                j += 1
            words.append(text[i:j])
            i = j
    return words, False


def _tree(tokens: list[_Token], name: str) -> list[Statement]:
    stack: list[tuple[_Token | None, list[Statement]]] = [(None, [])]
    last: _Token | None = None  # the statement a `{` would open
    for token in tokens:
        if token.opens:
            if last is None:
                raise ParseError(token.file, token.line, "'{' with no statement before it")
            stack[-1][1].pop()
            stack.append((last, []))
            last = None
        elif token.closes:
            opener, children = stack.pop() if len(stack) > 1 else (None, [])
            if opener is None:
                raise ParseError(token.file, token.line, "'}' closes no block")
            stack[-1][1].append(_statement(opener, tuple(children)))
            last = None
        else:
            stack[-1][1].append(_statement(token, None))
            last = token
    if len(stack) > 1:
        opener = stack[-1][0]
        assert opener is not None
        raise ParseError(
            opener.file, opener.line, f"{' '.join(opener.words)} {{: the block is never closed"
        )
    return stack[0][1]


def _statement(token: _Token, block: tuple[Statement, ...] | None) -> Statement:
    return Statement(token.file, token.line, tuple(token.words), block, token.condition)
