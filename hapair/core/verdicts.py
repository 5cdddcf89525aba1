"""What the operator is told when a real server's verdict or a service's quorum
changes: the alert's event, subject, summary and details. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from hapair.ipvs.reconcile import ServiceView


class Notice(NamedTuple):
    event: str
    subject: str
    summary: str
    details: dict[str, str]


def server_changed(service: str, server: str, up: bool, reason: str) -> Notice:
    state = "up" if up else "down"
    return Notice(
        f"server_{state}",
        f"{service} {server}",
        f"real server {server} of {service} is {state}: {reason}",
        {"service": service, "server": server, "reason": reason},
    )


def quorum_changes(
    before: Mapping[str, ServiceView],
    after: Mapping[str, ServiceView],
    quorums: Mapping[str, int],
) -> list[Notice]:
    """quorum_lost / quorum_back for each service whose quorum changed; a service new in
    `after` had its quorum met before."""
    notices = []
    for name, view in after.items():
        was = before[name].quorum_ok if name in before else True
        if view.quorum_ok == was:
            continue
        sorry = " (the sorry server stands in)" if view.sorry else ""
        notices.append(
            Notice(
                "quorum_back" if view.quorum_ok else "quorum_lost",
                name,
                f"service {name}: {view.healthy} healthy real server(s), quorum "
                f"{quorums.get(name)} {'met again' if view.quorum_ok else 'lost'}{sorry}",
                {"service": name, "healthy": str(view.healthy)},
            )
        )
    return notices
