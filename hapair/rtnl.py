"""pyroute2's rtnetlink API (AsyncIPRoute, its error, the constants the agent uses) without
pyroute2's package init, which imports every API pyroute2 has (NDB with sqlite3, IPDB, ss2
with psutil, nftables, WireGuard, ...): ~200 modules more than iproute.linux needs, 2.4 MB
of the idle agent's heap (measured 2026-12-02, pyroute2 0.9.7).

Owns only that import. When pyroute2 is not imported yet, its package module is made
without running its __init__; the first name asked of it that is not a submodule (`from
pyroute2 import IPRoute`, anywhere in the process) runs the __init__ then, so other code
sees the whole package as before.
"""

from __future__ import annotations

import importlib.util
import sys


def _lean_package() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        return  # not installed: the imports below say so
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)

    def complete(name: str) -> object:
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)  # a submodule: the import system loads it
        vars(package).pop("__getattr__", None)
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package


_lean_package()

from pyroute2.iproute.linux import AsyncIPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.rtnl import RTMGRP_LINK  # noqa: E402
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD  # noqa: E402

__all__ = ["IFA_F_NODAD", "RTMGRP_LINK", "AsyncIPRoute", "NetlinkError"]
