"""scripts/lab.py as a module, for the tests of the lab, its provisioning and the Vagrantfile
(a script, not part of the hapair package): loaded once per test process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
LAB_PY = ROOT / "scripts" / "lab.py"
NAME = "hapair_lab"


def load_lab() -> ModuleType:
    if NAME in sys.modules:
        return sys.modules[NAME]
    spec = importlib.util.spec_from_file_location(NAME, LAB_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
