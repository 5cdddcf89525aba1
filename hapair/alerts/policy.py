"""Which alerts go out, and when: the rules of alerting, with no clock and no I/O.

Owns the event table (severity, what a recovery recovers from), the `min_interval`
suppression of repeats, the notify script of each state and the retry schedule.
Callers pass `now` (any monotonic clock); nothing here sleeps, sends or writes.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")


@dataclass(frozen=True, slots=True)
class EventKind:
    severity: Severity
    family: str  # events of one family and subject are about the same thing
    recovers: str | None = None  # a recovery is news only after the loss it ends


# Every event that is an alert. A Notice of the core not listed here (heartbeat_late)
# is only logged.
EVENTS: dict[str, EventKind] = {
    "state_change": EventKind("info", "state"),  # severity by the new state: STATE_SEVERITY
    "peer_lost": EventKind("critical", "peer"),
    "peer_back": EventKind("info", "peer", recovers="peer_lost"),
    "link_lost": EventKind("warning", "link"),
    "link_back": EventKind("info", "link", recovers="link_lost"),
    "server_down": EventKind("warning", "server"),
    "server_up": EventKind("info", "server", recovers="server_down"),
    "quorum_lost": EventKind("critical", "quorum"),
    "quorum_back": EventKind("info", "quorum", recovers="quorum_lost"),
    "reload_failed": EventKind("warning", "reload"),
    "config_mismatch": EventKind("warning", "config_mismatch"),
    "stalled": EventKind("warning", "stalled"),
    "checker_restarted": EventKind("warning", "checker"),
}
STATE_SEVERITY: dict[str, Severity] = {
    "MASTER": "warning",  # this node took the VIPs
    "BACKUP": "info",
    "FAULT": "critical",  # this node cannot serve
    "STOPPED": "info",
    "INIT": "info",
}
# The notify script run on entering a state, by its key in [alerts.scripts].
STATE_SCRIPT: dict[str, str] = {"MASTER": "on_master", "BACKUP": "on_backup", "FAULT": "on_fault"}


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as every channel gets it. `id` is the same on every channel and every
    retry, across restarts, so a receiver can drop a copy it already has."""

    id: str
    event: str
    node: str
    severity: Severity
    subject: str  # what it is about: a state, a server, a link, a service ("" for none)
    summary: str
    time: float  # wall clock, seconds since the epoch
    suppressed: int = 0  # repeats held back by min_interval before this one
    details: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        """Alerts with the same key are repeats of each other."""
        return self.event, self.subject

    @property
    def topic(self) -> tuple[str, str]:
        """What the alert is about: a loss and its recovery share a topic."""
        if self.event == "state_change":
            return "state", ""
        return EVENTS[self.event].family, self.subject

    @property
    def title(self) -> str:
        """`<node> <event>: <summary>`, e.g. an email's subject after `[hapair] `."""
        return f"{self.node} {self.event}: {self.summary}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Alert:
        """Raises ValueError when `data` is not an alert (a damaged spool file)."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        try:
            alert = cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        texts = (alert.id, alert.event, alert.node, alert.subject, alert.summary)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("a text field is not text")
        if not (alert.id.isascii() and alert.id.isalnum()):
            raise ValueError(f"{alert.id!r} is not an alert id")
        if alert.event not in EVENTS or alert.severity not in SEVERITIES:
            raise ValueError(f"unknown event {alert.event!r} or severity {alert.severity!r}")
        if not isinstance(alert.time, int | float) or not isinstance(alert.suppressed, int):
            raise ValueError("time or suppressed is not a number")
        if not isinstance(alert.details, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in alert.details.items()
        ):
            raise ValueError("details are not text")
        return alert


def is_alert(event: str) -> bool:
    return event in EVENTS


def make_alert(
    node: str,
    event: str,
    subject: str,
    summary: str,
    time: float,
    details: dict[str, str] | None = None,
    id: str | None = None,
) -> Alert:
    """An alert of a known event (KeyError otherwise), with its severity from the table;
    a state_change's severity follows `details["state"]`, the new state."""
    details = dict(details or {})
    severity = EVENTS[event].severity
    if event == "state_change":
        severity = STATE_SEVERITY.get(details.get("state", ""), "warning")
    return Alert(
        id=id or uuid.uuid4().hex,
        event=event,
        node=node,
        severity=severity,
        subject=subject,
        summary=summary,
        time=time,
        details=details,
    )


def script_for(state: str) -> str | None:
    """The [alerts.scripts] key to run on entering `state`, if any."""
    return STATE_SCRIPT.get(state)


class AlertPolicy:
    """Decides which raised alerts go out.

    - A repeat (same event and subject) within `min_interval` of the last one sent is
      held back and counted; so a flapping server costs at most one message per event
      per `min_interval`.
    - The latest held-back alert of a topic is not forgotten: when its window ends it
      goes out (`due`), saying how many were held back, so the last word on a server
      is always its current state.
    - A recovery (`server_up`, `peer_back`, ...) goes out only after the loss it ends:
      a server coming up at start, never reported down, is not news.
    """

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._sent_at: dict[tuple[str, str], float] = {}  # key -> when last sent
        self._last_event: dict[tuple[str, str], str] = {}  # topic -> last event raised
        self._held: dict[tuple[str, str], Alert] = {}  # topic -> latest held back
        self._held_count: dict[tuple[str, str], int] = {}  # topic -> how many held back

    def admit(self, alert: Alert, now: float) -> Alert | None:
        """The alert to send now (its summary counting what was held back), or None."""
        topic = alert.topic
        recovers = EVENTS[alert.event].recovers
        if recovers is not None and self._last_event.get(topic) != recovers:
            return None  # nothing to recover from: not news
        self._last_event[topic] = alert.event
        sent = self._sent_at.get(alert.key)
        if sent is not None and now - sent < self.min_interval:
            self._held[topic] = alert
            self._held_count[topic] = self._held_count.get(topic, 0) + 1
            return None
        return self._release(alert, now)

    def due(self, now: float) -> list[Alert]:
        """Held-back alerts whose window has ended: to send now."""
        ready = [
            alert
            for alert in self._held.values()
            if now >= self._sent_at[alert.key] + self.min_interval  # as next_deadline says
        ]
        return [self._release(alert, now, held=True) for alert in ready]

    def next_deadline(self) -> float | None:
        """When `due` will next have something, or None."""
        times = [self._sent_at[a.key] + self.min_interval for a in self._held.values()]
        return min(times, default=None)

    def _release(self, alert: Alert, now: float, held: bool = False) -> Alert:
        """`alert` goes out now; `held`: it was held back itself (so not one of the others)."""
        topic = alert.topic
        self._held.pop(topic, None)
        self._sent_at[alert.key] = now
        others = self._held_count.pop(topic, 0) - held
        if others:
            alert = dataclasses.replace(
                alert,
                suppressed=others,
                summary=f"{alert.summary} ({others} similar alert(s) held back by min_interval)",
            )
        return alert


class Backoff:
    """The retry schedule of one channel: `first`, doubling on every failure in a row, at
    most `cap` seconds; a success starts over."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def failed(self) -> float:
        """Seconds to wait before the next attempt."""
        delay = min(self.cap, self.first * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        self.failures = 0
