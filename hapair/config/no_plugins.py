"""pydantic without its plugin discovery, which the config does not use.

pydantic looks for plugins among every installed distribution's entry points, and to do
so imports importlib.metadata at its own import (with zipfile, email, tempfile and
importlib.resources): 1.7 MB of the idle agent's heap (measured 2026-12-02, pydantic
2.14). The agent, a root daemon, runs no code that a package it does not know declares
as a plugin. Imported before pydantic (hapair.config's first import); if pydantic is
loaded already, plugins stay as pydantic found them.
"""

from __future__ import annotations

import sys
import types

_NAME = "pydantic.plugin._loader"


def _no_plugins() -> tuple[()]:
    return ()


if "pydantic" not in sys.modules and _NAME not in sys.modules:
    _loader = types.ModuleType(_NAME, "pydantic's plugin loader, finding none")
    _loader.get_plugins = _no_plugins  # type: ignore[attr-defined]
    sys.modules[_NAME] = _loader
