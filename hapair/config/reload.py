"""What a reload (SIGHUP) may change, and what only a restart does.

Pure: compares two checked configs. The agent opens the heartbeat links, the control
socket, the monitor's listener, the IPVS sync daemon and its state files once, at start;
a reload that changes any of them is refused as a whole (nothing changes), and says
which keys need the restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hapair.config.model import Config
from hapair.config.rules import Problem

# Keys read once at start, as (path, what to compare).
_AT_START: tuple[tuple[str, Any], ...] = (
    ("node.name", lambda c: c.node.name),
    ("node.control_socket", lambda c: str(c.node.socket_path)),
    ("node.state_dir", lambda c: str(c.node.state_dir)),
    ("node.realtime_priority", lambda c: c.node.realtime_priority),
    ("cluster.links", lambda c: [link.model_dump(mode="json") for link in c.cluster.links]),
    ("sync", lambda c: c.sync and c.sync.model_dump(mode="json")),
    ("monitor", lambda c: c.monitor and c.monitor.model_dump(mode="json")),
    ("alerts.spool_dir", lambda c: c.alerts and c.alerts.spool_dir and str(c.alerts.spool_dir)),
)
MAX_SHOWN = 60  # characters of a value in a message


def restart_needed(old: Config, new: Config) -> list[Problem]:
    """Every change from `old` to `new` that a running agent cannot take."""
    problems = [
        Problem(path, f"{_shown(a)} -> {_shown(b)}: changes only with a restart")
        for key, value in _AT_START
        for path, a, b in _differences(key, value(old), value(new))
    ]
    if new.services and not _opens_ipvs(old):
        problems.append(
            Problem(
                "services",
                "the running agent has no IPVS (it had no services and no sync at start): "
                "services are added with a restart",
            )
        )
    return problems


def _opens_ipvs(cfg: Config) -> bool:
    return bool(cfg.services) or bool(cfg.sync and cfg.sync.enabled)


def _differences(path: str, a: Any, b: Any) -> Iterator[tuple[str, Any, Any]]:
    """(path, old, new) of each leaf that differs; a whole entry where one side lacks it."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            yield from _differences(f"{path}.{key}", a.get(key), b.get(key))
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            yield from _differences(
                f"{path}.{i}", a[i] if i < len(a) else None, b[i] if i < len(b) else None
            )
    elif a != b:
        yield path, a, b


def _shown(value: Any) -> str:
    text = "(none)" if value is None else repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
