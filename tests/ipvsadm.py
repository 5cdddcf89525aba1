"""ipvsadm, the independent reader: what the kernel's IPVS table holds, as a test sees it."""

from __future__ import annotations

from topology import Netns

Table = dict[str, list[tuple[str, str, int]]]


def ipvs_table(ns: Netns) -> Table:
    """`ipvsadm -Ln` in `ns` as {"TCP 10.50.0.10:80 wlc": [("10.50.0.21:80", "Route", 3)]}."""
    table: Table = {}
    service = ""
    for line in ns.run("ipvsadm", "-Ln").stdout.splitlines()[3:]:
        if line.startswith("  -> "):
            addr, forward, weight = line.split()[1:4]
            table[service].append((addr, forward, int(weight)))
        else:
            service = " ".join(line.split())
            table[service] = []
    return table


def ipvs_daemons(ns: Netns) -> list[str]:
    return ns.run("ipvsadm", "-L", "--daemon").stdout.splitlines()
