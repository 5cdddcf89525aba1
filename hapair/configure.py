"""The agent's side of the config commands (control socket and monitor): show, check,
history, apply and rollback of the running config file (config/store.py).

An apply is checked as `hapair check` does, then against the running agent as a reload
is (what needs a restart, this host's interfaces) before the file is written; then the
agent reloads as on SIGHUP, and when that reload is refused the file and the history
are put back: nothing changed.

A pair file's change (`change`, in the task of whoever asked, not in the agent's loop
of inputs) goes to the peer first, signed with the heartbeat key (monitor/peer.py),
which checks it as its own and reloads; only then is it applied here. When the peer
refuses it or cannot be reached, nothing changes on either director; when this
director then refuses it, the peer is rolled back to the version it ran. One change at
a time on each director: a second one, from here or from the peer, is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from hapair import control
from hapair.config import Config, version_of
from hapair.config.lines import lines_of_problems
from hapair.config.store import VERSION, Store, StoreError, changes_between
from hapair.status import config_of

if TYPE_CHECKING:
    from hapair.agent import Agent
    from hapair.monitor.peer import Pair

log = logging.getLogger("hapair")

CHANGES = frozenset(
    {"config_apply", "config_rollback", "config_apply_here", "config_rollback_here"}
)
OUTSIDE = CHANGES | {"config_show"}  # done outside the agent's loop of inputs (`change`)
SHOW_TIMEOUT = 3.0  # s for the peer to say which version it runs
BUSY = "another config change is being applied on this director; try again"


def refused(reason: str, error: str, errors: list[str] | None = None) -> dict[str, Any]:
    """A refusal: `reason` is invalid (`errors`: path: message), stale, unknown, busy,
    peer (the peer refused or cannot be reached) or reload (the running agent cannot
    take it; `errors` say why)."""
    return control.refusal(error) | {"reason": reason, "errors": errors or []}


async def change(agent: Agent, request: control.Request) -> dict[str, Any]:
    """A change (CHANGES) or a show, made outside the agent's loop of inputs: waiting
    for the peer must not hold up a heartbeat. Each local step is asked through the loop
    (`ask`). A change runs to its end even when the one who asked stops waiting."""
    if request.cmd == "config_show":
        await _ask_peer_version(agent)
        return await agent.ask(request)
    if agent.config_lock.locked():
        return refused("busy", BUSY)
    task = asyncio.create_task(_locked(agent, request), name=request.cmd)
    agent.tasks.append(task)
    task.add_done_callback(agent.tasks.remove)
    return await asyncio.shield(task)


async def _locked(agent: Agent, request: control.Request) -> dict[str, Any]:
    async with agent.config_lock:
        if request.cmd not in ("config_apply", "config_rollback") or not agent.cfg.pair:
            return await agent.ask(request)
        try:
            return await _pair_change(agent, request)
        except StoreError as exc:
            return _store_refusal(exc, request.toml)
        except OSError as exc:
            return refused("reload", f"{exc.filename or agent.config_path}: {exc.strerror}")
        except Exception as exc:  # a bug of ours must not take the agent down
            log.exception("config change")
            return control.refusal(f"internal error: {type(exc).__name__}: {exc}")


def _peer_runs(agent: Agent) -> str | None:
    """The version the peer runs, when known (status.config_of)."""
    return config_of(agent.cfg.version, agent.node, agent.peer_version)["peer_version"]


async def _ask_peer_version(agent: Agent) -> None:
    """When the peer's heartbeats say it runs another pair file, ask it which (the page
    shows both); what it says is kept as `agent.peer_version`."""
    from hapair.monitor.peer import PeerError, ask

    pair, where = pair_of(agent), agent.cfg.peer_monitor
    if pair is None or where is None or _wildcard(where) or agent.node.in_sync is not False:
        return
    try:
        reply = await ask(where, pair, {"cmd": "config_show_here"}, timeout=SHOW_TIMEOUT)
    except PeerError as exc:
        log.info("config: cannot ask %s which config it runs: %s", pair.peer, exc)
        return
    result = reply.get("result")
    version = result.get("version") if isinstance(result, dict) else None
    if isinstance(version, str) and VERSION.fullmatch(version):
        agent.peer_version = version


def _store_refusal(exc: StoreError, text: str) -> dict[str, Any]:
    """A refusal of the store's; an invalid text's errors with the line each is at
    (`lines`, None where none is), for the page's editor."""
    answer = refused(exc.reason, str(exc), exc.problems)
    if exc.reason == "invalid" and text:
        answer["lines"] = lines_of_problems(text, exc.problems)
    return answer


def pair_of(agent: Agent) -> Pair | None:
    """What signs the requests between the directors; None without a pair file."""
    from hapair.monitor.peer import Pair

    cfg = agent.cfg
    if not cfg.pair or cfg.peer_node is None:
        return None
    return Pair(agent.key, cfg.node.name, cfg.peer_node)


