"""What bench/ipvs_load and bench/probes share: their error, the test for the QEMU guest,
the way a bench's run becomes its exit status, and a helper process spoken to in JSON lines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any


class BenchError(Exception):
    """The bench itself broke (not a missed target)."""


def in_guest() -> bool:
    """In the QEMU guest of scripts/run-in-kernel, with IPVS."""
    return os.environ.get("HAPAIR_IN_GUEST") == "1" and os.path.exists("/proc/net/ip_vs")


def exit_status(
    name: str, body: Callable[[], int], errors: tuple[type[Exception], ...] = (BenchError,)
) -> int:
    """`body()`, SIGTERM ending it as sys.exit(143) does: its exit status; 1 when the bench
    itself broke (`errors`, said on stderr after `name`), 130 when interrupted."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return body()
    except errors as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class Child:
    """A helper process (`cmd`) that says it is ready in a first line of JSON, answers every
    line sent to it with one, and ends at the end of its input; `what` names it in errors."""

    def __init__(self, cmd: list[str], what: str) -> None:
        self.what = what
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.read()

    def ask(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as e:
            raise BenchError(f"{self.what} died") from e
        return self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"{self.what} died (exit status {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """The end of its input, then up to 30 s for it to exit; SIGKILL after that."""
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
