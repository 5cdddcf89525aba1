"""What the import says about a statement it did not carry over, and the comments it
leaves in the output for the operator (keyed by the TOML path they stand before)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hapair.keepalived.parse import Statement


@dataclass(frozen=True, slots=True)
class Report:
    file: str
    line: int
    statement: str
    why: str
    changes_behaviour: bool

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.statement}: {self.why}"


@dataclass(slots=True)
class Notes:
    reports: list[Report] = field(default_factory=list)
    comments: dict[str, list[str]] = field(default_factory=dict)  # TOML path -> lines

    def drop(self, st: Statement, why: str, changes: bool = True, at: str | None = None) -> None:
        """`st` is not carried over; with `at`, a comment there says so."""
        self.reports.append(Report(st.file, st.line, st.text(), why, changes))
        if at is not None:
            self.comment(at, f"LOOK: keepalived {st.file}:{st.line} `{st.text()}`: {why}")

    def comment(self, path: str, text: str) -> None:
        lines = self.comments.setdefault(path, [])
        if text not in lines:
            lines.append(text)

    @property
    def changes_behaviour(self) -> bool:
        return any(r.changes_behaviour for r in self.reports)


def number(notes: Notes, st: Statement, low: float, high: float, index: int = 1) -> float | None:
    """The statement's `index`th word as a number in [low, high], or None reported."""
    try:
        value = float(st.words[index])
    except (IndexError, ValueError):
        notes.drop(st, "expected a number")
        return None
    if not low <= value <= high:
        notes.drop(st, f"{value:g} is outside {low:g}..{high:g}")
        return None
    return value


def integer(notes: Notes, st: Statement, low: int, high: int, index: int = 1) -> int | None:
    value = number(notes, st, low, high, index)
    if value is not None and value != int(value):
        notes.drop(st, "expected a whole number")
        return None
    return None if value is None else int(value)


def duration(seconds: float) -> str:
    """Seconds as hapair writes a duration: "1s", "150ms"."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
