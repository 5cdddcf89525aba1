"""What the agent's start path imports for a config without [monitor] and [alerts]: not the
libraries only those use (aiohttp, aiosmtplib), never scapy, and pyroute2 without its
package init (hapair/rtnl.py); each of them costs the idle node megabytes (bench/footprint).
Each test runs in a fresh interpreter, as the agent does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CONFIG = """
[node]
name = "n1"
priority = 100
control_socket = "{tmp}/n1.sock"
state_dir = "{tmp}"

[cluster]
id = 7
auth_key_file = "{tmp}/authkey"

[[cluster.links]]
type = "udp"
interface = "lo"
group = "239.0.0.7"
port = 6997

[[vips]]
address = "10.7.0.100/24"
interface = "lo"
"""

# The agent's start up to its first heartbeat, less what needs root: the CLI's check of
# the config, the agent's modules, its objects, the VIP and interface adapters and what
# it imports before its clock runs (Agent._preload).
START = """
import asyncio, sys
from pathlib import Path
from hapair.cli.ask import load
config = Path(sys.argv[1])
assert load(config) is not None
from hapair import agent, holder, interfaces, vip
from hapair.config import load

async def start():
    agent.Agent(load(config), config)._preload()

asyncio.run(start())
print(" ".join(sorted(sys.modules)))
"""


def _modules_at_start(tmp_path: Path) -> set[str]:
    key = tmp_path / "authkey"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    config = tmp_path / "n1.toml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", START, str(config)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ},
    ).stdout
    return set(out.split())


def test_start_without_monitor_or_alerts_imports_no_library_they_need(tmp_path: Path) -> None:
    modules = _modules_at_start(tmp_path)
    top = {name.partition(".")[0] for name in modules}
    assert "hapair.agent" in modules and "hapair.vip" in modules
    assert not {"aiohttp", "aiosmtplib", "scapy"} & top, sorted(top)


def test_start_imports_pyroute2_without_its_package_init_or_iproute(tmp_path: Path) -> None:
    """The netlink socket and the link and address messages (hapair/rtnl.py), not the
    package's every API nor IPRoute's request filters, message types and mock engine."""
    modules = _modules_at_start(tmp_path)
    assert "pyroute2.netlink.nlsocket" in modules
    assert "pyroute2.netlink.rtnl.ifaddrmsg" in modules
    unused = {"pyroute2.ndb", "pyroute2.ipdb", "pyroute2.nftables", "sqlite3"}
    unused |= {"pyroute2.iproute", "pyroute2.iproute.linux", "pyroute2.netlink.rtnl.rtmsg"}
    assert not unused & modules, sorted(unused & modules)
    assert len({m for m in modules if m.startswith("pyroute2")}) <= 40


def test_start_imports_neither_plugin_discovery_nor_unittest(tmp_path: Path) -> None:
    """pydantic's plugin loader (importlib.metadata, with zipfile and email) and unittest
    (pyroute2's IPRoute socket imports unittest.mock): megabytes the agent never uses
    (hapair/config/no_plugins.py, hapair/rtnl.py)."""
    modules = _modules_at_start(tmp_path)
    assert "pydantic" in modules and "pyroute2.netlink.nlsocket" in modules
    unused = {"importlib.metadata", "unittest", "unittest.mock", "email", "zipfile"}
    assert not unused & modules, sorted(unused & modules)


def _python(code: str) -> None:
    """`code` in a fresh interpreter, as the agent starts: its asserts must hold."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, env={**os.environ})


def test_the_lean_socket_speaks_to_the_kernel_and_leaves_iproute_whole() -> None:
    """hapair/rtnl.py's socket lists this namespace's links and addresses, and pyroute2's
    own IPRoute socket, imported after it, works with the real unittest.mock."""
    _python(
        """
        import asyncio, socket, sys, hapair.rtnl
        assert 'unittest' not in sys.modules and 'pyroute2.iproute' not in sys.modules

        async def main():
            rtnl = hapair.rtnl.Rtnl()
            try:
                links = {m.get('ifname'): m['index'] for m in await rtnl.links()}
                assert links['lo'] == socket.if_nametoindex('lo'), links
                found = [m.get('address') for m in await rtnl.addresses(socket.AF_INET)]
                assert '127.0.0.1' in found, found
                return links
            finally:
                rtnl.close()

        links = asyncio.run(main())
        from pyroute2.iproute.linux import IPRoute
        from pyroute2.netlink.rtnl import iprsocket
        import unittest.mock
        assert iprsocket.mock is unittest.mock
        with IPRoute() as ipr:
            assert ipr.link_lookup(ifname='lo') == [links['lo']]
        """
    )


def test_pydantic_finds_no_plugins_and_validates_as_ever() -> None:
    _python(
        """
        import sys, hapair.config
        from pydantic.plugin import _loader
        assert tuple(_loader.get_plugins()) == ()
        assert 'importlib.metadata' not in sys.modules
        from hapair.config import ConfigError, validate
        try:
            validate({'node': {'name': 'n1'}})
        except ConfigError as exc:
            assert 'node.priority' in str(exc), str(exc)
        else:
            raise AssertionError('accepted a node without a priority')
        """
    )


def test_the_whole_of_pyroute2_is_there_for_who_asks() -> None:
    """After hapair.rtnl, `from pyroute2 import X` (the kernel tests' IPVS) works as ever."""
    _python(
        """
        import sys, hapair.rtnl
        assert 'pyroute2.ndb' not in sys.modules
        import pyroute2
        from pyroute2 import AsyncIPVS, IPRoute, NDB
        from pyroute2.netlink.exceptions import NetlinkError
        assert hapair.rtnl.NetlinkError is NetlinkError
        assert IPRoute and NDB and AsyncIPVS
        assert pyroute2.__version__
        """
    )
