"""The ICMP probe between two namespaces on a bridge (root: raw sockets, namespaces).

The probe runs in a subprocess inside the director's namespace and prints its Result as
JSON; the namespaces and the bridge are deleted by the fixtures even when a test fails.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
from topology import Bridge, Netns

pytestmark = pytest.mark.netns

PROBE = """
import asyncio, json, sys, time
from ipaddress import ip_address
from hapair import probes
from hapair.config.checks import IcmpProbe

async def main():
    probe = IcmpProbe(type="icmp", timeout=float(sys.argv[2]))
    started = time.monotonic()
    result = await probes.check(probe, ip_address(sys.argv[1]), 0)
    elapsed = time.monotonic() - started
    print(json.dumps({"ok": result.ok, "reason": result.reason,
                      "latency": result.latency, "elapsed": elapsed}))

asyncio.run(main())
"""


def probe_from(ns: Netns, address: str, timeout: float) -> dict[str, Any]:
    proc = ns.run(sys.executable, "-c", PROBE, address, str(timeout), timeout=60)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture
def pair(
    netns_factory: Callable[[str], Netns], bridge_factory: Callable[..., Bridge]
) -> tuple[Netns, Netns]:
    """A director and a real server on one bridge, with IPv4 and IPv6 addresses."""
    bridge = bridge_factory("sw")
    director, real = netns_factory("dir"), netns_factory("rs")
    bridge.attach(director, "eth0", "192.0.2.1/24")
    bridge.attach(real, "eth0", "192.0.2.11/24")
    # nodad: the addresses are usable at once instead of after duplicate detection.
    director.ip("addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad")
    real.ip("addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad")
    return director, real


@pytest.mark.parametrize("address", ["192.0.2.11", "2001:db8::11"])
def test_reachable_server_answers(pair: tuple[Netns, Netns], address: str) -> None:
    director, _ = pair
    result = probe_from(director, address, timeout=2.0)
    assert result["ok"], result
    assert result["latency"] > 0
    assert result["reason"].startswith(f"ICMP echo to {address}: reply in ")


@pytest.mark.parametrize("address", ["192.0.2.99", "2001:db8::99"])
def test_unassigned_address_fails_within_timeout(pair: tuple[Netns, Netns], address: str) -> None:
    director, _ = pair
    result = probe_from(director, address, timeout=1.0)
    assert not result["ok"], result
    assert result["reason"] == f"ICMP echo to {address}: no reply within 1s"
    assert result["elapsed"] < 1.0 + 0.5


def test_server_going_away_is_noticed(pair: tuple[Netns, Netns]) -> None:
    director, real = pair
    assert probe_from(director, "192.0.2.11", timeout=2.0)["ok"]
    real.ip("link", "set", "eth0", "down")
    result = probe_from(director, "192.0.2.11", timeout=1.0)
    assert not result["ok"], result
    assert result["elapsed"] < 1.0 + 0.5
