"""The `hapair` command as the tests run it: a fresh interpreter, as an operator's shell
would start it, its output captured."""

from __future__ import annotations

import subprocess
import sys


def hapair(
    *args: str, stdin: str = "", check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`hapair ARGS...` with `stdin`; `check`: fail unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "hapair", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"hapair {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done
