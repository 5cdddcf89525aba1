"""The pure reconciler: desired table from config and verdicts, and the minimal diff."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from samples import config

from hapair.config import validate
from hapair.ipvs.reconcile import (
    AddDest,
    AddService,
    Change,
    DeleteDest,
    DeleteService,
    EditDest,
    EditService,
    desired_table,
    diff,
    service_key,
)
from hapair.ipvs.table import Dest, DestKey, ServiceKey, Table, VirtualService

pytestmark = pytest.mark.unit


def apply(table: Table, changes: list[Change]) -> Table:
    """What the kernel does with each change (a model; the kernel tests check the real one)."""
    out = {k: replace(s, dests=dict(s.dests)) for k, s in table.items()}
    for c in changes:
        if isinstance(c, AddService):
            assert c.service.key not in out
            out[c.service.key] = replace(c.service, dests={})
        elif isinstance(c, EditService):
            out[c.service.key] = replace(c.service, dests=out[c.service.key].dests)
        elif isinstance(c, DeleteService):
            del out[c.key]
        elif isinstance(c, AddDest):
            assert c.dest.key not in out[c.service].dests
            out[c.service].dests[c.dest.key] = c.dest
        elif isinstance(c, EditDest):
            assert c.dest.key in out[c.service].dests
            out[c.service].dests[c.dest.key] = c.dest
        else:
            del out[c.service].dests[c.dest]
    return out


@pytest.fixture
def cfg(key_file: Path) -> Any:
    return validate(
        config(
            key_file,
            vips=[{"address": "10.0.0.100/24", "interface": "eth0"}],
            services=[
                {
                    "name": "web",
                    "protocol": "tcp",
                    "address": "10.0.0.100",
                    "port": 80,
                    "scheduler": "wrr",
                    "quorum": 2,
                    "sorry_server": "10.0.0.9:80",
                    "real_servers": [
                        {"address": "10.0.0.11", "weight": 2},
                        {"address": "10.0.0.12"},
                        {"address": "10.0.0.13"},
                    ],
                },
                {
                    "name": "mail",
                    "protocol": "tcp",
                    "address": "10.0.0.100",
                    "port": 25,
                    "forward": "nat",
                    "on_failure": "inhibit",
                    "persistence": "5m",
                    "real_servers": [
                        {"address": "192.168.0.11", "port": 2525},
                        {"address": "192.168.0.12", "port": 2525},
                    ],
                },
                {
                    "name": "media",
                    "protocol": "fwmark",
                    "fwmark": 7,
                    "scheduler": "sh",
                    "scheduler_flags": ["sh-port"],
                    "real_servers": [{"address": "10.0.0.21"}],
                },
            ],
        )
    )


def dk(text: str, port: int) -> DestKey:
    return DestKey(ip_address(text), port)


WEB = ServiceKey("tcp", ip_address("10.0.0.100"), 80)
MAIL = ServiceKey("tcp", ip_address("10.0.0.100"), 25)
MEDIA = ServiceKey("fwmark", None, 0, 7, 4)


def test_desired_from_config(cfg: Any) -> None:
    table, views = desired_table(cfg.services, {}, {})
    assert set(table) == {WEB, MAIL, MEDIA}
    web = table[WEB]
    assert web.scheduler == "wrr" and web.persistence == 0
    assert {d.key: d.weight for d in web.dests.values()} == {
        dk("10.0.0.11", 80): 2,
        dk("10.0.0.12", 80): 1,
        dk("10.0.0.13", 80): 1,
    }
    mail = table[MAIL]
    assert mail.persistence == 300 and {d.forward for d in mail.dests.values()} == {"nat"}
    assert set(mail.dests) == {dk("192.168.0.11", 2525), dk("192.168.0.12", 2525)}
    assert table[MEDIA].flags == {"sh-port"} and set(table[MEDIA].dests) == {dk("10.0.0.21", 0)}
    assert views["web"].healthy == 3 and views["web"].quorum_ok


def test_down_server_removed_or_inhibited(cfg: Any) -> None:
    healthy = {("web", dk("10.0.0.12", 80)): False, ("mail", dk("192.168.0.11", 2525)): False}
    table, views = desired_table(cfg.services, healthy, {})
    assert dk("10.0.0.12", 80) not in table[WEB].dests  # on_failure = remove
    assert table[MAIL].dests[dk("192.168.0.11", 2525)].weight == 0  # inhibit
    assert views["web"].healthy == 2 and views["mail"].healthy == 1


def test_operator_overrides(cfg: Any) -> None:
    admin = {
        ("mail", dk("192.168.0.11", 2525)): "drained",
        ("mail", dk("192.168.0.12", 2525)): "disabled",
    }
    table, views = desired_table(cfg.services, {}, admin)
    assert table[MAIL].dests == {dk("192.168.0.11", 2525): Dest(dk("192.168.0.11", 2525), 0, "nat")}
    assert views["mail"].healthy == 0 and not views["mail"].quorum_ok
    assert not views["mail"].sorry  # mail has no sorry server: what is left stays


def test_below_quorum_the_sorry_server_stands_alone(cfg: Any) -> None:
    healthy = {("web", dk("10.0.0.11", 80)): False, ("web", dk("10.0.0.12", 80)): False}
    table, views = desired_table(cfg.services, healthy, {})
    assert set(table[WEB].dests) == {dk("10.0.0.9", 80)}
    assert views["web"].sorry and not views["web"].quorum_ok
    # The switch adds the sorry server before it removes the last real one.
    before, _ = desired_table(cfg.services, {}, {})
    changes = diff(table, before, table)
    assert isinstance(changes[0], AddDest) and changes[0].dest.key == dk("10.0.0.9", 80)
    assert all(isinstance(c, DeleteDest) for c in changes[1:])


def test_cold_load_then_no_op(cfg: Any) -> None:
    table, _ = desired_table(cfg.services, {}, {})
    changes = diff(table, {}, table)
    assert sum(isinstance(c, AddService) for c in changes) == 3
    assert sum(isinstance(c, AddDest) for c in changes) == 6
    assert apply({}, changes) == table
    assert diff(table, table, table) == []


def test_weight_change_is_an_edit_not_delete_and_add(cfg: Any) -> None:
    table, _ = desired_table(cfg.services, {}, {})
    drained, _ = desired_table(cfg.services, {}, {("web", dk("10.0.0.12", 80)): "drained"})
    assert diff(drained, table, table) == [EditDest(WEB, Dest(dk("10.0.0.12", 80), 0, "dr"))]


def test_scheduler_change_is_an_edit(cfg: Any) -> None:
    table, _ = desired_table(cfg.services, {}, {})
    changed = dict(table)
    changed[WEB] = replace(table[WEB], scheduler="lc")
    assert diff(changed, table, table) == [EditService(replace(changed[WEB], dests={}))]


def test_foreign_services_are_never_touched(cfg: Any) -> None:
    table, _ = desired_table(cfg.services, {}, {})
    foreign_key = ServiceKey("udp", ip_address("10.9.9.9"), 53)
    foreign = VirtualService(
        foreign_key, "rr", dests={dk("10.9.9.1", 53): Dest(dk("10.9.9.1", 53))}
    )
    actual = {**table, foreign_key: foreign}
    assert diff(table, actual, table) == []
    # A service hapair owned and that left the config is removed; the foreign one stays.
    smaller = {k: v for k, v in table.items() if k != MAIL}
    assert diff(smaller, actual, table) == [DeleteService(MAIL)]


def test_service_key_of_ipv6_fwmark(tmp_path: Path, cfg: Any) -> None:
    svc = cfg.services[2].model_copy(
        update={
            "real_servers": [
                cfg.services[2]
                .real_servers[0]
                .model_copy(update={"address": ip_address("2001:db8::21")})
            ]
        }
    )
    assert service_key(svc).family == 6


# Property: whatever the kernel holds, one diff makes the owned part equal to the desired.

addresses = st.sampled_from([ip_address(f"10.0.0.{i}") for i in range(1, 6)])
dests = st.builds(
    lambda a, p, w, f: Dest(DestKey(a, p), w, f),
    addresses,
    st.sampled_from([80, 8080]),
    st.integers(0, 3),
    st.sampled_from(["dr", "nat", "tun"]),
)
services = st.builds(
    lambda key, sched, persist, ds: VirtualService(
        key, sched, persist, 32, frozenset(), {d.key: d for d in ds}
    ),
    st.sampled_from([ServiceKey("tcp", ip_address("10.0.0.100"), p) for p in (80, 443, 25)]),
    st.sampled_from(["rr", "wlc"]),
    st.sampled_from([0, 300]),
    st.lists(dests, max_size=4),
)
tables = st.lists(services, max_size=3).map(lambda ss: {s.key: s for s in ss})


@settings(max_examples=500, deadline=None)
@given(desired=tables, actual=tables, foreign=tables)
def test_one_diff_converges(desired: Table, actual: Table, foreign: Table) -> None:
    foreign = {
        replace(k, port=k.port + 1000): replace(s, key=replace(k, port=k.port + 1000))
        for k, s in foreign.items()
    }
    kernel = {**actual, **foreign}
    owned = set(desired) | set(actual)
    after = apply(kernel, diff(desired, kernel, owned))
    assert {k: v for k, v in after.items() if k in owned} == desired
    assert {k: v for k, v in after.items() if k not in owned} == foreign
    assert diff(desired, after, owned) == []
