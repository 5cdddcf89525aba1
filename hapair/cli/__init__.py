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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hapair import __version__
from hapair.cli import config as cli_config
from hapair.cli.ask import (
    BAD_INPUT,
    NO_AGENT,
    OK,
    REFUSED,
    Exit,
    ask,
    command,
    load,
    node_option,
    socket_options,
)
from hapair.status_table import format_status

if TYPE_CHECKING:
    from hapair.status import Status


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exit as exc:
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
        on_file = command(sub, name, func, text, description)
        on_file.add_argument("-c", "--config", type=Path, required=True, metavar="FILE")
        node_option(on_file)
        if name == "run":
            on_file.add_argument(
                "--log-format",
                choices=("text", "journal", "json"),
                help="text (time, level, message); journal (syslog priorities, no time: "
                "the default under systemd); json (an object per line, for log shippers)",
            )
    status = command(
        sub,
        "status",
        _status,
        "show the running agent's state",
        "Ask the running agent for its state. Exit 0; 3 when no agent answers.",
    )
    socket_options(status)
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
        socket_options(a)
        a.set_defaults(func=_ctl)
    release = command(
        actions,
        "release",
        _ctl,
        "a MASTER hands the VIPs to its peer now",
        "A MASTER hands the VIPs to its peer at once (planned maintenance).",
    )
    socket_options(release)
    cli_config.add_parser(sub)
    passwd = command(
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
    imp = command(
        sub,
        "import-keepalived",
        _import_keepalived,
        "write a hapair config from keepalived.conf",
        "Read KEEPALIVED_CONF (with its includes; with PEER_KEEPALIVED_CONF, both "
        "directors' files, made one pair file) and write the hapair config to OUT or "
        "standard output. Every statement not carried over is reported on standard error "
        "as FILE:LINE: STATEMENT: why. Exit 0: the output passes `hapair check` once the "
        "key file exists; 1: written, but statements that change behaviour were not "
        "carried over; 2: an input cannot be read or parsed.",
    )
    imp.add_argument("conf", type=Path, metavar="KEEPALIVED_CONF")
    imp.add_argument("peer", type=Path, nargs="?", metavar="PEER_KEEPALIVED_CONF")
    imp.add_argument("-o", "--output", type=Path, metavar="OUT")
    imp.add_argument(
        "--auth-key-file",
        default="/etc/hapair/authkey",
        metavar="PATH",
        help="cluster.auth_key_file (default /etc/hapair/authkey)",
    )
    cert = command(
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


def _check(args: argparse.Namespace) -> int:
    configs = load(args.config, out=sys.stdout, node=args.node, every=True)
    if configs is None:
        return BAD_INPUT
    from hapair.config.risks import host_forwarding, risks

    forwarding = host_forwarding()
    said = {str(p): None for cfg in configs for p in risks(cfg, forwarding)}
    for warning in said:  # valid, but risky: on standard error, and still exit 0
        print(f"warning: {warning}", file=sys.stderr)
    print("ok")
    return OK


def _run(args: argparse.Namespace) -> int:
    if load(args.config, node=args.node) is None:
        return BAD_INPUT
    from hapair.agent import run

    return run(args.config, args.node, args.log_format)


def _status(args: argparse.Namespace) -> int:
    answer = ask(args, {"cmd": "status"}, NO_AGENT, "")
    status = cast("Status", answer or {})  # the agent's, as it sent it
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return OK


def _ctl(args: argparse.Namespace) -> int:
    message: dict[str, Any] = {"cmd": args.action}
    if args.action != "release":
        message.update(service=args.service, server=args.server)
    if args.action == "add":
        message["weight"] = args.weight
    print(ask(args, message, REFUSED, "refused: ") or "ok")
    return OK


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


def _import_keepalived(args: argparse.Namespace) -> int:
    from hapair import host
    from hapair.config.merge import MergeError
    from hapair.keepalived import ParseError, import_files

    paths = [args.conf] + ([args.peer] if args.peer is not None else [])
    try:
        done = import_files(paths, args.auth_key_file)
    except ParseError as exc:
        print(exc, file=sys.stderr)
        return BAD_INPUT
    except MergeError as exc:  # the two directors' files describe different pairs
        for line in exc.lines:
            print(line, file=sys.stderr)
        return REFUSED
    for report in done.reports:
        print(report, file=sys.stderr)
    for problem in done.problems:
        print(f"hapair check would find: {problem}", file=sys.stderr)
    if args.output is None:
        print(done.text, end="")
    else:
        try:
            host.atomic_write(args.output, done.text)
        except OSError as exc:
            print(f"{args.output}: {exc.strerror or exc}", file=sys.stderr)
            return BAD_INPUT
        print(f"wrote {args.output}", file=sys.stderr)
    return done.exit_code


def _gen_cert(args: argparse.Namespace) -> int:
    from hapair.monitor.cert import write_self_signed

    try:
        write_self_signed(args.cert, args.key, args.cn)
    except OSError as exc:
        print(f"hapair: {exc}", file=sys.stderr)
        return BAD_INPUT
    print(f"wrote {args.cert} and {args.key} (0600) for {args.cn}")
    return OK