async def handle(agent: Agent, request: control.Request, status: Any) -> dict[str, Any]:
    store = Store(agent.config_path, agent.cfg.node.state_dir)
    try:
        if request.cmd in ("config_show", "config_show_here"):
            return {"ok": True, "result": _show(agent, store, status)}
        if request.cmd == "config_history":
            return {"ok": True, "result": {"versions": store.history()}}
        if request.cmd == "config_check":
            refusal = await _refusal(agent, store.check(request.toml))
            if refusal is not None:
                return refusal
            text, _ = store.current()
            return {"ok": True, "result": {"changes": changes_between(text, request.toml)}}
        if request.cmd in ("config_rollback", "config_rollback_here"):
            text = store.text_of(request.version)
            _, base = store.current()
            return await _apply(agent, store, text, request.user, base, request.version)
        return await _apply(agent, store, request.toml, request.user, request.version, None)
    except StoreError as exc:
        return _store_refusal(exc, request.toml)
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
    refusal = await _refusal(agent, store.check(text))
    if refusal is not None:
        return refusal
    who = user or "-"
    applied = store.rollback(rollback, who, base) if rollback else store.apply(text, who, base)
    with agent.systemd.reloading():
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
        "was": version_of(applied.old_text),
    }
    return {"ok": True, "result": result}


async def _refusal(agent: Agent, configs: list[Config]) -> dict[str, Any] | None:
    """Why the running agent cannot take `configs` (its own view of them) by a reload,
    as a refusal; None when it can."""
    mine = next((c for c in configs if c.node.name == agent.cfg.node.name), configs[0])
    problems = await agent.refusals(mine)
    if not problems:
        return None
    return refused(
        "reload", "the running agent cannot take this config", [str(p) for p in problems]
    )


async def _pair_change(agent: Agent, request: control.Request) -> dict[str, Any]:
    """Checked here, then applied on the peer, then here; the peer rolled back when
    this director refuses it after all."""
    from hapair.monitor.peer import PeerError, ask

    store = Store(agent.config_path, agent.cfg.node.state_dir)
    _, base = store.current()
    rollback = request.cmd == "config_rollback"
    text = store.text_of(request.version) if rollback else request.toml
    store.check(text)  # an invalid text is told so before a stale one
    if not rollback:
        store.expect(request.version, base)
    # What the running agent would refuse, asked in its loop (it reads the host's
    # addresses, as the loop's own work does).
    checked = await agent.ask(control.Request("config_check", toml=text))
    if not checked["ok"]:
        return checked
    peer, where, pair = agent.cfg.peer_node or "the peer", agent.cfg.peer_monitor, pair_of(agent)
    nothing = "nothing was changed on either director"
    if where is None or pair is None or _wildcard(where):
        return refused(
            "peer",
            f"{peer}'s monitor cannot be reached (its [[nodes]] entry needs a monitor_listen "
            f"with its own address, and both directors a [monitor]); {nothing}",
        )
    user = f"{request.user or '-'} via {agent.cfg.node.name}"[: control.MAX_TEXT]
    if agent.node.in_sync is False:  # out of sync: this director's change wins (see README)
        await _ask_peer_version(agent)
    expected = _peer_runs(agent) or base
    there = {"cmd": "config_apply_here", "toml": text, "version": expected, "user": user}
    try:
        reply = await ask(where, pair, there)
    except PeerError as exc:
        return refused("peer", f"{peer} cannot be reached: {exc}; {nothing}")
    if not reply["ok"]:
        why = str(reply.get("error", "refused"))
        errors = reply.get("errors")
        listed = [str(e) for e in errors] if isinstance(errors, list) else []
        return refused("peer", f"{peer} refused the change: {why}; {nothing}", listed)
    result: dict[str, Any] = reply["result"] if isinstance(reply.get("result"), dict) else {}
    was = str(result.get("was", ""))
    here = control.Request("config_apply_here", toml=text, version=base, user=request.user)
    if rollback:
        here = control.Request("config_rollback_here", version=request.version, user=request.user)
    local = await agent.ask(here)
    if not local["ok"]:
        back = {"cmd": "config_rollback_here", "version": was, "user": user}
        try:
            undone = await ask(where, pair, back)
        except PeerError as exc:
            undone = control.refusal(str(exc))
        if undone["ok"]:
            local["error"] = f"{local['error']}; {peer} is back on {was[:12]}"
        else:
            log.error(
                "config: %s took %s, this director refused it, and putting %s back failed: "
                "%s; the directors run different configs",
                peer,
                result.get("version"),
                peer,
                undone.get("error"),
            )
            local["error"] = (
                f"{local['error']}; {peer} had taken it and could not be put back "
                f"({undone.get('error')}): the directors now run different configs"
            )
        return local
    local["result"]["applied"] = [peer, agent.cfg.node.name]
    return local


def _wildcard(where: str) -> bool:
    host = where.rpartition(":")[0].strip("[]")
    return host in ("", "0.0.0.0", "::")
