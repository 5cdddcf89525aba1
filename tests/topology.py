"""Pytest fixtures that build network namespaces, veth pairs and bridges with `ip`.

Everything made here is named with this run's prefix and deleted at fixture teardown, even
when a test fails; a session-end sweep removes anything with the prefix that is left over.
"""

from __future__ import annotations

import itertools
import secrets
import sys
from collections.abc import Callable, Iterator

import pytest

from lab.shell import Bridge, Netns, netns_add, sh

__all__ = [
    "Bridge",
    "Netns",
    "bridge_factory",
    "netns_factory",
    "reachable",
    "topology_sweep",
]

# "hp" + 4 hex digits: short enough that prefix + suffix fits an ifname (15 chars).
RUN_PREFIX = f"hp{secrets.token_hex(2)}"
_serial = itertools.count(1)


def unique_name(kind: str) -> str:
    name = f"{RUN_PREFIX}{kind}{next(_serial)}"
    assert len(name) <= 15, name
    return name


def reachable(src: Netns, addr: str, timeout: float = 3.0) -> bool:
    """True if `addr` answers a TCP SYN from `src` (a RST counts): no ping binary needed."""
    probe = f"import socket, sys\ns = socket.create_connection(({addr!r}, 9), timeout={timeout})\n"
    proc = src.run(sys.executable, "-c", probe, check=False, timeout=timeout + 30)
    return proc.returncode == 0 or "ConnectionRefusedError" in proc.stderr


def _delete_netns(name: str) -> None:
    sh("ip", "netns", "del", name, check=False)


def _leftovers() -> tuple[list[str], list[str]]:
    netns = [
        line.split()[0]
        for line in sh("ip", "netns", "list").stdout.splitlines()
        if line.startswith(RUN_PREFIX)
    ]
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in sh("ip", "-o", "link", "show").stdout.splitlines()
        if line.split(":")[1].strip().startswith(RUN_PREFIX)
    ]
    return netns, links


@pytest.fixture(scope="session")
def topology_sweep() -> Iterator[None]:
    """At session end, delete any namespace or root-namespace link with this run's prefix."""
    yield
    netns, links = _leftovers()
    for name in netns:
        _delete_netns(name)
    for name in links:
        sh("ip", "link", "del", name, check=False)


@pytest.fixture
def netns_factory(topology_sweep: None) -> Iterator[Callable[[str], Netns]]:
    """`make(hint) -> Netns`: a new namespace with `lo` up, deleted after the test."""
    made: list[Netns] = []

    def make(hint: str = "ns") -> Netns:
        ns = Netns(f"{RUN_PREFIX}-{hint}-{next(_serial)}")
        made.append(ns)  # deleted after the test, also when it is made only in part
        netns_add(ns.name)
        return ns

    yield make
    for ns in reversed(made):
        _delete_netns(ns.name)


@pytest.fixture
def bridge_factory(
    netns_factory: Callable[[str], Netns], topology_sweep: None
) -> Iterator[Callable[..., Bridge]]:
    """`make(hint="sw", root=False) -> Bridge`: a bridge in a namespace of its own, or in the
    root namespace (uniquely named) with `root=True`; deleted after the test."""
    root_bridges: list[Bridge] = []

    def make(hint: str = "sw", *, root: bool = False) -> Bridge:
        if root:
            bridge = Bridge(None, unique_name("br"))
            root_bridges.append(bridge)
        else:
            bridge = Bridge(netns_factory(hint), "br0")
        return bridge.create()

    yield make
    # Delete the root-namespace ends explicitly: a deleted namespace is torn down
    # asynchronously, so its veth peers would linger in the root namespace for a while.
    for bridge in root_bridges:
        for name in [*bridge.ports, bridge.name]:
            sh("ip", "link", "del", name, check=False)
