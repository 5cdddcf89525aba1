"""The topology fixtures on the host kernel: namespaces on a bridge reach each other, and
nothing they made survives the fixture teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from topology import Bridge, Netns, reachable

from lab.shell import sh

pytestmark = pytest.mark.netns


@pytest.fixture
def made() -> Iterator[list[str]]:
    """Requested before the factories, so it checks after their teardown."""
    names: list[str] = []
    yield names
    assert names, "the test recorded nothing to check"
    namespaces = sh("ip", "netns", "list").stdout
    links = sh("ip", "-o", "link", "show").stdout
    left = [n for n in names if n in namespaces or n in links]
    assert not left, f"left behind: {left}"


def test_two_namespaces_on_a_bridge_reach_each_other(
    made: list[str],
    netns_factory: Callable[[str], Netns],
    bridge_factory: Callable[..., Bridge],
) -> None:
    a, b = netns_factory("a"), netns_factory("b")
    switch = bridge_factory()
    switch.attach(a, "eth0", "10.99.0.1/24")
    switch.attach(b, "eth0", "10.99.0.2/24")
    made.extend([a.name, b.name, switch.netns.name if switch.netns else switch.name])

    assert reachable(a, "10.99.0.2")
    assert reachable(b, "10.99.0.1")
    assert not reachable(a, "10.99.0.3", timeout=1.0)


def test_root_bridge_and_direct_veth(
    made: list[str],
    netns_factory: Callable[[str], Netns],
    bridge_factory: Callable[..., Bridge],
) -> None:
    a, b, c = netns_factory("a"), netns_factory("b"), netns_factory("c")
    switch = bridge_factory(root=True)
    switch.attach(a, "eth0", "10.98.0.1/24")
    switch.attach(b, "eth0", "10.98.0.2/24")
    a.veth("eth1", c, "eth1")
    a.ip("addr", "add", "10.97.0.1/24", "dev", "eth1")
    c.ip("addr", "add", "10.97.0.2/24", "dev", "eth1")
    made.extend([a.name, b.name, c.name, switch.name])

    assert reachable(b, "10.98.0.1")
    assert reachable(c, "10.97.0.1")
    assert not reachable(b, "10.97.0.2", timeout=1.0)
