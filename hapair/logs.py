"""The agent's log: its format, and a bound on messages that repeat.

A message that repeats (the same logger, level and text template) is written the first
BURST times in a window of WINDOW seconds; after that one line per window says how many
like it were suppressed. A flood of bad input or a failing resource therefore costs a few
lines a minute, not gigabytes (asyncio's accept loop once logged EMFILE in a tight loop).
"""

from __future__ import annotations

import logging
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


def setup(level: str) -> None:
    """The agent's logging: to standard error, repeats bounded."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level, handlers=[handler])
