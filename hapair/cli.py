"""The `hapair` command line: argument parsing, exit codes, and printing.

Exit codes follow the contract: 0 ok; 1 refused; 2 bad config or input;
3 no agent answers. The work itself lives elsewhere; this file only dispatches.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hapair import __version__, control_client
from hapair.status_table import format_status

if TYPE_CHECKING:
    from hapair.status import Status

OK, REFUSED, BAD_INPUT, NO_AGENT = 0, 1, 2, 3


class _Exit(Exception):
    """Ends the command with this exit code (what went wrong is printed already)."""

    def __init__(self, code: int) -> None:
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except _Exit as exc:
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hapair status | head`: the reader had what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
        return OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hapair",
        description="High-availability manager for a pair of LVS directors.",
    )
    p.add_argument("--version", action="version", version=f"hapair {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, func, text, description in (
        (
            "run",
            _run,
            "run the agent in the foreground",
            "Run the agent until SIGTERM/SIGINT; SIGHUP reloads the config. "
            "Exits 2 on a bad config, before touching the system.",
        ),
        (
            "check",
            _check,
            "validate a config file",
            "Validate FILE without touching the system (a pair file: for each of its "
            "[[nodes]], or the one --node names). Prints 'ok', or every error as "
            "'path.to.field: message', one per line. Exit 0 valid, 2 invalid.",
        ),
    ):
        on_file = _command(sub, name, func, text, description)
        on_file.add_argument("-c", "--config", type=Path, required=True, metavar="FILE")
        _node_option(on_file)
    status = _command(
        sub,
        "status",
        _status,
        "show the running agent's state",
        "Ask the running agent for its state. Exit 0; 3 when no agent answers.",
    )
    _socket_options(status)
    status.add_argument("--json", action="store_true", help="print the status JSON")

    ctl = sub.add_parser(
        "ctl",
        help="operator actions on the running agent",
        description="Operator actions. Exit 0 done, 1 refused (the reason is printed).",
    )
    actions = ctl.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("drain", "weight 0, keep existing connections"),
        ("enable", "back under probe control"),
        ("disable", "take out of IPVS"),
        ("add", "add a real server at run time"),
        ("remove", "remove a real server at run time"),
    ):
        a = actions.add_parser(action, help=text, description=f"{action}: {text}.")
        a.add_argument("service", metavar="SERVICE")
        a.add_argument("server", metavar="ADDR:PORT")
        if action == "add":
            a.add_argument("--weight", type=int, default=1, metavar="N")
        _socket_options(a)
        a.set_defaults(func=_ctl)
    release = _command(
        actions,
        "release",
        _ctl,
        "a MASTER hands the VIPs to its peer now",
        "A MASTER hands the VIPs to its peer at once (planned maintenance).",
    )
    _socket_options(release)
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
        _socket_options(c)
        c.set_defaults(func=_config)
    merge = _command(
        steps,
        "merge",
        _config_merge,
        "make two one-director files one pair file",
        "merge: two one-director files ([node]) whose other parts are the same made one "
        "pair file (two [[nodes]]), written to OUT or standard output. No agent is asked. "
        "Exit 0 written, 1 refused (what differs is printed), 2 a file invalid.",
    )
    merge.add_argument("a", type=Path, metavar="A")
    merge.add_argument("b", type=Path, metavar="B")
    merge.add_argument("-o", "--output", type=Path, metavar="OUT")
    passwd = _command(
        sub,
        "passwd",
        _passwd,
        "add or change a monitor user",
        "Add or change a monitor user. The password is read from standard "
        "input (without echo on a terminal). Exit 0 ok, 2 bad input.",
    )
    passwd.add_argument("-f", "--file", type=Path, required=True, metavar="USERS_FILE")
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument("--role", choices=("admin", "viewer"), default="admin")
    cert = _command(
        sub,
        "gen-cert",
        _gen_cert,
        "write a self-signed certificate for a lab monitor",
        "Write a self-signed certificate and its key (mode 0600) for a lab monitor.",
    )
    cert.add_argument("cert", type=Path, metavar="CERT")
    cert.add_argument("key", type=Path, metavar="KEY")
    cert.add_argument("--cn", default="localhost", metavar="NAME")
    return p


def _command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], text: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand that runs `func`."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=text, description=description)
    p.set_defaults(func=func)
    return p


def _node_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--node",
        metavar="NAME",
        help="with a pair file: the [[nodes]] entry (default: the one named like this host)",
    )


def _socket_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", type=Path, metavar="FILE", help="find the control socket from this config"
    )
    _node_option(p)
    p.add_argument("--socket", type=Path, metavar="PATH", help="the control socket itself")


def _load(path: Path, out: Any = None, node: str | None = None, every: bool = False) -> Any:
    """The config at `path` (a list of every director's with `every`), or None after
    printing every problem with it."""
    from hapair.config import ConfigError, load, load_all

    try:
        return load_all(path, node) if every else load(path, node)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=out or sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    if _load(args.config, out=sys.stdout, node=args.node, every=True) is None:
        return BAD_INPUT
    print("ok")
    return OK


def _run(args: argparse.Namespace) -> int:
    if _load(args.config, node=args.node) is None:
        return BAD_INPUT
    from hapair.agent import run

    return run(args.config, args.node)


def _socket(args: argparse.Namespace) -> Path | None:
    """The control socket path, or None after printing why there is none."""
    explicit = args.socket
    if explicit is None and args.config is not None:
        cfg = _load(args.config, node=args.node)
        if cfg is None:
            return None
        explicit = cfg.node.socket_path
    try:
        return control_client.find_socket(explicit)
    except control_client.NoAgent as exc:
        print(f"hapair: {exc}", file=sys.stderr)
        return None


def _ask(
    args: argparse.Namespace,
    message: dict[str, Any],
    no_agent: int,
    refused: str,
    timeout: float | None = None,
) -> Any:
    """The agent's result for `message`. Without one, prints why and ends the command:
    `no_agent` when no agent answers, BAD_INPUT with every error when it finds a config
    invalid, REFUSED when it refuses (`refused` before its reason)."""
    path = _socket(args)
    if path is None:
        raise _Exit(no_agent)
    try:
        if timeout is None:
            reply = control_client.request(path, message)
        else:
            reply = control_client.request(path, message, timeout=timeout)
    except control_client.NoAgent as exc:
        print(f"hapair: {exc}", file=sys.stderr)
        raise _Exit(no_agent) from None
    if not reply.get("ok"):
        raise _Exit(_refusal(reply, refused))
    return reply.get("result")


def _refusal(reply: dict[str, Any], refused: str) -> int:
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


def _status(args: argparse.Namespace) -> int:
    answer = _ask(args, {"cmd": "status"}, NO_AGENT, "")
    status = cast("Status", answer or {})  # the agent's, as it sent it
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return OK


def _ctl(args: argparse.Namespace) -> int:
    message: dict[str, Any] = {"cmd": args.action}
    if args.action != "release":
        message.update(service=args.service, server=args.server)
    if args.action == "add":
        message["weight"] = args.weight
    print(_ask(args, message, REFUSED, "refused: ") or "ok")
    return OK


CONFIG_TIMEOUT = 60.0  # s for an apply: the agent reloads before it answers


def _config(args: argparse.Namespace) -> int:
    if args.step == "check":
        return _config_check(args)
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


def _config_check(args: argparse.Namespace) -> int:
    """NEWFILE checked here as `hapair check` does; then, when an agent answers, by it,
    with what would change in its running config."""
    if _load(args.newfile, out=sys.stdout, every=True) is None:
        return BAD_INPUT
    text = _read_text(args.newfile)
    if text is None:
        return BAD_INPUT
    try:
        path = _socket_quiet(args)
        reply = control_client.request(path, {"cmd": "config_check", "toml": text})
    except control_client.NoAgent:
        print("ok (no agent answers: not compared with a running config)")
        return OK
    if not reply.get("ok"):
        return _refusal(reply, "refused: ")
    for line in (reply.get("result") or {}).get("changes") or ["no change"]:
        print(line)
    print("ok")
    return OK


def _config_merge(args: argparse.Namespace) -> int:
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


def _socket_quiet(args: argparse.Namespace) -> Path:
    explicit = args.socket
    if explicit is None and args.config is not None:
        from hapair.config import ConfigError, load

        try:
            explicit = load(args.config, args.node).node.socket_path
        except ConfigError:
            raise control_client.NoAgent("no config") from None
    return control_client.find_socket(explicit)


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
    result = _ask(args, message, REFUSED, "refused: ", timeout=CONFIG_TIMEOUT)
    return result if isinstance(result, dict) else {}


def _passwd(args: argparse.Namespace) -> int:
    from hapair.monitor.users import UsersError, set_user

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("hapair: the passwords differ", file=sys.stderr)
            return BAD_INPUT
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        set_user(args.file, args.user, password, args.role)
    except (UsersError, OSError) as exc:
        print(f"hapair: {exc}", file=sys.stderr)
        return BAD_INPUT
    return OK


def _gen_cert(args: argparse.Namespace) -> int:
    from hapair.monitor.cert import write_self_signed

    try:
        write_self_signed(args.cert, args.key, args.cn)
    except OSError as exc:
        print(f"hapair: {exc}", file=sys.stderr)
        return BAD_INPUT
    print(f"wrote {args.cert} and {args.key} (0600) for {args.cn}")
    return OK
