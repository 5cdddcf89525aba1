"""The agent's answers to what the control socket and the monitor ask of it.

A config change or show waits for the peer outside the agent's loop of inputs
(configure.py); every other request is handled in that loop, in turn with every other
input, so that a `release` or a `ctl` is ordered with the heartbeats around it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from hapair import control
from hapair.core.node import link_names
from hapair.core.refused import Refused
from hapair.status import Status, compose, config_of

if TYPE_CHECKING:
    from hapair.agent import Agent
    from hapair.monitor.server import MonitorServer

log = logging.getLogger("hapair")


async def handle(agent: Agent, request: control.Request) -> dict[str, Any]:
    """A checked request, from the control socket or the monitor."""
    from hapair import configure

    if request.cmd in configure.OUTSIDE:
        return await configure.change(agent, request)
    if request.cmd == "status":  # the probes' latest results, from the checker process
        await agent.services.checker.refresh()
    return await agent.ask(request)


async def answer(agent: Agent, request: control.Request, now: float) -> dict[str, Any]:
    """The answer to a request taken from the agent's inbox; never raises."""
    try:
        return await _answer(agent, request, now)
    except Exception as exc:  # a bug of ours must not take the MASTER down
        log.exception("control request %s failed", request.cmd)
        return control.refusal(f"internal error: {type(exc).__name__}: {exc}")


async def _answer(agent: Agent, request: control.Request, now: float) -> dict[str, Any]:
    if request.cmd == "status":
        return {"ok": True, "result": agent.status(now)}
    if request.cmd == "release":
        try:
            await agent.carry_out(agent.node.release(now))
        except Refused as exc:
            return control.refusal(str(exc))
        return {"ok": True, "result": "released: the peer takes the VIPs"}
    if request.cmd.startswith("config_"):
        from hapair import configure

        return await configure.handle(agent, request, agent.status(now))
    return await agent.services.operator(request)


async def start_monitor(agent: Agent) -> MonitorServer | None:
    """The web monitor, when the config has one; it asks as the control socket does."""
    if agent.cfg.monitor is None:
        return None
    from hapair.configure import pair_of
    from hapair.monitor.server import start_monitor

    return await start_monitor(
        agent.cfg.monitor,
        lambda: agent.status(agent.loop.time()),
        control.checked(lambda request: handle(agent, request)),
        lambda: pair_of(agent),
    )


def status(agent: Agent, now: float) -> Status:
    """The agent's status: what `hapair status`, the monitor and the metrics show."""
    return compose(
        agent.node.status(now),
        now=now,
        wall=time.time(),
        links=link_names(agent.cfg),
        vips=[(str(v.address), v.interface) for v in agent.cfg.vips],
        vips_held=agent.vips.held,
        syncing=bool(agent.cfg.sync and agent.cfg.sync.enabled),
        services=agent.services.status(),
        checker=agent.services.checker.status(),
        health=agent.health,
        timer_late_max=agent.timer_late_max,
        alerts=agent.alerter.status(),
        reload=agent.last_reload,
        config=config_of(agent.cfg.version, agent.node, agent.peer_version),
    )
