"""Loading and validating hapair's TOML configuration.

`load(path)` returns a frozen `Config` or raises `ConfigError` carrying every
problem found, each as `path.to.field: message`. Loading never changes the system.

A file may describe one director (`[node]`) or the whole pair (two `[[nodes]]`
entries, the rest shared). A pair file is resolved into one director's view (its
entry becomes `[node]`, its `monitor_listen` the `[monitor]` listen) before the
checks, so every rule applies to it unchanged; problems in the entry are reported at
`nodes.N.<key>`.
"""

from __future__ import annotations

import hapair.config.no_plugins  # noqa: F401  (first: before pydantic)

# isort: split
import copy
import hashlib
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hapair.config.model import Config, Service
from hapair.config.rules import Problem, check

__all__ = [
    "Config",
    "ConfigError",
    "Problem",
    "Service",
    "host_name",
    "load",
    "load_all",
    "parse",
    "parse_all",
    "validate",
    "version_of",
]

MAX_BYTES = 1 << 20
MAX_DEPTH = 16  # tables and arrays within each other; hapair's own schema needs 5
# Discriminator values pydantic puts into error locations of tagged unions.
_TAGS = {"udp", "serial", "icmp", "tcp", "http", "https", "smtp", "dns", "script", "interface"}
_UNION_LISTS = {"links", "track"}  # lists whose entries are tagged by `type`
# Relative paths in these keys (and in a serial link's `device`) are relative to the
# config file's folder.
PATH_KEYS = {
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


def load(path: str | Path, node: str | None = None) -> Config:
    """One director's config. For a pair file, the entry named `node`, or, without
    it, the entry named like this host (`host_name()`); for a `[node]` file, `node`
    (when given) must be its name."""
    path = Path(path)
    return parse(_read(path), base_dir=path.parent, node=node)


def load_all(path: str | Path, node: str | None = None) -> list[Config]:
    """What `hapair check` checks: every director's config that the file describes
    (both entries of a pair file, the one of a `[node]` file), or the one named `node`.
    A problem in both directors' views is reported once."""
    path = Path(path)
    data = _read(path)
    return _resolve(_toml(data), path.parent, node, every=True, version=version_of(data))


def parse_all(data: bytes | str, *, base_dir: Path, node: str | None = None) -> list[Config]:
    """`load_all` of a file's content `data` that would live in the folder `base_dir`."""
    if len(data) > MAX_BYTES:
        raise ConfigError([Problem("toml", f"larger than {MAX_BYTES} bytes; not a config file")])
    return _resolve(_toml(data), base_dir, node, every=True, version=version_of(data))


def parse(data: bytes | str, *, base_dir: Path = Path("."), node: str | None = None) -> Config:
    raw = _toml(data)
    return _resolve(raw, base_dir, node, every=False, version=version_of(data))[0]


def validate(
    raw: dict[str, Any],
    *,
    base_dir: Path = Path("."),
    node: str | None = None,
    version: str | None = None,
) -> Config:
    """A parsed TOML document (a dict, as tomllib returns it) -> Config."""
    return _resolve(raw, base_dir, node, every=False, version=version)[0]


def version_of(data: bytes | str) -> str:
    """A config's version: the SHA-256 (hex) of the file's bytes."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def host_name() -> str:
    """This host's name up to the first dot: the pair file's entry it runs as by default."""
    return socket.gethostname().split(".", 1)[0]


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError([Problem(str(path), exc.strerror or str(exc))]) from None
    if len(data) > MAX_BYTES:
        raise ConfigError([Problem(str(path), f"larger than {MAX_BYTES} bytes; not a config file")])
    return data


def _toml(data: bytes | str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return tomllib.loads(text)
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


def _resolve(
    raw: dict[str, Any], base_dir: Path, node: str | None, *, every: bool, version: str | None
) -> list[Config]:
    """The configs of the directors asked for: the one named `node`; without it, every
    director (`every`) or the one of this host (a pair file) or of the file ([node])."""
    problems = list(_shape(raw))
    if problems:
        raise ConfigError(problems)
    if not isinstance(raw, dict) or "nodes" not in raw:
        cfg = _one(raw, base_dir)
        if node is not None and cfg.node.name != node:
            raise ConfigError(
                [Problem("node.name", f"{cfg.node.name!r}, but --node asks for {node!r}")]
            )
        return [_stamped(cfg, version, pair=False, peer=None)]
    entries = _entries(raw)
    problems = list(_pair_rules(entries))
    if node is None and every:
        chosen = list(range(len(entries)))
    else:
        wanted = host_name() if node is None else node
        chosen = [i for i, e in enumerate(entries) if e.get("name") == wanted][:1]
        if not chosen:
            named = ", ".join(repr(e.get("name")) for e in entries)
            how = "" if node is not None else ", as this host is named (give --node NAME)"
            problems.append(
                Problem("nodes", f"no entry is named {wanted!r}{how}; the entries are {named}")
            )
    configs: list[Config] = []
    for i in chosen:
        director, moved = _director(raw, entries, i)
        try:
            cfg = _one(director, base_dir)
        except ConfigError as exc:
            for problem in exc.problems:
                mapped = _entry_problem(problem, i, moved)
                if mapped not in problems:  # a shared section's, already seen
                    problems.append(mapped)
            continue
        other = entries[1 - i]
        shared = raw.get("monitor")
        listen = other.get(
            "monitor_listen", shared.get("listen") if isinstance(shared, dict) else None
        )
        configs.append(
            _stamped(cfg, version, pair=True, peer=other.get("name"), peer_monitor=listen)
        )
    if problems:
        raise ConfigError(problems)
    return configs


def _entries(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """A pair file's two `[[nodes]]` tables, or ConfigError."""
    if "node" in raw:
        raise ConfigError(
            [
                Problem(
                    "nodes",
                    "both [node] and [[nodes]]: a file describes one director ([node]) or "
                    "the pair (two [[nodes]]), not both",
                )
            ]
        )
    entries = raw["nodes"]
    if not isinstance(entries, list) or len(entries) != 2:
        given = f"{len(entries)} entries" if isinstance(entries, list) else "not a list"
        raise ConfigError(
            [
                Problem(
                    "nodes",
                    f"a pair is two directors: give exactly two [[nodes]] entries ({given})",
                )
            ]
        )
    problems = [
        Problem(f"nodes.{i}", "must be a table ([[nodes]] with name and priority)")
        for i, entry in enumerate(entries)
        if not isinstance(entry, dict)
    ]
    if problems:
        raise ConfigError(problems)
    return entries


def _pair_rules(entries: list[dict[str, Any]]) -> Iterator[Problem]:
    """The two directors of a pair differ in name and in priority."""
    a, b = entries
    if isinstance(a.get("name"), str) and a.get("name") == b.get("name"):
        yield Problem("nodes.1.name", f"{b['name']!r} is nodes.0's name too; each needs its own")
    pa, pb = a.get("priority"), b.get("priority")
    if type(pa) is int and type(pb) is int and pa == pb:
        yield Problem(
            "nodes.1.priority",
            f"{pb} is nodes.0's priority too; the directors need different priorities "
            "(the higher one is MASTER when both are up)",
        )


def _director(
    raw: dict[str, Any], entries: list[dict[str, Any]], i: int
) -> tuple[dict[str, Any], bool]:
    """Entry `i`'s one-director view of a pair file, and whether its `monitor_listen`
    became the `[monitor]` listen."""
    director = {key: value for key, value in raw.items() if key != "nodes"}
    entry = dict(entries[i])
    moved = "monitor_listen" in entry
    listen = entry.pop("monitor_listen", None)
    director["node"] = entry
    monitor = director.get("monitor")
    if moved and isinstance(monitor, dict):
        director["monitor"] = {**monitor, "listen": listen}
    elif moved and monitor is None:
        entry["monitor_listen"] = listen  # reported as unknown below: no [monitor]
        moved = False
    return director, moved


def _entry_problem(problem: Problem, i: int, moved: bool) -> Problem:
    """A problem in entry `i`'s view at the path of the pair file that holds the key."""
    path = problem.path
    if path == "node" or path.startswith("node."):
        rest = path.removeprefix("node")
        if rest == ".monitor_listen" and problem.message == _MESSAGES["extra_forbidden"]:
            return Problem(f"nodes.{i}.monitor_listen", "there is no [monitor] to listen for")
        return Problem(f"nodes.{i}{rest}", problem.message)
    if path == "monitor.listen" and problem.message == _MESSAGES["missing"]:
        return Problem(f"nodes.{i}.monitor_listen", "required, as [monitor] has no listen")
    if moved and (path == "monitor.listen" or path.startswith("monitor.listen.")):
        return Problem(
            f"nodes.{i}.monitor_listen{path.removeprefix('monitor.listen')}", problem.message
        )
    return problem


def _stamped(
    cfg: Config, version: str | None, *, pair: bool, peer: Any, peer_monitor: Any = None
) -> Config:
    cfg._version = version
    cfg._pair = pair
    cfg._peer_node = peer if isinstance(peer, str) else None
    cfg._peer_monitor = peer_monitor if isinstance(peer_monitor, str) else None
    return cfg


def _one(raw: Any, base_dir: Path) -> Config:
    """One director's view (a `[node]` file, or a pair file resolved) -> Config."""
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
    for *sections, key in PATH_KEYS:
        table: Any = raw
        for section in sections:
            table = table.get(section) if isinstance(table, dict) else None
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key]:
            table[key] = str(base_dir / table[key])
    # A serial link's device too: a pair file's copies in two folders (a lab on one host)
    # then name each its own; /dev/ttyS0 stays as it is.
    cluster = raw.get("cluster")
    links = cluster.get("links") if isinstance(cluster, dict) else None
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("type") == "serial":
            device = link.get("device")
            if isinstance(device, str) and device and not device.startswith("/"):
                link["device"] = str(base_dir / device)


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
