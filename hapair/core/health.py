"""This node's own health: what keeps it out of FAULT. Pure.

VIP interfaces up and every [[track]] check passing; the agent feeds each check's
verdict and learns when the overall health changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Health:
    failing: dict[str, str] = field(default_factory=dict)  # check -> reason

    def set(self, name: str, ok: bool, reason: str) -> bool:
        """True when overall health changed."""
        before = not self.failing
        if ok:
            self.failing.pop(name, None)
        else:
            self.failing[name] = reason
        return before != (not self.failing)

    @property
    def ok(self) -> bool:
        return not self.failing

    def reason(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in sorted(self.failing.items()))
