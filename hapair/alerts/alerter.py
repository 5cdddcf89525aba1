"""The Alerter: turns the agent's events into alerts and sees each one accepted by every
configured channel, retrying until it is.

Never blocks its caller: `emit` and `state_changed` decide (policy), write the alert to
the spool and return; each channel delivers in a task of its own, in order, and takes a
spooled alert off the spool only once it has accepted it. Notify scripts run on state
changes, one at a time; they are actions of the moment, not spooled nor retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hapair.alerts.policy import Alert, AlertPolicy, Backoff, is_alert, make_alert, script_for
from hapair.alerts.scripts import ScriptRunner
from hapair.alerts.spool import Spool
from hapair.config.model import Alerts
from hapair.logs import event
from hapair.status import AlertsStatus

log = logging.getLogger(__name__)

RECENT = 20  # alerts kept for `status`


class Channel(Protocol):
    name: str

    async def send(self, alert: Alert) -> None:
        """Returns once the receiver accepted `alert`; raises otherwise."""

    async def close(self) -> None: ...


def channel_of(name: str, cfg: Alerts) -> Channel | None:
    if name == "email" and cfg.email is not None:
        from hapair.alerts.email import EmailChannel

        return EmailChannel(cfg.email)
    if name == "pager" and cfg.pager is not None:
        from hapair.alerts.pager import PagerChannel

        return PagerChannel(cfg.pager)
    return None


CHANNELS = ("email", "pager")


@dataclass
class Delivery:
    alert: Alert
    delivered: dict[str, bool]  # channel (or "script") -> accepted

    @property
    def owed(self) -> set[str]:
        return {name for name, done in self.delivered.items() if not done and name != "script"}

    def status(self) -> dict[str, Any]:
        a = self.alert
        return {
            "id": a.id,
            "event": a.event,
            "severity": a.severity,
            "summary": a.summary,
            "time": a.time,
            "subject": a.subject,
            "delivered": dict(self.delivered),
        }


class Alerter:
    def __init__(
        self,
        node: str,
        cfg: Alerts | None,
        state_dir: Path,
        *,
        first_retry: float = 1.0,
        max_retry: float = 60.0,
        close_grace: float = 1.0,
    ) -> None:
        self.node = node
        self.cfg = cfg or Alerts()
        self.spool = Spool(self.cfg.spool_path(state_dir), node)
        self.policy = AlertPolicy(self.cfg.min_interval)
        self.scripts = ScriptRunner(self.cfg.scripts.timeout if self.cfg.scripts else 10.0)
        self.first_retry, self.max_retry, self.close_grace = first_retry, max_retry, close_grace
        self.channels: dict[str, Channel] = {}
        self.owed: dict[str, Delivery] = {}  # alert id -> delivery some channel still owes
        self.recent: deque[Delivery] = deque(maxlen=RECENT)
        self._queues: dict[str, deque[str]] = {}  # channel -> alert ids, oldest first
        self._wake: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()  # channels waiting out a backoff
        self._policy_wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # replaced channels being closed

    # Start and stop.

    def start(self) -> None:
        """Opens the channels and resends what the spool holds (from an earlier run)."""
        for name in CHANNELS:
            channel = channel_of(name, self.cfg)
            if channel is not None:
                self._open(channel)
        spooled = self.spool.load()
        for alert, pending in spooled:
            owed = pending & self.channels.keys()
            if pending - owed:
                log.warning(
                    "spooled alert %s was owed to %s, no longer configured: dropped for them",
                    alert.id,
                    ", ".join(sorted(pending - owed)),
                )
            delivery = Delivery(alert, {name: name not in owed for name in self.channels})
            self.recent.append(delivery)
            self._track(delivery, save=pending != owed)
        if spooled:
            log.info(
                "%d undelivered alert(s) in %s: sending again", len(self.owed), self.spool.directory
            )
        self._timer = asyncio.create_task(self._release_held(), name="alerts held back")

    async def close(self) -> None:
        """Gives deliveries under way `close_grace` seconds (a STOPPED alert, a last notify
        script), then stops; what is still owed stays in the spool for the next start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_grace
        while loop.time() < deadline and (self.scripts.unfinished or self._deliverable()):
            await asyncio.sleep(0.02)
        tasks = [t for t in [self._timer, *self._workers.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.scripts.close()
        await asyncio.gather(*self._closing, return_exceptions=True)
        for channel in self.channels.values():
            await channel.close()
        self._workers.clear()

    def reconfigure(self, cfg: Alerts | None) -> None:
        """A reloaded [alerts]: changed channels are replaced, removed ones forgotten (with
        what they still owed), new ones get the alerts raised from now on."""
        old, self.cfg = self.cfg, cfg or Alerts()
        self.policy.min_interval = self.cfg.min_interval
        self.scripts.timeout = self.cfg.scripts.timeout if self.cfg.scripts else 10.0
        if self.cfg.spool_dir != old.spool_dir:
            log.warning(
                "alerts.spool_dir changes with a restart; spooling on in %s", self.spool.directory
            )
        for name in CHANNELS:
            if getattr(old, name) == getattr(self.cfg, name):
                continue
            channel = channel_of(name, self.cfg)
            if name in self.channels:
                closing = asyncio.create_task(self.channels[name].close())
                self._closing.add(closing)  # held until done: the loop keeps weak references
                closing.add_done_callback(self._closing.discard)
            if channel is not None:
                self._open(channel)
            else:
                self._drop_channel(name)

    # Raising alerts.

    def emit(
        self, event: str, subject: str, summary: str, details: dict[str, str] | None = None
    ) -> Alert | None:
        """Raises an alert of `event` (others are ignored): the one sent, or None when the
        policy held it back."""
        if not is_alert(event):
            return None
        return self._raise(make_alert(self.node, event, subject, summary, time.time(), details))

    def reload_failed(self, config: str, why: str) -> None:
        """A reload refused: the first three problems in the alert, all of them in its data."""
        problems = why.strip().splitlines()
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        detail = "; ".join(problems[:3]) + more
        self.emit(
            "reload_failed",
            "",
            f"reload of {config} refused, running on as before: {detail}",
            {"config": config, "reason": why.strip()},
        )

    def state_changed(self, old: str, new: str, reason: str) -> Alert | None:
        """A state change: an alert, and the state's notify script (never held back)."""
        alert = make_alert(
            self.node,
            "state_change",
            new,
            f"{self.node} is now {new} (was {old}): {reason}",
            time.time(),
            {"state": new, "old_state": old, "reason": reason},
        )
        sent = self._raise(alert)
        key = script_for(new)
        command = getattr(self.cfg.scripts, key) if key and self.cfg.scripts else None
        if command:
            delivery = self._delivery(alert.id)
            if delivery is not None:
                delivery.delivered["script"] = False
            env = {
                "HAPAIR_EVENT": alert.event,
                "HAPAIR_NODE": self.node,
                "HAPAIR_STATE": new,
                "HAPAIR_OLD_STATE": old,
                "HAPAIR_REASON": reason,
                "HAPAIR_SEVERITY": alert.severity,
                "HAPAIR_SUMMARY": alert.summary,
                "HAPAIR_ALERT_ID": alert.id,
                "HAPAIR_TIME": f"{alert.time:.3f}",
            }
            self.scripts.submit(command, env, lambda ok: self._script_done(alert.id, ok))
        return sent

    def status(self) -> AlertsStatus:
        return {"queued": len(self.owed), "recent": [d.status() for d in self.recent]}

    def _raise(self, alert: Alert) -> Alert | None:
        sent = self.policy.admit(alert, asyncio.get_running_loop().time())
        self._policy_wake.set()  # a held-back alert may have a new deadline
        if sent is None:
            log.debug("alert held back: %s", alert.title)
            return None
        self._dispatch(sent)
        return sent

    def _dispatch(self, alert: Alert) -> None:
        fields = {"severity": alert.severity, "subject": alert.subject, "id": alert.id}
        log.info("alert (%s): %s", alert.severity, alert.title, extra=event(alert.event, **fields))
        delivery = Delivery(alert, dict.fromkeys(self.channels, False))
        self.recent.append(delivery)
        self._track(delivery, save=True)

    def _track(self, delivery: Delivery, save: bool) -> None:
        """Queues `delivery` on every channel that owes it (spooled first, if `save`)."""
        if save:
            self._save(delivery)
        if not delivery.owed:
            return
        self.owed[delivery.alert.id] = delivery
        for name in delivery.owed:
            self._queues[name].append(delivery.alert.id)
            self._wake[name].set()

    def _delivery(self, alert_id: str) -> Delivery | None:
        return next((d for d in self.recent if d.alert.id == alert_id), None)

    def _script_done(self, alert_id: str, ok: bool) -> None:
        delivery = self._delivery(alert_id)
        if delivery is not None:
            delivery.delivered["script"] = ok

    def _save(self, delivery: Delivery) -> None:
        try:
            self.spool.save(delivery.alert, delivery.owed)
        except OSError as exc:
            log.error(
                "cannot spool alert %s in %s (%s): it is retried, but lost if the agent stops",
                delivery.alert.id,
                self.spool.directory,
                exc,
            )

    async def _release_held(self) -> None:
        """Sends each held-back alert when its min_interval window ends."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.policy.next_deadline()
            self._policy_wake.clear()
            try:  # asyncio.timeout_at, not wait_for: that one can swallow a cancellation
                async with asyncio.timeout_at(deadline):
                    await self._policy_wake.wait()
                continue  # something was raised: the deadline may have moved
            except TimeoutError:
                pass
            for alert in self.policy.due(loop.time()):
                self._dispatch(alert)

    # Channels.

    def _open(self, channel: Channel) -> None:
        name = channel.name
        self.channels[name] = channel
        if name not in self._workers:
            self._queues[name] = deque()
            self._wake[name] = asyncio.Event()
            self._workers[name] = asyncio.create_task(self._deliver(name), name=f"alerts {name}")

    def _drop_channel(self, name: str) -> None:
        self.channels.pop(name, None)
        worker = self._workers.pop(name, None)
        if worker is not None:
            worker.cancel()
        self._queues.pop(name, None)
        self._wake.pop(name, None)
        self._failing.discard(name)
        for delivery in list(self.owed.values()):
            if delivery.delivered.pop(name, None) is False:
                log.warning(
                    "alert %s is not sent by %s: no longer configured", delivery.alert.id, name
                )
                self._save(delivery)
                if not delivery.owed:
                    del self.owed[delivery.alert.id]

    def _deliverable(self) -> bool:
        """Something is owed by a channel that is not waiting out a failure."""
        return any(d.owed - self._failing for d in self.owed.values())

    async def _deliver(self, name: str) -> None:
        """One channel's delivery, oldest alert first. A failure waits out the backoff and
        moves that alert to the back, so one alert the receiver refuses blocks no other."""
        backoff = Backoff(self.first_retry, self.max_retry)
        queue, wake = self._queues[name], self._wake[name]
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            delivery = self.owed.get(queue[0])
            if delivery is None or delivery.delivered.get(name, True):
                queue.popleft()  # delivered already, or the channel was replaced
                continue
            alert = delivery.alert
            try:
                await self.channels[name].send(alert)
            except Exception as exc:
                delay = backoff.failed()
                self._failing.add(name)
                log.warning(
                    "alert %s not accepted by %s: %s; next attempt in %gs",
                    alert.id,
                    name,
                    str(exc) or type(exc).__name__,
                    delay,
                )
                queue.rotate(-1)
                await asyncio.sleep(delay)
                continue
            backoff.succeeded()
            self._failing.discard(name)
            queue.popleft()
            log.debug("alert %s accepted by %s", alert.id, name)
            delivery.delivered[name] = True
            self._save(delivery)
            if not delivery.owed:
                del self.owed[alert.id]
