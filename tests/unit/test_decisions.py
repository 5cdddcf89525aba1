"""The agent's pure decisions, in the core: own health, the order of a takeover, what a
reload takes away, and what the operator is told of verdicts and quorum."""

from __future__ import annotations

import pytest

from hapair.config.model import Service, Vip
from hapair.core.health import Health
from hapair.core.verdicts import quorum_changes, server_changed
from hapair.core.vips import leaving, takeover_order
from hapair.ipvs.reconcile import ServiceView

pytestmark = pytest.mark.unit


def vip(address: str, interface: str = "eth0") -> Vip:
    return Vip.model_validate({"address": address, "interface": interface})


def service(address: str) -> Service:
    return Service.model_validate(
        {"name": "web", "protocol": "tcp", "address": address, "port": 80}
    )


def test_health_changes_only_when_the_first_check_fails_or_the_last_recovers() -> None:
    health = Health()
    assert health.set("icmp 10.0.0.254", False, "no echo reply")
    assert not health.set("interface eth0", False, "down")
    assert not health.set("icmp 10.0.0.254", True, "echo reply")
    assert (health.ok, health.reason()) == (False, "interface eth0: down")
    assert health.set("interface eth0", True, "up")
    assert health.ok and health.reason() == ""


def test_a_takeover_adds_the_unserved_vips_first_else_in_the_config_s_order() -> None:
    gateway, web, other = vip("10.0.1.1/24", "eth1"), vip("10.0.0.100/24"), vip("10.0.0.101/24")
    order = takeover_order([web, gateway, other], [service("10.0.0.100")])
    assert order == [gateway, other, web]
    assert takeover_order([web, other], []) == [web, other]


def test_a_reload_takes_away_what_the_new_config_lacks() -> None:
    a, b = vip("10.0.0.100/24"), vip("10.0.0.101/24")
    moved = vip("10.0.0.101/24", "eth1")
    assert leaving([a, b], [a]) == [b]
    assert leaving([a, b], [a, moved]) == [b]  # same address, another interface
    assert leaving([a], [a, b]) == []


def test_verdicts_and_quorum_changes_are_told_once_each() -> None:
    down = server_changed("web", "10.0.0.11:80", False, "connection refused")
    assert down.event == "server_down" and down.subject == "web 10.0.0.11:80"
    assert "is down: connection refused" in down.summary
    ok, lost = ServiceView(2, True, False), ServiceView(0, False, True)
    assert quorum_changes({}, {"web": ok}, {"web": 1}) == []  # met at start
    notices = quorum_changes({"web": ok}, {"web": lost, "mail": ok}, {"web": 1, "mail": 1})
    assert [(n.event, n.subject) for n in notices] == [("quorum_lost", "web")]
    assert "the sorry server stands in" in notices[0].summary
    back = quorum_changes({"web": lost}, {"web": ok}, {"web": 1})
    assert [n.event for n in back] == ["quorum_back"]
    assert quorum_changes({"web": lost}, {"web": lost}, {"web": 1}) == []
