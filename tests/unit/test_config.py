"""The configuration: every etc/ example is accepted, and each kind of mistake is
reported at the path an operator must fix, all at once."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hapair.config import ConfigError, load, load_all, parse, validate
from hapair.config.types import parse_duration

pytestmark = pytest.mark.unit

ETC = Path(__file__).resolve().parents[2] / "etc"


@pytest.fixture
def base(key_file: Path) -> dict[str, Any]:
    return {
        "node": {"name": "lvs1", "priority": 150},
        "cluster": {
            "id": 51,
            "auth_key_file": str(key_file),
            "interval": "200ms",
            "deadtime": "1s",
            "links": [
                {"type": "udp", "interface": "eth1", "group": "239.0.0.18"},
                {"type": "serial", "device": "/dev/ttyS1", "baud": 19200},
            ],
        },
        "vips": [{"address": "10.0.0.100/24", "interface": "eth0"}],
        "sync": {"interface": "eth1"},
        "services": [
            {
                "name": "web",
                "protocol": "tcp",
                "address": "10.0.0.100",
                "port": 80,
                "probe": {"type": "http", "path": "/health"},
                "real_servers": [
                    {"address": "10.0.0.11", "port": 80},
                    {"address": "10.0.0.12"},
                ],
            },
            {
                "name": "media",
                "protocol": "fwmark",
                "fwmark": 1,
                "persistence": 300,
                "probe": {"type": "tcp", "port": 554},
                "real_servers": [{"address": "10.0.0.21"}],
            },
        ],
    }


def errors_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return [str(p) for p in info.value.problems]


def test_base_is_valid(base: dict[str, Any]) -> None:
    cfg = validate(base)
    assert cfg.cluster.interval == 0.2
    assert cfg.services[0].real_servers[1].port is None
    assert cfg.node.socket_path == Path("/run/hapair/lvs1.sock")


@pytest.mark.parametrize("path", sorted(ETC.glob("*.toml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path, tmp_path: Path) -> None:
    # The examples read `authkey` beside them; check them against a private copy.
    (tmp_path / "authkey").write_bytes(os.urandom(32))
    (tmp_path / "authkey").chmod(0o600)
    (tmp_path / path.name).write_bytes(path.read_bytes())
    assert load_all(tmp_path / path.name)  # a pair file: for each of its directors


def test_example_names() -> None:
    names = {p.name for p in ETC.glob("*.toml")}
    assert names >= {
        "web-dr.toml",
        "media-fwmark.toml",
        "cache-tun.toml",
        "mail-nat.toml",
        "vip-only.toml",
    }


Mutation = Callable[[dict[str, Any]], None]


def _set(*path: Any, value: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        for m in mutations:
            m(raw)

    return mutate


def _drop(*path: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _append(*path: Any, value: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        node = raw
        for key in path:
            node = node[key]
        node.append(copy.deepcopy(value))

    return mutate


# (id, mutation, expected error line prefix "path: ", a word of the message)
MISTAKES: list[tuple[str, Mutation, str, str]] = [
    ("unknown top key", _set("servics", value=[]), "servics", "unknown key"),
    (
        "unknown nested key",
        _set("cluster", "dedtime", value="1s"),
        "cluster.dedtime",
        "unknown key",
    ),
    (
        "unknown server key",
        _set("services", 0, "real_servers", 0, "wieght", value=2),
        "services.0.real_servers.0.wieght",
        "unknown key",
    ),
    ("node missing", _drop("node"), "node", "required"),
    ("priority too high", _set("node", "priority", value=300), "node.priority", "254"),
    ("priority zero", _set("node", "priority", value=0), "node.priority", "1"),
    ("priority wrong type", _set("node", "priority", value="high"), "node.priority", "integer"),
    ("bad node name", _set("node", "name", value="lvs 1"), "node.name", "not a name"),
    ("cluster id range", _set("cluster", "id", value=256), "cluster.id", "255"),
    (
        "bad duration",
        _set("cluster", "interval", value="fast"),
        "cluster.interval",
        "not a duration",
    ),
    ("negative duration", _set("cluster", "deadtime", value=-1), "cluster.deadtime", "from 0 to"),
    (
        "deadtime <= interval",
        _set("cluster", "deadtime", value="200ms"),
        "cluster.deadtime",
        "longer than interval",
    ),
    (
        "warntime >= deadtime",
        _set("cluster", "warntime", value="2s"),
        "cluster.warntime",
        "between",
    ),
    (
        "initdead < deadtime",
        _set("cluster", "initdead", value="500ms"),
        "cluster.initdead",
        "shorter than deadtime",
    ),
    ("no links", _set("cluster", "links", value=[]), "cluster.links", "at least one"),
    (
        "group not multicast",
        _set("cluster", "links", 0, "group", value="10.0.0.1"),
        "cluster.links.0.group",
        "not a multicast",
    ),
    (
        "group and peer",
        _set("cluster", "links", 0, "peer", value="192.0.2.2"),
        "cluster.links.0.group",
        "exactly one",
    ),
    (
        "neither group nor peer",
        _drop("cluster", "links", 0, "group"),
        "cluster.links.0.group",
        "exactly one",
    ),
    (
        "unknown link type",
        _set("cluster", "links", 0, "type", value="tcp"),
        "cluster.links.0",
        "unknown type",
    ),
    (
        "bad interface name",
        _set("cluster", "links", 0, "interface", value="a/b"),
        "cluster.links.0.interface",
        "interface name",
    ),
    (
        "bad baud",
        _set("cluster", "links", 1, "baud", value=12345),
        "cluster.links.1.baud",
        "serial speed",
    ),
    (
        "duplicate link",
        _append("cluster", "links", value={"type": "serial", "device": "/dev/ttyS1"}),
        "cluster.links.2",
        "same link",
    ),
    (
        "port out of range",
        _set("cluster", "links", 0, "port", value=70000),
        "cluster.links.0.port",
        "65535",
    ),
    (
        "vip without prefix syntax",
        _set("vips", 0, "address", value="10.0.0.300/24"),
        "vips.0.address",
        "not an address",
    ),
    (
        "vip multicast",
        _set("vips", 0, "address", value="224.0.0.5/32"),
        "vips.0.address",
        "cannot be",
    ),
    (
        "duplicate vip",
        _append("vips", value={"address": "10.0.0.100/24", "interface": "eth2"}),
        "vips.1.address",
        "already",
    ),
    ("sync without interface", _drop("sync", "interface"), "sync.interface", "required"),
    (
        "duplicate service name",
        _set("services", 1, "name", value="web"),
        "services.1.name",
        "already the name",
    ),
    (
        "unknown protocol",
        _set("services", 0, "protocol", value="http"),
        "services.0.protocol",
        "tcp",
    ),
    (
        "unknown scheduler",
        _set("services", 0, "scheduler", value="wrlc"),
        "services.0.scheduler",
        "not an IPVS scheduler",
    ),
    (
        "flag of another scheduler",
        _set("services", 0, "scheduler_flags", value=["sh-port"]),
        "services.0.scheduler_flags.0",
        "sh scheduler",
    ),
    ("unknown forward", _set("services", 0, "forward", value="direct"), "services.0.forward", "dr"),
    (
        "tunnel type without tun",
        _set("services", 0, "tunnel", value="gue"),
        "services.0.tunnel",
        "only with forward = 'tun'",
    ),
    (
        "gue without port",
        _both(
            _set("services", 0, "forward", value="tun"), _set("services", 0, "tunnel", value="gue")
        ),
        "services.0.tunnel_port",
        "UDP port",
    ),
    (
        "ipip with a tunnel port",
        _both(
            _set("services", 0, "forward", value="tun"),
            _set("services", 0, "tunnel_port", value=6080),
        ),
        "services.0.tunnel_port",
        "only a gue tunnel",
    ),
    (
        "persistence netmask without persistence",
        _set("services", 0, "persistence_netmask", value=24),
        "services.0.persistence_netmask",
        "persistence > 0",
    ),
    (
        "IPv4 persistence netmask beyond 32",
        _both(
            _set("services", 0, "persistence", value=60),
            _set("services", 0, "persistence_netmask", value=64),
        ),
        "services.0.persistence_netmask",
        "0..32",
    ),
    (
        "lower threshold above upper",
        _both(
            _set("services", 0, "real_servers", 0, "upper_threshold", value=100),
            _set("services", 0, "real_servers", 0, "lower_threshold", value=100),
        ),
        "services.0.real_servers.0.lower_threshold",
        "not below upper_threshold",
    ),
    (
        "sync threshold not below its period",
        _set("sysctl", value={"sync_threshold": [50, 3]}),
        "sysctl.sync_threshold",
        "below period",
    ),
    ("unknown sysctl", _set("sysctl", value={"ip_forwarding": True}), "sysctl.ip_forwarding", ""),
    ("negative warmup", _set("sync", "warmup", value=-1), "sync.warmup", "from 0 to"),
    ("tcp without port", _drop("services", 0, "port"), "services.0.port", "required"),
    ("tcp without address", _drop("services", 0, "address"), "services.0.address", "required"),
    (
        "service address not a vip",
        _set("services", 0, "address", value="10.0.0.101"),
        "services.0.address",
        "none of the [[vips]]",
    ),
    (
        "fwmark with address",
        _set("services", 1, "address", value="10.0.0.100"),
        "services.1.address",
        "fwmark service",
    ),
    ("fwmark without mark", _drop("services", 1, "fwmark"), "services.1.fwmark", "required"),
    (
        "mark on tcp service",
        _set("services", 0, "fwmark", value=3),
        "services.0.fwmark",
        "only a fwmark",
    ),
    (
        "real server port on fwmark",
        _set("services", 1, "real_servers", 0, "port", value=554),
        "services.1.real_servers.0.port",
        "fwmark",
    ),
    (
        "fwmark tcp probe without port",
        _drop("services", 1, "probe", "port"),
        "services.1.probe.port",
        "needs a port",
    ),
    (
        "dr port differs",
        _set("services", 0, "real_servers", 1, "port", value=8080),
        "services.0.real_servers.1.port",
        "use nat",
    ),
    (
        "duplicate real server",
        _set("services", 0, "real_servers", 1, "address", value="10.0.0.11"),
        "services.0.real_servers.1",
        "already real_servers.0",
    ),
    (
        "real server not an ip",
        _set("services", 0, "real_servers", 0, "address", value="web1"),
        "services.0.real_servers.0.address",
        "not an IP",
    ),
    (
        "weight negative",
        _set("services", 0, "real_servers", 0, "weight", value=-1),
        "services.0.real_servers.0.weight",
        "0",
    ),
    (
        "ipv6 server behind ipv4 dr",
        _set("services", 0, "real_servers", 1, "address", value="2001:db8::1"),
        "services.0.real_servers.1.address",
        "tun",
    ),
    ("quorum above servers", _set("services", 0, "quorum", value=3), "services.0.quorum", "never"),
    (
        "sorry server without port syntax",
        _set("services", 0, "sorry_server", value="10.0.0.9:http"),
        "services.0.sorry_server",
        "port",
    ),
    (
        "sorry server is a real server",
        _set("services", 0, "sorry_server", value="10.0.0.11:80"),
        "services.0.sorry_server",
        "also a real server",
    ),
    (
        "probe timeout > interval",
        _set("services", 0, "probe", "timeout", value="5s"),
        "services.0.probe.timeout",
        "longer than the interval",
    ),
    (
        "unknown probe type",
        _set("services", 0, "probe", "type", value="ftp"),
        "services.0.probe",
        "unknown type",
    ),
    (
        "http key on tcp probe",
        _set("services", 1, "probe", "path", value="/"),
        "services.1.probe.path",
        "unknown key",
    ),
    (
        "bad status range",
        _set("services", 0, "probe", "expect_status", value="299-200"),
        "services.0.probe.expect_status",
        "low to high",
    ),
    (
        "bad body regex",
        _set("services", 0, "probe", "body_regex", value="(unclosed"),
        "services.0.probe.body_regex",
        "regular expression",
    ),
    (
        "bad path",
        _set("services", 0, "probe", "path", value="health"),
        "services.0.probe.path",
        "'/'",
    ),
    ("rise zero", _set("services", 0, "probe", "rise", value=0), "services.0.probe.rise", "1"),
    (
        "server probe override error",
        _set("services", 0, "real_servers", 0, "probe", value={"timeout": "9s"}),
        "services.0.real_servers.0.probe.timeout",
        "longer than the interval",
    ),
    (
        "track tcp without port",
        _set("track", value=[{"type": "tcp", "target": "10.0.0.254"}]),
        "track.0.target",
        "needs a port",
    ),
    (
        "track icmp not an ip",
        _set("track", value=[{"type": "icmp", "target": "gateway"}]),
        "track.0.target",
        "not an IP",
    ),
    (
        "email without to",
        _set("alerts", value={"email": {"smtp": "127.0.0.1:25", "from": "a@b", "to": []}}),
        "alerts.email.to",
        "at least 1",
    ),
    (
        "email smtp without port",
        _set("alerts", value={"email": {"smtp": "mail", "from": "a@b", "to": ["c@d"]}}),
        "alerts.email.smtp",
        "host:port",
    ),
    (
        "pager url not http",
        _set("alerts", value={"pager": {"url": "ftp://x/alert"}}),
        "alerts.pager.url",
        "not an http",
    ),
    (
        "monitor without users_file",
        _set("monitor", value={"listen": "127.0.0.1:8443", "tls_cert": "c", "tls_key": "k"}),
        "monitor.users_file",
        "required",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "word"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_mistake_is_reported_at_its_path(
    base: dict[str, Any], mutate: Mutation, path: str, word: str
) -> None:
    raw = copy.deepcopy(base)
    mutate(raw)
    errors = errors_of(raw)
    matching = [e for e in errors if e.startswith(f"{path}: ")]
    assert matching, f"no error at {path}; got {errors}"
    assert any(word in e for e in matching), f"{word!r} not in {matching}"


def test_at_least_25_distinct_mistakes() -> None:
    assert len({m[2] for m in MISTAKES}) >= 25


def test_every_rule_error_reported_at_once(base: dict[str, Any]) -> None:
    base["cluster"]["deadtime"] = "100ms"
    base["services"][0]["scheduler_flags"] = ["mh-port"]
    base["services"][0]["real_servers"][1]["port"] = 81
    base["services"][1]["address"] = "10.0.0.100"
    paths = {e.split(":")[0] for e in errors_of(base)}
    assert paths == {
        "cluster.deadtime",
        "services.0.scheduler_flags.0",
        "services.0.real_servers.1.port",
        "services.1.address",
    }


def test_every_schema_error_reported_at_once(base: dict[str, Any]) -> None:
    base["node"]["priority"] = 999
    base["cluster"]["id"] = 0
    base["vips"][0]["garp_repeat"] = "five"
    paths = {e.split(":")[0] for e in errors_of(base)}
    assert paths == {"node.priority", "cluster.id", "vips.0.garp_repeat"}


def test_world_readable_key(base: dict[str, Any], key_file: Path) -> None:
    key_file.chmod(0o644)
    assert errors_of(base) == [
        f"cluster.auth_key_file: {key_file} is world-readable; chmod 600 {key_file}"
    ]


def test_missing_key(base: dict[str, Any], tmp_path: Path) -> None:
    base["cluster"]["auth_key_file"] = str(tmp_path / "nope")
    assert errors_of(base) == [
        f"cluster.auth_key_file: {tmp_path / 'nope'}: No such file or directory"
    ]


def test_short_key(base: dict[str, Any], key_file: Path) -> None:
    key_file.write_bytes(b"secret")
    [error] = errors_of(base)
    assert error.startswith("cluster.auth_key_file:") and "fewer than 16 bytes" in error


def test_key_path_relative_to_config(tmp_path: Path, key_file: Path, base: dict[str, Any]) -> None:
    base["cluster"]["auth_key_file"] = "authkey"
    assert validate(base, base_dir=tmp_path).cluster.auth_key_file == key_file
    base["node"]["state_dir"] = "state"
    base["alerts"] = {
        "email": {"smtp": "127.0.0.1:25", "from": "a@example.org", "to": ["b@example.org"]}
    }
    base["alerts"]["email"]["password_file"] = "smtp.pass"
    cfg = validate(base, base_dir=tmp_path)
    assert cfg.node.state_dir == tmp_path / "state"
    assert cfg.alerts is not None and cfg.alerts.email is not None
    assert cfg.alerts.email.password_file == tmp_path / "smtp.pass"


def test_toml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse('[node]\nname = "lvs1"\npriority = \n')
    [problem] = info.value.problems
    assert problem.path == "toml" and "line 3" in problem.message


def test_not_utf8() -> None:
    with pytest.raises(ConfigError) as info:
        parse(b"[node]\nname = '\xff'\n")
    assert "UTF-8" in str(info.value)


def test_huge_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load(path)


def test_server_probe_override_merges(base: dict[str, Any]) -> None:
    base["services"][0]["probe"]["interval"] = "5s"
    servers = base["services"][0]["real_servers"]
    servers[0]["probe"] = {"path": "/other"}
    servers[1]["probe"] = {"type": "tcp", "port": 8081}
    svc = validate(base).services[0]
    same, other = svc.real_servers[0].probe, svc.real_servers[1].probe
    assert same is not None and same.type == "http" and same.path == "/other"  # type: ignore[union-attr]
    assert same.interval == 5.0
    assert (
        other is not None and other.type == "tcp" and other.port == 8081 and other.interval == 5.0
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (2, 2.0),
        (0.5, 0.5),
        ("150ms", 0.15),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("0", 0.0),
        (" 1.5 s ", 1.5),
    ],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "ms", "1d", "-1s", "1e3", True, None, [1], "nan", float("inf")]
)
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_every_missing_required_key_is_named(base: dict[str, Any]) -> None:
    """`vips.0: required` once hid which key was missing (a field named like a tagged
    union's tag lost its name); each required key is named in its path."""
    base["track"] = [
        {"type": "icmp", "target": "10.0.0.254"},
        {"type": "interface", "interface": "eth0"},
    ]
    base["alerts"] = {
        "email": {"smtp": "127.0.0.1:25", "from": "a@example.org", "to": ["b@example.org"]},
        "pager": {"url": "http://127.0.0.1:9000/"},
    }
    base["monitor"] = {
        "listen": "127.0.0.1:8443",
        "tls_cert": "c",
        "tls_key": "k",
        "users_file": "u",
    }
    validate(base)
    required = [
        ("node", "name"),
        ("node", "priority"),
        ("cluster", "id"),
        ("cluster", "auth_key_file"),
        ("cluster", "links", 0, "interface"),
        ("cluster", "links", 1, "device"),
        ("track", 0, "target"),
        ("track", 1, "interface"),
        ("vips", 0, "address"),
        ("vips", 0, "interface"),
        ("services", 0, "name"),
        ("services", 0, "protocol"),
        ("services", 0, "real_servers", 0, "address"),
        ("alerts", "email", "smtp"),
        ("alerts", "email", "from"),
        ("alerts", "email", "to"),
        ("alerts", "pager", "url"),
        ("monitor", "listen"),
        ("monitor", "tls_cert"),
        ("monitor", "tls_key"),
        ("monitor", "users_file"),
    ]
    for path in required:
        raw = copy.deepcopy(base)
        _drop(*path)(raw)
        dotted = ".".join(map(str, path))
        assert f"{dotted}: required" in errors_of(raw), (dotted, errors_of(raw))
