"""Rise/fall hysteresis: `rise` successes in a row to come up, `fall` failures to go down.

Pure: the caller feeds results and learns when the verdict changes. Used by the
own-health checks ([[track]]) and the real-server probes.
"""

from __future__ import annotations


class RiseFall:
    def __init__(self, rise: int, fall: int, *, up: bool) -> None:
        self.rise, self.fall = rise, fall
        self.up = up
        self._streak = 0  # consecutive results against the current verdict

    def observe(self, ok: bool | None) -> bool:
        """Record one result (None: no verdict, counted neither way); True when the
        verdict changed."""
        if ok is None:
            return False
        if ok == self.up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.up, self._streak = ok, 0
            return True
        return False
