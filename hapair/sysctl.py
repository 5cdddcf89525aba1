"""The kernel settings a director needs, written only where `[sysctl]` asks for them.

Each key names one or two files under /proc/sys of the agent's network namespace; the
`net.ipv4.vs.*` ones exist only once IPVS is loaded, so they are written after it is.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hapair.config.model import Sysctl

log = logging.getLogger(__name__)

PROC = Path("/proc/sys")
FILES = {
    "ip_forward": ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"),
    "conntrack": ("net/ipv4/vs/conntrack",),
    "expire_nodest_conn": ("net/ipv4/vs/expire_nodest_conn",),
    "expire_quiescent_template": ("net/ipv4/vs/expire_quiescent_template",),
    "sync_threshold": ("net/ipv4/vs/sync_threshold",),
    "sync_refresh_period": ("net/ipv4/vs/sync_refresh_period",),
    "sync_retries": ("net/ipv4/vs/sync_retries",),
}


def wanted(sysctl: Sysctl | None, ipv6: bool) -> dict[str, str]:
    """{file under /proc/sys: value} for the configured keys."""
    out: dict[str, str] = {}
    if sysctl is None:
        return out
    for key, value in sysctl.model_dump(exclude_none=True).items():
        if isinstance(value, bool):
            text = str(int(value))
        elif isinstance(value, tuple | list):
            text = "\t".join(str(v) for v in value)
        elif isinstance(value, float):
            text = str(math.ceil(value))
        else:
            text = str(value)
        files = FILES[key] if ipv6 else FILES[key][:1]
        out |= {f: text for f in files}
    return out


def apply(sysctl: Sysctl | None, ipv6: bool, root: Path = PROC) -> list[str]:
    """Write what differs; returns the problems (a missing IPVS, a read-only /proc)."""
    problems = []
    for name, value in wanted(sysctl, ipv6).items():
        path = root / name
        dotted = name.replace("/", ".")
        try:
            old = " ".join(path.read_text().split())
            if old != " ".join(value.split()):
                path.write_text(value + "\n")
                log.info("sysctl %s: %s -> %s", dotted, old, " ".join(value.split()))
        except OSError as exc:
            problems.append(f"sysctl {dotted}: {exc.strerror or exc}")
    for problem in problems:
        log.error("%s", problem)
    return problems
