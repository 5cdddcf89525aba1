"""The running config file's versions: a new text is checked as `hapair check` does
before anything is written, written atomically (keeping the file's mode and owner), and
every version applied is kept under `<node.state_dir>/config-history/` (`<version>.toml`
and `index.json`, newest first, the last KEEP of them).

Pure file work: the agent reloads after `apply` and calls `undo` when the reload is
refused, so that nothing changed.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hapair import host
from hapair.config import MAX_BYTES, Config, ConfigError, parse_all, version_of

KEEP = 20  # versions kept in the history
MAX_CHANGES = 200  # lines of `changes`
MAX_SUMMARY = 200  # characters of a history entry's summary
MAX_USER = 64
HISTORY_DIR = "config-history"
VERSION = re.compile(r"[0-9a-f]{64}")


class StoreError(Exception):
    """A change refused before anything was written. `reason`: "stale" (the base version
    is not the running one), "invalid" (`problems` are `path: message` lines), "unknown"
    (no such version in the history)."""

    def __init__(self, reason: str, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.problems = problems or []


@dataclass(frozen=True, slots=True)
class Applied:
    """A change written: the new version, what it changed, and what `undo` puts back."""

    version: str
    configs: list[Config]
    changes: list[str]
    old_text: str
    old_index: list[dict[str, Any]]


class Store:
    def __init__(self, path: Path, state_dir: Path, keep: int = KEEP) -> None:
        self.path = path
        self.dir = state_dir / HISTORY_DIR
        self.keep = keep

    # Reading.

    def current(self) -> tuple[str, str]:
        """The file's text and version, as on disk now."""
        with open(self.path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        return data.decode("utf-8", errors="replace"), version_of(data)

    def history(self) -> list[dict[str, Any]]:
        """The versions kept, newest first: {version, time, user, summary}."""
        try:
            with open(self.dir / "index.json", "rb") as f:
                entries = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            return []
        if not isinstance(entries, list):
            return []
        return [
            e
            for e in entries
            if isinstance(e, dict)
            and isinstance(e.get("version"), str)
            and VERSION.fullmatch(e["version"])
        ]

    def text_of(self, version: str) -> str:
        """A kept version's text; StoreError("unknown") when there is none."""
        if VERSION.fullmatch(version) is None:
            raise StoreError("unknown", "a version is 64 hexadecimal digits (SHA-256)")
        try:
            data = (self.dir / f"{version}.toml").read_bytes()[: MAX_BYTES + 1]
        except OSError:
            raise StoreError("unknown", f"no version {version} in the history") from None
        if version_of(data) != version:
            raise StoreError("unknown", f"the history's copy of {version} is damaged")
        return data.decode()

    def check(self, text: str) -> list[Config]:
        """Every director's config of `text`, as `hapair check` checks it beside the
        running file; StoreError("invalid") with every problem."""
        try:
            return parse_all(text.encode(), base_dir=self.path.parent)
        except ConfigError as exc:
            raise StoreError(
                "invalid", "the config is not valid", [str(p) for p in exc.problems]
            ) from None

    # Changing.

    def expect(self, base_version: str, version: str | None = None) -> None:
        """StoreError("stale") unless the file is at `base_version` (`version`: its
        version, when the caller has just read it)."""
        version = version or self.current()[1]
        if base_version != version:
            raise StoreError(
                "stale",
                f"the config changed since this edit began: it is at {version[:12]}, "
                f"not {base_version[:12]}; start again from the running config",
            )

    def apply(self, text: str, user: str, base_version: str, summary: str | None = None) -> Applied:
        """Check `text`, then write it as the file and keep it in the history. Refused
        (StoreError, nothing written) when it is invalid or when `base_version` is not
        the version of the file now."""
        configs = self.check(text)
        old_text, old_version = self.current()
        self.expect(base_version, old_version)
        new_version = version_of(text.encode())
        changes = changes_between(old_text, text)
        old_index = self.history()
        index = list(old_index)
        if not any(e["version"] == old_version for e in index):  # edited by hand before
            self._keep_text(old_version, old_text)
            index.append(_entry(old_version, "-", f"as found in {self.path}", time.time()))
        self._keep_text(new_version, text)
        head = summary or ("; ".join(changes) if changes else "no change")
        index = [e for e in index if e["version"] != new_version]
        index.insert(0, _entry(new_version, user, head, time.time()))
        host.atomic_write(self.path, text, keep_owner=True)
        self._save_index(index)
        return Applied(new_version, configs, changes, old_text, old_index)

    def rollback(self, version: str, user: str, base_version: str) -> Applied:
        """The kept `version`'s text becomes the new version (checked as any)."""
        text = self.text_of(version)
        return self.apply(text, user, base_version, summary=f"rollback to {version[:12]}")

    def undo(self, applied: Applied) -> None:
        """Put back the file and the history as they were before `applied`."""
        host.atomic_write(self.path, applied.old_text, keep_owner=True)
        self._save_index(applied.old_index)

    def _keep_text(self, version: str, text: str) -> None:
        host.atomic_write(self.dir / f"{version}.toml", text)

    def _save_index(self, index: list[dict[str, Any]]) -> None:
        kept = index[: self.keep]
        host.atomic_write(self.dir / "index.json", json.dumps(kept, indent=1) + "\n")
        wanted = {f"{e['version']}.toml" for e in kept}
        for path in self.dir.glob("*.toml"):
            if path.name not in wanted:
                with contextlib.suppress(OSError):
                    path.unlink()


def _entry(version: str, user: str, summary: str, when: float) -> dict[str, Any]:
    if len(summary) > MAX_SUMMARY:
        summary = summary[: MAX_SUMMARY - 3] + "..."
    return {"version": version, "time": round(when, 3), "user": user[:MAX_USER], "summary": summary}


# What a change changes, for people.


def changes_between(old_text: str, new_text: str) -> list[str]:
    """One readable line per change from `old_text` to `new_text`: services, real servers,
    VIPs, links and directors added, removed or changed by name; every other key that
    changed with its old and new value; a diff of the lines when only comments or layout
    changed (or a text is not TOML). At most MAX_CHANGES lines."""
    if old_text == new_text:
        return []
    try:
        old, new = tomllib.loads(old_text), tomllib.loads(new_text)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        return _line_diff(old_text, new_text)
    lines = changes_in(old, new)
    if not lines:
        lines = ["only comments or layout changed:", *_line_diff(old_text, new_text)]
    if len(lines) > MAX_CHANGES:
        lines = [*lines[: MAX_CHANGES - 1], f"... and {len(lines) - MAX_CHANGES + 1} more"]
    return lines


def changes_in(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`changes_between` of two parsed documents: one readable line per change."""
    lines: list[str] = []
    old, new = dict(old), dict(new)
    lines += _keyed(
        "service", old.pop("services", []), new.pop("services", []), _service_key, _service_diff
    )
    lines += _keyed("VIP", old.pop("vips", []), new.pop("vips", []), _vip_key, None)
    lines += _keyed("director", old.pop("nodes", []), new.pop("nodes", []), _name_key, None)
    old_cluster = dict(old.pop("cluster", {}) or {})
    new_cluster = dict(new.pop("cluster", {}) or {})
    lines += _keyed(
        "link", old_cluster.pop("links", []), new_cluster.pop("links", []), _link_key, None
    )
    lines += _leaves("cluster", old_cluster, new_cluster)
    for key in sorted(old.keys() | new.keys()):
        lines += _leaves(key, old.get(key), new.get(key))
    return lines


def _shown(value: Any) -> str:
    text = "(none)" if value is None else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _leaves(path: str, a: Any, b: Any, sep: str = ".") -> list[str]:
    """One line per leaf that differs: `path` and the keys under it, joined by `sep` at
    the first level (" " after an entry named in words: `real server 10.0.0.1 weight`)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(a.keys() | b.keys()):
            out += _leaves(f"{path}{sep}{key}", a.get(key), b.get(key))
        return out
    if a == b:
        return []
    if a is None:
        return [f"{path}: added {_shown(b)}"]
    if b is None:
        return [f"{path}: removed (was {_shown(a)})"]
    return [f"{path}: {_shown(a)} -> {_shown(b)}"]


def _name_key(entry: Any) -> str:
    return str(entry.get("name")) if isinstance(entry, dict) else _shown(entry)


def _service_key(entry: Any) -> str:
    return _name_key(entry)


def _vip_key(entry: Any) -> str:
    return str(entry.get("address")) if isinstance(entry, dict) else _shown(entry)


def _link_key(entry: Any) -> str:
    if not isinstance(entry, dict):
        return _shown(entry)
    where = entry.get("interface") or entry.get("device") or ""
    return f"{entry.get('type')} {where}".strip()


def _server_key(entry: Any) -> str:
    if not isinstance(entry, dict):
        return _shown(entry)
    port = entry.get("port")
    return str(entry.get("address")) + ("" if port is None else f":{port}")


def _service_diff(name: str, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    a, b = dict(a), dict(b)
    out = _keyed(
        f"service {name}: real server",
        a.pop("real_servers", []),
        b.pop("real_servers", []),
        _server_key,
        None,
    )
    return _leaves(f"service {name}", a, b) + out


def _keyed(what: str, olds: Any, news: Any, key: Any, inner: Any) -> list[str]:
    """Entries of two lists matched by `key`: added, removed, changed (by `inner`, or by
    their keys)."""
    olds = olds if isinstance(olds, list) else [olds]
    news = news if isinstance(news, list) else [news]
    a = {key(e): e for e in olds}
    b = {key(e): e for e in news}
    out = [f"{what} {k} added{_weight(b[k])}" for k in b if k not in a]
    out += [f"{what} {k} removed" for k in a if k not in b]
    for k in a:
        if k in b and a[k] != b[k]:
            if inner is not None and isinstance(a[k], dict) and isinstance(b[k], dict):
                out += inner(k, a[k], b[k])
            elif isinstance(a[k], dict) and isinstance(b[k], dict):
                out += _leaves(f"{what} {k}", a[k], b[k], sep=" ")
            else:
                out.append(f"{what} {k} changed")
    return out


def _weight(entry: Any) -> str:
    """A real server's weight, said when it is added with one."""
    weight = entry.get("weight") if isinstance(entry, dict) and "address" in entry else None
    return f" (weight {weight})" if isinstance(weight, int) else ""


def _line_diff(old_text: str, new_text: str) -> list[str]:
    diff = difflib.unified_diff(
        old_text.splitlines(), new_text.splitlines(), "running", "new", n=0, lineterm=""
    )
    return [line for line in diff if not line.startswith(("---", "+++"))][:MAX_CHANGES]
