"""What the `hapair` subcommands share: exit codes, options, loading a config, and
asking the running agent over its control socket."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hapair import control_client

OK, REFUSED, BAD_INPUT, NO_AGENT = 0, 1, 2, 3


class Exit(Exception):
    """Ends the command with this exit code (what went wrong is printed already)."""

    def __init__(self, code: int) -> None:
        self.code = code


def command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], text: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand that runs `func`."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=text, description=description)
    p.set_defaults(func=func)
    return p


def node_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--node",
        metavar="NAME",
        help="with a pair file: the [[nodes]] entry (default: the one named like this host)",
    )


def socket_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", type=Path, metavar="FILE", help="find the control socket from this config"
    )
    node_option(p)
    p.add_argument("--socket", type=Path, metavar="PATH", help="the control socket itself")


def load(path: Path, out: Any = None, node: str | None = None, every: bool = False) -> Any:
    """The config at `path` (a list of every director's with `every`), or None after
    printing every problem with it (unless `out` is False)."""
    from hapair.config import ConfigError, load, load_all

    try:
        return load_all(path, node) if every else load(path, node)
    except ConfigError as exc:
        for problem in exc.problems if out is not False else ():
            print(problem, file=out or sys.stderr)
        return None


def socket(args: argparse.Namespace, quiet: bool = False) -> Path | None:
    """The control socket path, or None after printing why there is none (`quiet`: None
    without a word)."""
    explicit = args.socket
    if explicit is None and args.config is not None:
        cfg = load(args.config, out=False if quiet else None, node=args.node)
        if cfg is None:
            return None
        explicit = cfg.node.socket_path
    try:
        return control_client.find_socket(explicit)
    except control_client.NoAgent as exc:
        if not quiet:
            print(f"hapair: {exc}", file=sys.stderr)
        return None


def ask(
    args: argparse.Namespace,
    message: dict[str, Any],
    no_agent: int,
    refused: str,
    timeout: float | None = None,
) -> Any:
    """The agent's result for `message`. Without one, prints why and ends the command:
    `no_agent` when no agent answers, BAD_INPUT with every error when it finds a config
    invalid, REFUSED when it refuses (`refused` before its reason)."""
    path = socket(args)
    if path is None:
        raise Exit(no_agent)
    try:
        if timeout is None:
            reply = control_client.request(path, message)
        else:
            reply = control_client.request(path, message, timeout=timeout)
    except control_client.NoAgent as exc:
        print(f"hapair: {exc}", file=sys.stderr)
        raise Exit(no_agent) from None
    if not reply.get("ok"):
        raise Exit(refusal(reply, refused))
    return reply.get("result")


def refusal(reply: dict[str, Any], refused: str) -> int:
    """Prints an agent's refusal; the exit code it calls for."""
    errors = reply.get("errors") or []
    if reply.get("reason") == "invalid":
        for line in errors:
            print(line)
        return BAD_INPUT
    print(f"hapair: {refused}{reply.get('error', 'no reason given')}", file=sys.stderr)
    for line in errors:
        print(f"  {line}", file=sys.stderr)
    return REFUSED
