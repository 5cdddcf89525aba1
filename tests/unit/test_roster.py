"""The operator's roster: commands applied or refused with a reason, and kept as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from samples import config

from hapair.config import validate
from hapair.core.refused import Refused
from hapair.core.roster import Roster, parse_server
from hapair.ipvs.reconcile import dest_keys

pytestmark = pytest.mark.unit


@pytest.fixture
def services(key_file: Path) -> Any:
    return validate(
        config(
            key_file,
            services=[
                {
                    "name": "web",
                    "protocol": "tcp",
                    "address": "10.0.0.100",
                    "port": 80,
                    "real_servers": [{"address": "10.0.0.11"}, {"address": "10.0.0.12"}],
                },
                {
                    "name": "media",
                    "protocol": "fwmark",
                    "fwmark": 3,
                    "real_servers": [{"address": "10.0.0.21"}],
                },
            ],
        )
    ).services


def servers(roster: Roster, svc: Any) -> list[str]:
    return [str(k) for k in dest_keys(roster.effective(svc))]


def test_drain_disable_enable(services: Any) -> None:
    r = Roster()
    assert r.apply(services, "drain", "web", "10.0.0.11:80") == "10.0.0.11:80 of web drained"
    r.apply(services, "disable", "web", "10.0.0.12")  # the service port is implied
    assert r.admin_states() == {
        ("web", parse_server("10.0.0.11:80")): "drained",
        ("web", parse_server("10.0.0.12:80")): "disabled",
    }
    r.apply(services, "enable", "web", "10.0.0.11:80")
    assert list(r.admin_states().values()) == ["disabled"]


def test_add_and_remove_at_run_time(services: Any) -> None:
    r = Roster()
    r.apply(services, "add", "web", "10.0.0.13:80", weight=3)
    assert servers(r, services[0]) == ["10.0.0.11:80", "10.0.0.12:80", "10.0.0.13:80"]
    assert r.effective(services[0]).real_servers[-1].weight == 3
    r.apply(services, "remove", "web", "10.0.0.11:80")  # a configured one
    r.apply(services, "remove", "web", "10.0.0.13:80")  # an added one
    assert servers(r, services[0]) == ["10.0.0.12:80"]
    r.apply(services, "add", "web", "10.0.0.11:80")  # back again
    assert servers(r, services[0]) == ["10.0.0.11:80", "10.0.0.12:80"]  # in config order
    r.apply(services, "add", "media", "10.0.0.22")
    assert servers(r, services[1]) == ["10.0.0.21:0", "10.0.0.22:0"]


@pytest.mark.parametrize(
    ("cmd", "service", "server", "why"),
    [
        ("drain", "mail", "10.0.0.11:80", "no service 'mail'"),
        ("drain", "web", "10.0.0.99:80", "not a real server of web"),
        ("add", "web", "10.0.0.11:80", "already a real server"),
        ("add", "web", "10.0.0.14:8080", "port must be 80"),
        ("add", "media", "10.0.0.22:554", "has no port"),
        ("add", "web", "not-an-address", "not an IP address"),
        ("remove", "web", "10.0.0.99:80", "not a real server"),
        ("reboot", "web", "10.0.0.11:80", "unknown action"),
    ],
)
def test_refusals_say_why(services: Any, cmd: str, service: str, server: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        Roster().apply(services, cmd, service, server)


def test_round_trip_and_hostile_files(services: Any) -> None:
    r = Roster()
    r.apply(services, "drain", "web", "10.0.0.11:80")
    r.apply(services, "add", "web", "10.0.0.13:80", weight=2)
    r.apply(services, "remove", "media", "10.0.0.21")
    again = Roster.from_json(json.loads(json.dumps(r.to_json())))
    assert again == r
    for junk in (
        None,
        [],
        "x",
        {
            "admin": [],
            "added": {"web": {"bad": 1, "10.0.0.9:80": "x"}},
            "removed": {"web": [1, "nope"]},
        },
        {"admin": {"web": {"10.0.0.11:80": "exploded"}}},
    ):
        assert Roster.from_json(junk) == Roster(
            admin={"web": {}}
            if isinstance(junk, dict) and "admin" in junk and isinstance(junk["admin"], dict)
            else {},
            added={"web": {}} if isinstance(junk, dict) and "added" in junk else {},
            removed={"web": []} if isinstance(junk, dict) and "removed" in junk else {},
        )
