"""The sans-I/O core stays pure: its modules import no I/O and no clock, only the core,
the config and the two pure IPVS modules (the desired table and its diff), which are held
to the same rule. Read from the source, so a new import anywhere in it is caught."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HAPAIR = Path(__file__).resolve().parents[2] / "hapair"
PURE_IPVS = {"hapair.ipvs.table", "hapair.ipvs.reconcile"}
# Standard modules that do no I/O and read no clock.
PURE_STDLIB = {
    "__future__",
    "collections",
    "collections.abc",
    "copy",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "heapq",
    "hmac",
    "ipaddress",
    "itertools",
    "json",
    "math",
    "re",
    "struct",
    "typing",
    "zlib",
}


# Parsed in a fresh interpreter: after some earlier tests in this process, CPython 3.11.2's
# AST builder can fail with "AST constructor recursion depth mismatch" (fixed in 3.11.5).
_PARSE = """
import ast, json, sys
out = {}
for path in sys.argv[1:]:
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    out[path] = sorted(names)
print(json.dumps(out))
"""


@functools.cache
def _all_imports() -> dict[str, list[str]]:
    paths = [str(p) for p in sorted(HAPAIR.rglob("*.py"))]
    done = subprocess.run(
        [sys.executable, "-c", _PARSE, *paths], capture_output=True, text=True, check=True
    )
    found: dict[str, list[str]] = json.loads(done.stdout)
    return found


def _imports(path: Path) -> set[str]:
    return set(_all_imports()[str(path)])


def _allowed(name: str) -> bool:
    return (
        name in PURE_STDLIB
        or name in PURE_IPVS
        or name.startswith(("hapair.core", "hapair.config"))
        or name == "pydantic"
        or name.startswith("pydantic.")
    )


@pytest.mark.parametrize(
    "path",
    [
        *sorted((HAPAIR / "core").glob("*.py")),
        *(HAPAIR / "ipvs" / f"{m}.py" for m in ("table", "reconcile")),
    ],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_the_core_imports_no_io_and_no_clock(path: Path) -> None:
    bad = sorted(name for name in _imports(path) if not _allowed(name))
    assert not bad, f"{path.name} imports {bad}"


def test_the_config_imports_nothing_of_the_agent() -> None:
    """The config is read by the core: it must not pull the agent's I/O in either."""
    for path in sorted((HAPAIR / "config").glob("*.py")):
        bad = sorted(
            name
            for name in _imports(path)
            if name.startswith("hapair.") and not name.startswith("hapair.config")
        )
        assert not bad, f"config/{path.name} imports {bad}"
