"""What the IPVS table should be, and the fewest changes that make it so. Pure.

`desired_table` turns the config, the probes' verdicts and the operator's
overrides into a table; `diff` compares it with the kernel's and lists changes:
edits in place wherever IPVS allows them (a weight, a scheduler), so existing
connections are kept; only services hapair owns are ever touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hapair.config.model import Service as ServiceConfig
from hapair.ipvs.table import Dest, DestKey, ServiceKey, Table, VirtualService


@dataclass(frozen=True, slots=True)
class AddService:
    service: VirtualService


@dataclass(frozen=True, slots=True)
class EditService:
    service: VirtualService


@dataclass(frozen=True, slots=True)
class DeleteService:
    key: ServiceKey


@dataclass(frozen=True, slots=True)
class AddDest:
    service: ServiceKey
    dest: Dest


@dataclass(frozen=True, slots=True)
class EditDest:
    service: ServiceKey
    dest: Dest


@dataclass(frozen=True, slots=True)
class DeleteDest:
    service: ServiceKey
    dest: DestKey


Change = AddService | EditService | DeleteService | AddDest | EditDest | DeleteDest


def service_key(svc: ServiceConfig) -> ServiceKey:
    if svc.protocol == "fwmark":
        v6 = bool(svc.real_servers) and all(rs.address.version == 6 for rs in svc.real_servers)
        return ServiceKey("fwmark", None, 0, svc.fwmark or 0, 6 if v6 else 4)
    assert svc.address is not None and svc.port is not None
    return ServiceKey(svc.protocol, svc.address, svc.port, 0, svc.address.version)


def dest_keys(svc: ServiceConfig) -> list[DestKey]:
    port = 0 if svc.protocol == "fwmark" else svc.port or 0
    return [DestKey(rs.address, rs.port or port) for rs in svc.real_servers]


@dataclass(frozen=True, slots=True)
class ServiceView:
    """How one service stands: what the quorum rule saw."""

    healthy: int
    quorum_ok: bool
    sorry: bool  # the sorry server stands in for the real servers


def desired_table(
    services: Iterable[ServiceConfig],
    healthy: Mapping[tuple[str, DestKey], bool],
    admin: Mapping[tuple[str, DestKey], str],
) -> tuple[Table, dict[str, ServiceView]]:
    """The table to hold, and per service its health count and quorum.

    A server absent from `healthy` counts as healthy (not probed, or not yet).
    Disabled: absent. Drained: weight 0. Down: absent, or weight 0 with
    `on_failure = "inhibit"`. Fewer healthy than `quorum`: the sorry server alone.
    """
    table: Table = {}
    views: dict[str, ServiceView] = {}
    for svc in services:
        key = service_key(svc)
        dests: dict[DestKey, Dest] = {}
        serving = 0
        tunnel: dict[str, Any] = (
            {"tunnel": svc.tunnel, "tunnel_port": svc.tunnel_port or 0}
            if svc.forward == "tun"
            else {}
        )
        for rs, dkey in zip(svc.real_servers, dest_keys(svc), strict=True):
            state = admin.get((svc.name, dkey), "enabled")
            up = healthy.get((svc.name, dkey), True)
            if state == "disabled" or (not up and svc.on_failure == "remove"):
                continue
            weight = rs.weight if up and state == "enabled" else 0
            serving += up and state == "enabled" and rs.weight > 0
            dests[dkey] = Dest(
                dkey,
                weight,
                svc.forward,
                rs.upper_threshold,
                rs.lower_threshold,
                **tunnel,
            )
        quorum_ok = serving >= svc.quorum
        sorry = not quorum_ok and svc.sorry_server is not None
        if sorry:
            assert svc.sorry_server is not None
            port = 0 if svc.protocol == "fwmark" else svc.sorry_server.port or svc.port or 0
            skey = DestKey(svc.sorry_server.address, port)
            dests = {skey: Dest(skey, 1, svc.forward, **tunnel)}
        table[key] = VirtualService(
            key,
            scheduler=svc.scheduler,
            persistence=math.ceil(svc.persistence),
            netmask=svc.persistence_netmask
            if svc.persistence_netmask is not None and svc.persistence > 0
            else (32 if key.family == 4 else 128),
            flags=frozenset(svc.scheduler_flags),
            dests=dests,
        )
        views[svc.name] = ServiceView(serving, quorum_ok, sorry)
    return table, views


def diff(desired: Table, actual: Table, owned: Iterable[ServiceKey]) -> list[Change]:
    """Changes that turn `actual` into `desired` for the services in `owned` (and the
    desired ones); others in `actual` are someone else's and stay as they are.

    Order: new services and destinations first, removals last, so that a service
    never passes through having no destination (the sorry server comes in first).
    """
    adds: list[Change] = []
    edits: list[Change] = []
    removals: list[Change] = []
    # A periodic pass finds nothing to change: compare first, sort only what differs.
    differing = sorted(key for key, want in desired.items() if actual.get(key) != want)
    for key in differing:
        want = desired[key]
        have = actual.get(key)
        if have is None:
            adds.append(AddService(replace(want, dests={})))
            have_dests: dict[DestKey, Dest] = {}
        else:
            if have.settings() != want.settings():
                edits.append(EditService(replace(want, dests={})))
            have_dests = have.dests
        for dkey, dest in sorted(want.dests.items()):
            current = have_dests.get(dkey)
            if current is None:
                adds.append(AddDest(key, dest))
            elif current != dest:
                edits.append(EditDest(key, dest))
        removals += [DeleteDest(key, dkey) for dkey in sorted(have_dests) if dkey not in want.dests]
    gone = {key for key in owned if key not in desired and key in actual}
    removals += [DeleteService(key) for key in sorted(gone)]
    return adds + edits + removals
