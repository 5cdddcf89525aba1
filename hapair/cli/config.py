"""`hapair config`: the running agent's config shown, checked, applied, rolled back and
listed over the control socket (the agent's side: configure.py); and `merge`, which
makes two one-director files one pair file without asking any agent."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any

from hapair import control_client
from hapair.cli.ask import (
    BAD_INPUT,
    OK,
    REFUSED,
    ask,
    command,
    load,
    refusal,
    socket,
    socket_options,
)


def add_parser(sub: Any) -> None:
    config = sub.add_parser(
        "config",
        help="the running agent's config: show, check, apply, history, rollback; merge",
        description="The running agent's config file, over the control socket. A change "
        "is checked as `hapair check` does, written atomically, kept in the history "
        "(<node.state_dir>/config-history/) and reloaded as on SIGHUP. Exit 0 ok, "
        "1 refused (the reason is printed), 2 invalid (every error as 'path: message').",
    )
    steps = config.add_subparsers(dest="step", required=True, metavar="STEP")
    for step, text in (
        ("show", "print the running config"),
        ("history", "list the versions kept, newest first"),
        ("check", "check NEWFILE and show what it would change in the running config"),
        ("apply", "check NEWFILE, write it as the running config and reload"),
        ("rollback", "make a kept VERSION the running config again, and reload"),
    ):
        c = steps.add_parser(step, help=text, description=f"{step}: {text}.")
        if step in ("check", "apply"):
            c.add_argument("newfile", type=Path, metavar="NEWFILE")
        if step == "rollback":
            c.add_argument("version", metavar="VERSION")
        socket_options(c)
        c.set_defaults(func=_config)
    merge = command(
        steps,
        "merge",
        _merge,
        "make two one-director files one pair file",
        "merge: two one-director files ([node]) whose other parts are the same made one "
        "pair file (two [[nodes]]), written to OUT or standard output. No agent is asked. "
        "Exit 0 written, 1 refused (what differs is printed), 2 a file invalid.",
    )
    merge.add_argument("a", type=Path, metavar="A")
    merge.add_argument("b", type=Path, metavar="B")
    merge.add_argument("-o", "--output", type=Path, metavar="OUT")


CONFIG_TIMEOUT = 60.0  # s for an apply: the agent reloads before it answers


def _config(args: argparse.Namespace) -> int:
    if args.step == "check":
        return _check(args)
    message: dict[str, Any] = {"cmd": f"config_{args.step}"}
    user = f"{getpass.getuser()} (cli)"
    if args.step == "apply":
        text = _read_text(args.newfile)
        if text is None:
            return BAD_INPUT
        show = _ask_config(args, {"cmd": "config_show"})
        message |= {"toml": text, "version": show.get("version", ""), "user": user}
    elif args.step == "rollback":
        message |= {"version": args.version, "user": user}
    result = _ask_config(args, message)
    if args.step == "show":
        print(result.get("toml", ""), end="")
    elif args.step == "history":
        for entry in result.get("versions", []):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.get("time") or 0))
            print(f"{entry.get('version')}  {stamp}  {entry.get('user')}  {entry.get('summary')}")
    else:
        for line in result.get("changes", []):
            print(line)
        print(f"applied {result.get('version')} on {', '.join(result.get('applied', []))}")
    return OK


def _check(args: argparse.Namespace) -> int:
    """NEWFILE checked here as `hapair check` does; then, when an agent answers, by it,
    with what would change in its running config."""
    if load(args.newfile, out=sys.stdout, every=True) is None:
        return BAD_INPUT
    text = _read_text(args.newfile)
    if text is None:
        return BAD_INPUT
    path = socket(args, quiet=True)
    try:
        if path is None:
            raise control_client.NoAgent
        reply = control_client.request(path, {"cmd": "config_check", "toml": text})
    except control_client.NoAgent:
        print("ok (no agent answers: not compared with a running config)")
        return OK
    if not reply.get("ok"):
        return refusal(reply, "refused: ")
    for line in (reply.get("result") or {}).get("changes") or ["no change"]:
        print(line)
    print("ok")
    return OK


def _merge(args: argparse.Namespace) -> int:
    from hapair import host
    from hapair.config.merge import MergeError, merge

    try:
        text = merge(args.a, args.b)
    except MergeError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return exc.code
    if args.output is None:
        print(text, end="")
        return OK
    try:
        host.atomic_write(args.output, text)
    except OSError as exc:
        print(f"{args.output}: {exc.strerror or exc}", file=sys.stderr)
        return BAD_INPUT
    print(f"wrote {args.output}", file=sys.stderr)
    return OK


def _read_text(path: Path) -> str | None:
    from hapair.config import MAX_BYTES

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes; not a config file")
        return data.decode()
    except (OSError, ValueError) as exc:
        print(f"{path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return None


def _ask_config(args: argparse.Namespace, message: dict[str, Any]) -> dict[str, Any]:
    """The agent's result for a config_* request (1 when no agent answers)."""
    result = ask(args, message, REFUSED, "refused: ", timeout=CONFIG_TIMEOUT)
    return result if isinstance(result, dict) else {}
