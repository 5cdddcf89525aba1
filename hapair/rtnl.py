"""pyroute2's rtnetlink API (AsyncIPRoute, its error, the constants the agent uses) without
pyroute2's package init, which imports every API pyroute2 has (NDB with sqlite3, IPDB, ss2
with psutil, nftables, WireGuard, ...): ~200 modules more than iproute.linux needs, 2.4 MB
of the idle agent's heap (measured 2026-12-02, pyroute2 0.9.7).

Owns only that import. When pyroute2 is not imported yet, its package module is made
without running its __init__; the first name asked of it that is not a submodule (`from
pyroute2 import IPRoute`, anywhere in the process) runs the __init__ then, so other code
sees the whole package as before.

Its rtnetlink socket module imports unittest.mock to make one Mock at import, for its
synchronous socket's stand-in event loop, which the agent never builds: unittest's 11
modules, 1.35 MB of the heap. While pyroute2 loads, `unittest.mock` is a stand-in whose
Mock becomes a real one the first time it is used; the stand-in leaves sys.modules after,
so any other `import unittest` gets the real one.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any


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


class _LateMock:
    """unittest.mock.Mock(*args, **kwargs), made when first used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        vars(self)["_made"] = (args, kwargs)

    def _mock(self) -> Any:
        made = vars(self)["_made"]
        if isinstance(made, tuple):
            args, kwargs = made
            made = vars(self)["_made"] = importlib.import_module("unittest.mock").Mock(
                *args, **kwargs
            )
        return made

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mock(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._mock(), name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._mock()(*args, **kwargs)


def _real_mock(name: str) -> Any:
    return getattr(importlib.import_module("unittest.mock"), name)


@contextlib.contextmanager
def _late_unittest() -> Iterator[None]:
    if "unittest" in sys.modules:
        yield
        return
    mock = types.ModuleType("unittest.mock")
    mock.Mock = _LateMock  # type: ignore[attr-defined]
    mock.__getattr__ = _real_mock  # type: ignore[method-assign]
    package = types.ModuleType("unittest")
    package.mock = mock  # type: ignore[attr-defined]
    stand_ins = {"unittest": package, "unittest.mock": mock}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


_lean_package()

with _late_unittest():
    from pyroute2.iproute.linux import AsyncIPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.rtnl import RTMGRP_LINK
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

__all__ = ["IFA_F_NODAD", "RTMGRP_LINK", "AsyncIPRoute", "NetlinkError"]
