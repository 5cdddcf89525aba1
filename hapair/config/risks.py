"""What `hapair check` warns of: a config that is valid but risky. Warnings do not make
a config invalid (exit 0); each says what to change.

Pure: the host's IP forwarding, when the caller knows it, comes as an argument.
"""

from __future__ import annotations

from hapair.config.model import Config
from hapair.config.rules import Problem

SAFE_INTERVALS = 10  # heartbeats a single link may lose in a row before a takeover
WILDCARDS = ("0.0.0.0", "::", "")


def risks(cfg: Config, forwarding: bool | None = None) -> list[Problem]:
    """The risks of `cfg`; `forwarding`: whether this host forwards IPv4 (None: unknown)."""
    found = []
    cluster = cfg.cluster
    if len(cluster.links) == 1 and cluster.deadtime < SAFE_INTERVALS * cluster.interval:
        intervals = cluster.deadtime / cluster.interval
        found.append(
            Problem(
                "cluster.deadtime",
                f"{cluster.deadtime:g}s is {intervals:.3g} heartbeat intervals on a single "
                f"link: a lossy link (30 % loss) then gives a false takeover every few "
                f"minutes; add a second link (serial) or make deadtime at least "
                f"{SAFE_INTERVALS} intervals ({SAFE_INTERVALS * cluster.interval:g}s)",
            )
        )
    asked = cfg.sysctl.ip_forward if cfg.sysctl is not None else None
    if asked is not True and forwarding is not True:
        for i, service in enumerate(cfg.services):
            if service.forward == "nat":
                why = "is off on this host" if forwarding is False else "is not set"
                found.append(
                    Problem(
                        f"services.{i}.forward",
                        f"NAT: the real servers' replies are routed through the director, "
                        f"but IP forwarding {why}; set [sysctl] ip_forward = true",
                    )
                )
                break
    if cfg.monitor is not None and cfg.monitor.listen.host in WILDCARDS:
        found.append(
            Problem(
                "monitor.listen",
                f"{cfg.monitor.listen} listens on every address of the director: its login "
                "page is open to every network it is on; give the management address",
            )
        )
    return found


def host_forwarding() -> bool | None:
    """Whether this host forwards IPv4 packets (None: it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip() == "1"
    except OSError:
        return None
