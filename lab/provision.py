"""One machine of the lab (a Vagrant VM): `scripts/lab provision HOST` runs the namespace
lab's steps for that host, installed as systemd units."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shlex
import sys
from pathlib import Path

from lab.config import DirectorFiles, director_config, pair_config
from lab.roles import real_server_network
from lab.shell import LabError, say, sh
from lab.topology import (
    DIRECTORS,
    HOSTS,
    MONITOR_USER,
    NAT_GATEWAY,
    PAGER_PORT,
    PYTHON,
    SMTP_SINK_PORT,
    VIP,
    host_networks,
)

SYSTEMD = Path("/run/systemd/system")  # there when systemd runs this machine
DIRECTOR_UNIT = "hapair.service"
SERVICE_UNITS = {"real": "hapair-lab-real.service", "ops": "hapair-lab-ops.service"}


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """`path` holds `data` with `mode`, never readable by others in between."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)  # left by a crash, perhaps with another mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.chmod(mode)  # whatever the umask
    tmp.replace(path)


def install_file(path: Path, data: str | bytes, mode: int) -> bool:
    """Write `data` to `path` with `mode` unless it holds exactly that; True if it wrote."""
    raw = data.encode() if isinstance(data, str) else data
    with contextlib.suppress(OSError):
        if path.read_bytes() == raw and path.stat().st_mode & 0o7777 == mode:
            return False
    write_private(path, raw, mode)
    return True


def monitor_login(files: DirectorFiles, cn: str) -> tuple[str, bool]:
    """The monitor's certificate and login (MONITOR_USER, a random password kept in
    `files.password`) by `hapair gen-cert` and `hapair passwd`, their code run in this
    process (a process costs seconds in the guest). Kept when all are there already:
    returns (the password, whether it made them)."""
    if all(f.exists() for f in (files.tls_cert, files.tls_key, files.users, files.password)):
        return files.password.read_text().strip(), False
    from hapair.cli import main as hapair

    password = secrets.token_urlsafe(12)
    write_private(files.password, (password + "\n").encode())
    stdin = sys.stdin
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = hapair(["gen-cert", str(files.tls_cert), str(files.tls_key), "--cn", cn])
            sys.stdin = io.StringIO(password + "\n")
            rc = rc or hapair(["passwd", "-f", str(files.users), MONITOR_USER])
    finally:
        sys.stdin = stdin
    if rc != 0:
        raise LabError("hapair gen-cert / hapair passwd failed")
    return password, True


def interfaces_by_address(host: str, wanted: dict[str, str]) -> dict[str, str]:
    """{network: the interface here holding `host`'s address on it}: a VM's interface
    names are its own (Vagrant's private networks are eth1, eth2, ... or enp0s8, ...)."""
    links = json.loads(sh("ip", "-j", "-4", "addr", "show").stdout or "[]")
    holder = {
        a["local"]: str(link["ifname"])
        for link in links
        for a in link.get("addr_info", [])
        if "local" in a
    }
    missing = [
        f"{address} ({network})" for network, address in wanted.items() if address not in holder
    ]
    if missing:
        raise LabError(
            f"{host}: no interface here holds {', '.join(missing)}: is this machine on those"
            " networks of the topology, with those addresses (scripts/lab topology)?"
        )
    return {network: holder[address] for network, address in wanted.items()}


