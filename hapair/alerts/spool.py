"""The on-disk spool: every alert a channel still owes, so none is lost to an outage of a
mail server or a pager, nor to a restart of the agent.

One file per alert, `<node>.<id>.json`: the alert and the channels that have not accepted
it (named by node, so two agents sharing a state_dir, as in a lab, never send each other's).
Written whole (a temporary file, then a rename) and readable by root only. A file that
cannot be read back is moved aside as `<name>.corrupt`; it never stops the agent.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from pathlib import Path

from hapair.alerts.policy import Alert

log = logging.getLogger(__name__)

FORMAT = 1


class Spool:
    def __init__(self, directory: Path, node: str) -> None:
        self.directory = directory
        self.node = node

    def path(self, alert_id: str) -> Path:
        return self.directory / f"{self.node}.{alert_id}.json"

    def save(self, alert: Alert, pending: Collection[str]) -> None:
        """Keep `alert` as owed to the `pending` channels; none left: forget it.
        Raises OSError when the disk refuses."""
        if not pending:
            self.remove(alert.id)
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = {"format": FORMAT, "alert": alert.to_json(), "pending": sorted(pending)}
        path = self.path(alert.id)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an older tmp file may have had another mode
            os.write(fd, json.dumps(record, sort_keys=True).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def remove(self, alert_id: str) -> None:
        try:
            self.path(alert_id).unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot remove the delivered alert %s from the spool: %s", alert_id, exc)

    def load(self) -> list[tuple[Alert, set[str]]]:
        """Every spooled alert with the channels it is owed, oldest first."""
        try:
            names = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("cannot read the alert spool %s: %s", self.directory, exc)
            return []
        found = []
        for path in names:
            if path.name.startswith(f".{self.node}.") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short; its rename never happened
            elif path.name.startswith(f"{self.node}.") and path.suffix == ".json":
                try:
                    found.append(self._read(path))
                except (OSError, ValueError) as exc:
                    self._set_aside(path, exc)
        return sorted(found, key=lambda item: item[0].time)

    def _read(self, path: Path) -> tuple[Alert, set[str]]:
        record = json.loads(path.read_bytes())
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"not a format {FORMAT} spool record")
        alert = Alert.from_json(record.get("alert"))
        pending = record.get("pending")
        if not isinstance(pending, list) or not all(isinstance(c, str) for c in pending):
            raise ValueError("pending is not a list of channel names")
        if path != self.path(alert.id) or alert.node != self.node:
            raise ValueError(f"holds alert {alert.id} of {alert.node}, not {path.name}")
        return alert, set(pending)

    def _set_aside(self, path: Path, exc: Exception) -> None:
        aside = path.with_suffix(".corrupt")
        log.error("alert spool file %s is damaged (%s); moved aside to %s", path, exc, aside.name)
        try:
            os.replace(path, aside)
        except OSError as move_exc:
            log.error("cannot move %s aside: %s", path, move_exc)
