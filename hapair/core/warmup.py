"""When a recovering node has learned enough of the MASTER's connections to preempt.

The kernel's backup sync daemon copies a connection only when the MASTER sees traffic
on it (after `sync_threshold` packets), so there is no moment when "all" have arrived:
a node that took the VIPs back at once would drop every connection it has not heard of.
The rule: wait at least until the count of learned connections stops growing for
`SETTLE` seconds (each busy connection has been synced by then), but never longer
than `limit` after the backup daemon started. Sans-I/O: counts and times come in.
"""

from __future__ import annotations

# Seconds without a new connection learned: longer than the kernel's sync daemon holds a
# part-filled message back (IPVS_SYNC_FLUSH_TIME, 2 s, checked every second).
SETTLE = 4.0


class WarmUp:
    def __init__(self, limit: float, now: float) -> None:
        self.until = now + limit
        self.count = -1
        self.changed = now
        self.done = limit <= 0

    def observe(self, count: int, now: float) -> bool:
        """The number of connections the backup daemon holds now; True once warm."""
        if count > self.count:
            self.count, self.changed = count, now
        self.done = self.done or now >= self.until or now - self.changed >= SETTLE
        return self.done

    def reason(self) -> str:
        return "learning the MASTER's connections"
