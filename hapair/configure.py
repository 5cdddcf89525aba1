"""The agent's side of the config commands (control socket and monitor): show, check,
history, apply and rollback of the running config file (config/store.py).

An apply is checked as `hapair check` does, then against the running agent as a reload
is (what needs a restart, this host's interfaces) before the file is written; then the
agent reloads as on SIGHUP, and when that reload is refused the file and the history
are put back: nothing changed. A pair file's change must reach the peer first; that
push is not available yet, so a pair file's apply and rollback are refused, changing
nothing.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from hapair import control
from hapair.config.store import Store, StoreError, changes_between

if TYPE_CHECKING:
    from hapair.agent import Agent

log = logging.getLogger("hapair")

NO_PEER_PUSH = (
    "this is a pair file: a change must reach the peer director first, and this hapair "
    "cannot push it to the peer yet; nothing was changed (edit the file on both directors "
    "and reload them with SIGHUP)"
)


def refused(reason: str, error: str, errors: list[str] | None = None) -> dict[str, Any]:
    """A refusal: `reason` is invalid (`errors`: path: message), stale, unknown, peer or
    reload (the running agent cannot take it; `errors` say why)."""
    return control.refusal(error) | {"reason": reason, "errors": errors or []}


async def handle(agent: Agent, request: control.Request, status: Any) -> dict[str, Any]:
    store = Store(agent.config_path, agent.cfg.node.state_dir)
    try:
        if request.cmd == "config_show":
            return {"ok": True, "result": _show(agent, store, status)}
        if request.cmd == "config_history":
            return {"ok": True, "result": {"versions": store.history()}}
        if request.cmd == "config_check":
            store.check(request.toml)
            text, _ = store.current()
            return {"ok": True, "result": {"changes": changes_between(text, request.toml)}}
        if agent.cfg.pair:
            return refused("peer", NO_PEER_PUSH)
        if request.cmd == "config_rollback":
            text = store.text_of(request.version)
            _, base = store.current()
            return await _apply(agent, store, text, request.user, base, request.version)
        return await _apply(agent, store, request.toml, request.user, request.version, None)
    except StoreError as exc:
        return refused(exc.reason, str(exc), exc.problems)
    except OSError as exc:
        return refused("reload", f"{exc.filename or agent.config_path}: {exc.strerror or exc}")


def _show(agent: Agent, store: Store, status: Any) -> dict[str, Any]:
    text, version = store.current()
    running = agent.cfg.version
    if running is not None and version != running:  # edited on disk, not reloaded yet
        with contextlib.suppress(StoreError):
            text, version = store.text_of(running), running
    config = status.get("config") if isinstance(status, dict) else None
    config = config if isinstance(config, dict) else {}
    peer_version = config.get("peer_version")
    in_sync = config.get("in_sync")
    return {
        "toml": text,
        "version": version,
        "pair": agent.cfg.pair,
        "peer": {
            "node": agent.cfg.peer_node,
            "version": peer_version if isinstance(peer_version, str) else None,
            "in_sync": in_sync if isinstance(in_sync, bool) else None,
        },
    }


async def _apply(
    agent: Agent, store: Store, text: str, user: str, base: str, rollback: str | None
) -> dict[str, Any]:
    configs = store.check(text)
    mine = next((c for c in configs if c.node.name == agent.cfg.node.name), configs[0])
    problems = await agent.refusals(mine)
    if problems:
        return refused(
            "reload", "the running agent cannot take this config", [str(p) for p in problems]
        )
    who = user or "-"
    applied = store.rollback(rollback, who, base) if rollback else store.apply(text, who, base)
    await agent._reload()
    outcome = agent.last_reload
    if outcome is None or not outcome["ok"]:
        store.undo(applied)
        why = str(outcome["error"] if outcome else "") or "reload refused"
        log.warning("config from %s refused by the reload; the file is as it was", who)
        return refused("reload", "the reload refused it; nothing changed", why.splitlines())
    log.info("config %s applied by %s: %s", applied.version[:12], who, "; ".join(applied.changes))
    result = {
        "version": applied.version,
        "applied": [agent.cfg.node.name],
        "changes": applied.changes,
    }
    return {"ok": True, "result": result}
