"""Loading and validating hapair's TOML configuration.

`load(path)` returns a frozen `Config` or raises `ConfigError` carrying every
problem found, each as `path.to.field: message`. Loading never changes the system.
"""

from __future__ import annotations

import hapair.config.no_plugins  # noqa: F401  (first: before pydantic)

# isort: split
import copy
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hapair.config.model import Config, Service
from hapair.config.rules import Problem, check

__all__ = ["Config", "ConfigError", "Problem", "Service", "load", "parse", "validate"]

MAX_BYTES = 1 << 20
MAX_DEPTH = 16  # tables and arrays within each other; hapair's own schema needs 5
# Discriminator values pydantic puts into error locations of tagged unions.
_TAGS = {"udp", "serial", "icmp", "tcp", "http", "https", "smtp", "dns", "script", "interface"}
_UNION_LISTS = {"links", "track"}  # lists whose entries are tagged by `type`
# Relative paths in these keys are relative to the config file's folder.
_PATH_KEYS = {
    ("cluster", "auth_key_file"),
    ("monitor", "tls_cert"),
    ("monitor", "tls_key"),
    ("monitor", "users_file"),
    ("alerts", "spool_dir"),
    ("alerts", "email", "password_file"),
    ("node", "state_dir"),
}
UNCHECKED = "cannot be checked (a bug in hapair; please report it)"
_MESSAGES = {
    "extra_forbidden": "unknown key (a typo?)",
    "missing": "required",
}


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError([Problem(str(path), exc.strerror or str(exc))]) from None
    if len(data) > MAX_BYTES:
        raise ConfigError([Problem(str(path), f"larger than {MAX_BYTES} bytes; not a config file")])
    return parse(data, base_dir=path.parent)


def parse(data: bytes | str, *, base_dir: Path = Path(".")) -> Config:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        raw = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem("toml", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("toml", f"syntax error: {exc}")]) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(
            [Problem("toml", f"nested more than {MAX_DEPTH} levels deep; not a config file")]
        ) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise ConfigError([Problem("toml", f"cannot be read: {exc}")]) from None
    return validate(raw, base_dir=base_dir)


def validate(raw: dict[str, Any], *, base_dir: Path = Path(".")) -> Config:
    """A parsed TOML document (a dict, as tomllib returns it) -> Config."""
    problems = list(_shape(raw))
    if problems:
        raise ConfigError(problems)
    try:
        raw = copy.deepcopy(raw)
        _resolve_paths(raw, base_dir)
        try:
            cfg = Config.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError([_problem(e) for e in exc.errors()]) from None
        problems = check(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # a bug of ours; the fuzz tests make sure none is left
        raise ConfigError([Problem("(top)", f"{UNCHECKED}: {type(exc).__name__}: {exc}")]) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def _shape(raw: object) -> Iterator[Problem]:
    """What no config holds, found before anything recursive sees it: nesting deeper than
    MAX_DEPTH and integers beyond 64 bits. Iterative, so no input can exhaust the stack."""
    stack: list[tuple[str, object, int]] = [("", raw, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                yield Problem(path or "(top)", f"nested more than {MAX_DEPTH} levels deep")
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((f"{path}.{key}" if path else str(key), item, depth + 1))
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not (-(2**63) <= value < 2**63)
        ):
            yield Problem(path, "a number far out of range (more than 64 bits)")


def _resolve_paths(raw: dict[str, Any], base_dir: Path) -> None:
    for *sections, key in _PATH_KEYS:
        table: Any = raw
        for section in sections:
            table = table.get(section) if isinstance(table, dict) else None
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key]:
            table[key] = str(base_dir / table[key])


def _is_tag(loc: tuple[Any, ...], i: int) -> bool:
    """Whether loc[i] is the discriminator pydantic adds after a tagged union's place
    (`cluster.links.0.<udp>.port`), not a field that has the same name as a tag."""
    if loc[i] not in _TAGS or i == 0:
        return False
    if loc[i - 1] == "probe":
        return True
    return isinstance(loc[i - 1], int) and i >= 2 and loc[i - 2] in _UNION_LISTS


def _problem(error: Any) -> Problem:
    loc = error["loc"]
    parts = [str(part) for i, part in enumerate(loc) if not _is_tag(loc, i)]
    message = _MESSAGES.get(error["type"]) or error["msg"].removeprefix("Value error, ")
    if error["type"] == "union_tag_invalid":
        ctx = error.get("ctx", {})
        message = f"unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    return Problem(".".join(parts) or "(top)", message)
