"""When to start a helper process again after it died: at once the first few times, then
after a delay that doubles, so that one that keeps dying is reported, not restarted in
a tight loop. Pure: the caller gives the times.
"""

from __future__ import annotations

from collections import deque

BURST = 3  # deaths within WINDOW restarted at once
WINDOW = 60.0  # s
FIRST_DELAY = 1.0  # s, after the burst; doubled each further death
LONGEST_DELAY = 60.0  # s


class Respawn:
    def __init__(self) -> None:
        self._deaths: deque[float] = deque()
        self.count = 0  # every death so far

    def died(self, now: float) -> float:
        """One more death at `now`: how many seconds to wait before starting it again."""
        self.count += 1
        deaths = self._deaths
        deaths.append(now)
        while deaths and deaths[0] <= now - WINDOW:
            deaths.popleft()
        beyond = len(deaths) - BURST
        if beyond <= 0:
            return 0.0
        return min(LONGEST_DELAY, FIRST_DELAY * 2.0 ** (beyond - 1))
