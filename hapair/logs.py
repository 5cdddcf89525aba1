"""The agent's log: its format, and a bound on messages that repeat.

Three styles of line, one line per event: `text` (time, level, message: a terminal's),
`journal` (a syslog priority prefix and no time of our own: journald stamps each line;
chosen when standard error is the journal's stream, JOURNAL_STREAM) and `json` (one
object per line for log shippers: time, level, event, node, message, fields). An event
that is also an alert carries the alert's name (`extra={"event": ..., "fields": ...}`);
any other line is the event "log".

A message that repeats (the same logger, level and text template) is written the first
BURST times in a window of WINDOW seconds; after that one line per window says how many
like it were suppressed. A flood of bad input or a failing resource therefore costs a few
lines a minute, not gigabytes (asyncio's accept loop once logged EMFILE in a tight loop).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable

BURST = 10
WINDOW = 60.0
MAX_KEYS = 1024  # distinct messages remembered; the oldest are forgotten first


class RepeatFilter(logging.Filter):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        # key -> [window start, may still be written in the window, suppressed in it]
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < WINDOW:
            if entry[1] > 0:
                entry[1] -= 1
                return True
            entry[2] += 1
            return False
        suppressed = int(entry[2]) if entry is not None else 0
        # A message that was held back last window gets one line this window, not a burst.
        self._seen[key] = [now, 0 if suppressed else BURST - 1, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_KEYS:
            self._seen.popitem(last=False)
        if suppressed:
            record.msg = f"{record.msg} [and {suppressed} more like this in the last minute]"
        return True


STYLES = ("text", "journal", "json")
TEXT = "%(asctime)s %(levelname)s %(message)s"
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}


def under_journal(environ: dict[str, str] | None = None, fd: int = 2) -> bool:
    """Whether `fd` is the journal's stream systemd gave this service (JOURNAL_STREAM is
    its device:inode; a child with its own stderr inherits the variable, not the stream)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def priority(levelno: int) -> int:
    """The syslog priority of a level: 3 error, 4 warning, 6 info, 7 debug."""
    return next((p for lvl, p in sorted(PRIORITY.items(), reverse=True) if levelno >= lvl), 7)


class JournalFormatter(logging.Formatter):
    """`<4>message`: every line of a record gets the prefix, or journald would file the
    second line of a multi-line message at the default priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "node": self.node,
            "message": message,
            "fields": getattr(record, "fields", {}),
        }
        return json.dumps(entry, default=str, ensure_ascii=False)


def event(name: str, **fields: object) -> dict[str, object]:
    """`extra=` for a line that is an event: `log.info(..., extra=event("peer_lost"))`."""
    return {"event": name, "fields": fields}


def style_of(asked: str | None) -> str:
    """The style `run --log-format` asked for, or the journal's under systemd, or text."""
    return asked or ("journal" if under_journal() else "text")


configured = ("text", "")  # the style and node of the latest setup(): its helpers log alike


def setup(level: str, style: str = "text", node: str = "") -> None:
    """The agent's logging: to standard error, in `style`, repeats bounded."""
    global configured
    configured = (style, node)
    handler = logging.StreamHandler()
    if style == "json":
        handler.setFormatter(JsonFormatter(node))
    elif style == "journal":
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
