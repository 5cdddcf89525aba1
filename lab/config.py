"""The one director-config builder: a director's TOML and its files, for the lab, the
tests and the benches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.topology import (
    CLUSTER_ID,
    GROUP,
    HB_PORT,
    HOSTS,
    IN_GUEST,
    MONITOR_PORT,
    NAT_GATEWAY,
    PAGER_PORT,
    PREFIXLEN,
    REALS,
    SMTP_SINK_PORT,
    TOPOLOGY,
    VIP,
    real_address,
    timing,
)


@dataclass(frozen=True)
class DirectorFiles:
    """The files a director's config names: in the namespace lab's directory, or where an
    installed director keeps them (/etc/hapair, /var/lib/hapair, /run/hapair, under a root
    prefix for tests)."""

    config: Path
    socket: Path
    state_dir: Path
    authkey: Path
    tls_cert: Path
    tls_key: Path
    users: Path
    password: Path  # the monitor login's password, for the operator to read

    @classmethod
    def lab(cls, name: str, lab: Path) -> DirectorFiles:
        """The namespace lab's: all in its directory, one monitor login for both."""
        return cls(
            config=lab / f"{name}.toml",
            socket=lab / f"{name}.sock",
            state_dir=lab / name,
            authkey=lab / "authkey",
            tls_cert=lab / "monitor.crt",
            tls_key=lab / "monitor.key",
            users=lab / "users",
            password=lab / "monitor-password",
        )

    @classmethod
    def installed(cls, name: str, root: Path) -> DirectorFiles:
        """A machine's (`provision`): the contract's default places, under `root`."""
        etc = root / "etc" / "hapair"
        return cls(
            config=etc / "hapair.toml",
            socket=root / "run" / "hapair" / f"{name}.sock",
            state_dir=root / "var" / "lib" / "hapair",
            authkey=etc / "authkey",
            tls_cert=etc / "monitor.crt",
            tls_key=etc / "monitor.key",
            users=etc / "users",
            password=etc / "monitor-password",
        )


def director_config(
    name: str, mode: str, files: DirectorFiles, interfaces: dict[str, str], serial: str | None
) -> str:
    """Director `name`'s config; `interfaces`: {network: its interface there}; `serial`: the
    device of the serial heartbeat cable, or None for UDP heartbeats alone."""
    host, t = HOSTS[name], timing()
    probe_interval, probe_timeout = (5, 4) if IN_GUEST else (2, 1)
    services = ""
    for svc, port, scheduler, probe in TOPOLOGY["services"]:
        services += f"""
[[services]]
name = "{svc}"
protocol = "tcp"
address = "{VIP}"
port = {port}
scheduler = "{scheduler}"
forward = "{mode}"
probe = {{ type = "{probe}", interval = "{probe_interval}s", timeout = "{probe_timeout}s" }}
"""
        for rs in REALS:
            services += f'\n[[services.real_servers]]\naddress = "{real_address(mode, rs)}"\n'
    public, heartbeat = interfaces["public"], interfaces["heartbeat"]
    gateway = ""
    if mode == "nat":
        gateway = f"""
[[vips]]
address = "{NAT_GATEWAY}/{PREFIXLEN}"
interface = "{interfaces["private"]}"
garp_repeat = 3
garp_interval = "50ms"
"""
    cable = ""
    if serial is not None:
        cable = f"""
[[cluster.links]]
type = "serial"
device = "{serial}"
baud = 115200
"""
    sink = HOSTS["ops"]["public"]
    return f"""# written by scripts/lab for the {mode} lab
[node]
name = "{name}"
priority = {host["priority"]}
control_socket = "{files.socket}"
state_dir = "{files.state_dir}"

[cluster]
id = {CLUSTER_ID}
auth_key_file = "{files.authkey}"
interval = "{t["interval"]}s"
deadtime = "{t["deadtime"]}s"
initdead = "{t["initdead"]}s"
preempt = true

[[cluster.links]]
type = "udp"
interface = "{heartbeat}"
group = "{GROUP}"
port = {HB_PORT}
{cable}
[[vips]]
address = "{VIP}/{PREFIXLEN}"
interface = "{public}"
garp_repeat = 3
garp_interval = "50ms"
{gateway}
[sync]
interface = "{heartbeat}"
sync_id = {CLUSTER_ID}
warmup = "{t["warmup"]}s"

[sysctl]
ip_forward = {"true" if mode == "nat" else "false"}
sync_threshold = [3, 10]

[alerts]
min_interval = "0s"
[alerts.email]
smtp = "{sink}:{SMTP_SINK_PORT}"
from = "hapair@{name}.lab"
to = ["oncall@example.org"]
[alerts.pager]
url = "http://{sink}:{PAGER_PORT}/alert"

[monitor]
listen = "{host["management"]}:{MONITOR_PORT}"
tls_cert = "{files.tls_cert}"
tls_key = "{files.tls_key}"
users_file = "{files.users}"
{services}"""