def systemd_unit(description: str, start: list[str], pre: list[str], *extra: str) -> str:
    lines = [
        "# written by scripts/lab provision",
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        *(f"ExecStartPre={cmd}" for cmd in pre),
        f"ExecStart={shlex.join(start)}",
        *extra,
        "Restart=on-failure",
        "RestartSec=2s",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def provision_director(
    name: str,
    mode: str,
    root: Path,
    interfaces: dict[str, str],
    serial: str | None,
    authkey: Path | None,
) -> list[str]:
    """Director `name`'s key, monitor login, config (checked by `hapair check` before it
    replaces the old one) and systemd unit, under `root`; what it changed."""
    files = DirectorFiles.installed(name, root)
    changed = []
    if authkey is not None:
        if install_file(files.authkey, authkey.read_bytes(), 0o600):
            changed.append(f"{files.authkey}: the pair's key, from {authkey}")
    elif not files.authkey.exists():
        raise LabError(
            f"{name}: no {files.authkey}: give the pair's shared key with --authkey FILE"
            " (the same file to both directors)"
        )
    if monitor_login(files, name)[1]:
        changed.append(
            f"{files.tls_cert}, {files.users}: the monitor's certificate and login"
            f" ({MONITOR_USER}, the password in {files.password})"
        )
    # One pair file, the same on both directors when they found the same interface names.
    both = {d: DirectorFiles.installed(d, root) for d in DIRECTORS}
    configs = {d: director_config(d, mode, f, interfaces, serial) for d, f in both.items()}
    text = pair_config(configs, f"written by scripts/lab provision for the {mode} lab")
    candidate = files.config.with_name(f".{files.config.name}.check")
    write_private(candidate, text.encode(), 0o644)
    check = sh(PYTHON, "-m", "hapair", "check", "-c", str(candidate), check=False)
    candidate.unlink()
    if check.returncode != 0:
        raise LabError(f"{name}: hapair check refused the config:\n{check.stdout}{check.stderr}")
    if install_file(files.config, text, 0o644):
        changed.append(f"{files.config} (hapair check: ok)")
    unit = systemd_unit(
        f"hapair: the HA agent of LVS director {name}",
        [PYTHON, "-m", "hapair", "run", "-c", str(files.config), "--node", name],
        ["-/sbin/modprobe -q ip_vs"],
        "Environment=HAPAIR_LOG=INFO",
        "ExecReload=/bin/kill -HUP $MAINPID",
    )
    path = root / "etc" / "systemd" / "system" / DIRECTOR_UNIT
    if install_file(path, unit, 0o644):
        changed.append(str(path))
    command, link = Path(PYTHON).parent / "hapair", root / "usr" / "local" / "bin" / "hapair"
    if command.exists() and not link.exists() and not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(command)
        changed.append(f"{link} -> {command}")
    return changed


def provision_services(host: str, mode: str, root: Path) -> list[str]:
    """A real server's services (and, before them at every start, its network settings),
    or the ops host's alert sinks, as a systemd unit under `root`; what it changed."""
    role = HOSTS[host]["role"]
    serve = [PYTHON, "-m", "lab", "_serve-host", host]
    if role == "real":
        what = f"real server {host}: HTTP on 80, SMTP on 25, a line echo on 7"
        pre = [shlex.join([PYTHON, "-m", "lab", "provision", host, "--mode", mode, "--net-only"])]
    else:
        alerts = root / "var" / "lib" / "hapair-lab" / "alerts.jsonl"
        alerts.parent.mkdir(parents=True, exist_ok=True)
        what = f"the alert sinks (SMTP {SMTP_SINK_PORT}, pager {PAGER_PORT}) into {alerts}"
        serve += ["--alerts", str(alerts)]
        pre = []
    unit = systemd_unit(f"hapair lab: {what}", serve, pre)
    path = root / "etc" / "systemd" / "system" / SERVICE_UNITS[role]
    return [str(path)] if install_file(path, unit, 0o644) else []


def systemd_up(unit: str, restart: bool) -> None:
    sh("systemctl", "daemon-reload")
    sh("systemctl", "enable", "--quiet", unit)
    sh("systemctl", "restart" if restart else "start", unit)
    state = sh("systemctl", "is-active", unit, check=False).stdout.strip()
    say(f"  {unit}: {'(re)started' if restart else 'started'}, {state}")


def provision(
    host: str,
    mode: str,
    root: Path = Path("/"),
    *,
    start: bool = True,
    serial: str | None = None,
    authkey: Path | None = None,
    net_only: bool = False,
) -> list[str]:
    """Make this machine lab host `host` in `mode`: its interfaces found by address, then
    the namespace lab's own steps for its role (director_config, real_server_network,
    serve_real, serve_ops), installed as systemd units and started (not with `start`
    False). Idempotent; returns what it changed (files written)."""
    role = HOSTS[host]["role"]
    if start and root != Path("/"):
        raise LabError("--root needs --no-start (systemd reads /etc/systemd/system)")
    if start and not net_only and role != "client" and not SYSTEMD.exists():
        raise LabError("systemd does not run this machine: provision with --no-start")
    if serial is not None and role != "director":
        raise LabError(f"{host}: --serial is for the directors")
    interfaces = interfaces_by_address(host, host_networks(host, mode))
    found = ", ".join(f"{n} {HOSTS[host][n]} on {i}" for n, i in interfaces.items())
    say(f"provision {host} ({role}, {mode}): {found}")
    if role == "real":
        real_server_network(host, mode, None)
        say(
            f"  network: default route via {NAT_GATEWAY}"
            if mode == "nat"
            else f"  network: VIP {VIP}/32 on {'lo' if mode == 'dr' else 'tunl0'},"
            " arp_ignore=1, arp_announce=2"
        )
    if net_only:
        return []
    changed: list[str] = []
    unit = None
    if role == "director":
        changed = provision_director(host, mode, root, interfaces, serial, authkey)
        unit = DIRECTOR_UNIT
    elif role in SERVICE_UNITS:
        changed = provision_services(host, mode, root)
        unit = SERVICE_UNITS[role]
    else:
        say(f"  nothing to install: try curl http://{VIP}/ once the directors are up")
    for line in changed:
        say(f"  wrote {line}")
    if unit is not None and not changed:
        say("  nothing changed")
    if unit is not None and start:
        systemd_up(unit, restart=bool(changed))
    return changed
