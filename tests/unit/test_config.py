"""The configuration: every etc/ example is accepted, and each kind of mistake is
reported at the path an operator must fix, all at once."""

from __future__ import annotations

import copy
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
def test_examples_are_valid(path: Path, etc: Path) -> None:
    # The examples read `authkey` beside them; check them against a private copy.
    (etc / path.name).write_bytes(path.read_bytes())
    assert load_all(etc / path.name)  # a pair file: for each of its directors


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


def _keys(dotted: str) -> list[str | int]:
    """The keys of an error path: "services.0.port" -> ["services", 0, "port"]."""
    return [int(k) if k.isdigit() else k for k in dotted.split(".")]


# id: (a path, the value written there, a word of the error reported at that path)
WRONG_VALUES: dict[str, tuple[str, Any, str]] = {
    "unknown top key": ("servics", [], "unknown key"),
    "unknown nested key": ("cluster.dedtime", "1s", "unknown key"),
    "unknown server key": ("services.0.real_servers.0.wieght", 2, "unknown key"),
    "priority too high": ("node.priority", 300, "254"),
    "priority zero": ("node.priority", 0, "1"),
    "priority wrong type": ("node.priority", "high", "integer"),
    "bad node name": ("node.name", "lvs 1", "not a name"),
    "cluster id range": ("cluster.id", 256, "255"),
    "bad duration": ("cluster.interval", "fast", "not a duration"),
    "negative duration": ("cluster.deadtime", -1, "from 0 to"),
    "deadtime <= interval": ("cluster.deadtime", "200ms", "longer than interval"),
    "warntime >= deadtime": ("cluster.warntime", "2s", "between"),
    "initdead < deadtime": ("cluster.initdead", "500ms", "shorter than deadtime"),
    "no links": ("cluster.links", [], "at least one"),
    "group not multicast": ("cluster.links.0.group", "10.0.0.1", "not a multicast"),
    "bad interface name": ("cluster.links.0.interface", "a/b", "interface name"),
    "bad baud": ("cluster.links.1.baud", 12345, "serial speed"),
    "port out of range": ("cluster.links.0.port", 70000, "65535"),
    "vip without prefix syntax": ("vips.0.address", "10.0.0.300/24", "not an address"),
    "vip multicast": ("vips.0.address", "224.0.0.5/32", "cannot be"),
    "duplicate service name": ("services.1.name", "web", "already the name"),
    "unknown protocol": ("services.0.protocol", "http", "tcp"),
    "unknown scheduler": ("services.0.scheduler", "wrlc", "not an IPVS scheduler"),
    "unknown forward": ("services.0.forward", "direct", "dr"),
    "tunnel type without tun": ("services.0.tunnel", "gue", "only with forward = 'tun'"),
    "persistence netmask without persistence": (
        "services.0.persistence_netmask",
        24,
        "persistence > 0",
    ),
    "negative warmup": ("sync.warmup", -1, "from 0 to"),
    "service address not a vip": ("services.0.address", "10.0.0.101", "none of the [[vips]]"),
    "fwmark with address": ("services.1.address", "10.0.0.100", "fwmark service"),
    "mark on tcp service": ("services.0.fwmark", 3, "only a fwmark"),
    "real server port on fwmark": ("services.1.real_servers.0.port", 554, "fwmark"),
    "dr port differs": ("services.0.real_servers.1.port", 8080, "use nat"),
    "real server not an ip": ("services.0.real_servers.0.address", "web1", "not an IP"),
    "weight negative": ("services.0.real_servers.0.weight", -1, "0"),
    "ipv6 server behind ipv4 dr": ("services.0.real_servers.1.address", "2001:db8::1", "tun"),
    "quorum above servers": ("services.0.quorum", 3, "never"),
    "sorry server without port syntax": ("services.0.sorry_server", "10.0.0.9:http", "port"),
    "sorry server is a real server": (
        "services.0.sorry_server",
        "10.0.0.11:80",
        "also a real server",
    ),
    "probe timeout > interval": ("services.0.probe.timeout", "5s", "longer than the interval"),
    "http key on tcp probe": ("services.1.probe.path", "/", "unknown key"),
    "bad status range": ("services.0.probe.expect_status", "299-200", "low to high"),
    "bad body regex": ("services.0.probe.body_regex", "(unclosed", "regular expression"),
    "bad path": ("services.0.probe.path", "health", "'/'"),
    "rise zero": ("services.0.probe.rise", 0, "1"),
}

# id: (a path, a word of the error reported at that path once its key is taken out)
MISSING_KEYS: dict[str, tuple[str, str]] = {
    "node missing": ("node", "required"),
    "neither group nor peer": ("cluster.links.0.group", "exactly one"),
    "sync without interface": ("sync.interface", "required"),
    "tcp without port": ("services.0.port", "required"),
    "tcp without address": ("services.0.address", "required"),
    "fwmark without mark": ("services.1.fwmark", "required"),
    "fwmark tcp probe without port": ("services.1.probe.port", "needs a port"),
}

# id: (mutation, the path of the error, a word of its message)
OTHER_MISTAKES: dict[str, tuple[Mutation, str, str]] = {
    "group and peer": (
        _set("cluster", "links", 0, "peer", value="192.0.2.2"),
        "cluster.links.0.group",
        "exactly one",
    ),
    "unknown link type": (
        _set("cluster", "links", 0, "type", value="tcp"),
        "cluster.links.0",
        "unknown type",
    ),
    "duplicate link": (
        _append("cluster", "links", value={"type": "serial", "device": "/dev/ttyS1"}),
        "cluster.links.2",
        "same link",
    ),
    "duplicate vip": (
        _append("vips", value={"address": "10.0.0.100/24", "interface": "eth2"}),
        "vips.1.address",
        "already",
    ),
    "flag of another scheduler": (
        _set("services", 0, "scheduler_flags", value=["sh-port"]),
        "services.0.scheduler_flags.0",
        "sh scheduler",
    ),
    "gue without port": (
        _both(
            _set("services", 0, "forward", value="tun"), _set("services", 0, "tunnel", value="gue")
        ),
        "services.0.tunnel_port",
        "UDP port",
    ),
    "ipip with a tunnel port": (
        _both(
            _set("services", 0, "forward", value="tun"),
            _set("services", 0, "tunnel_port", value=6080),
        ),
        "services.0.tunnel_port",
        "only a gue tunnel",
    ),
    "IPv4 persistence netmask beyond 32": (
        _both(
            _set("services", 0, "persistence", value=60),
            _set("services", 0, "persistence_netmask", value=64),
        ),
        "services.0.persistence_netmask",
        "0..32",
    ),
    "lower threshold above upper": (
        _both(
            _set("services", 0, "real_servers", 0, "upper_threshold", value=100),
            _set("services", 0, "real_servers", 0, "lower_threshold", value=100),
        ),
        "services.0.real_servers.0.lower_threshold",
        "not below upper_threshold",
    ),
    "sync threshold not below its period": (
        _set("sysctl", value={"sync_threshold": [50, 3]}),
        "sysctl.sync_threshold",
        "below period",
    ),
    "unknown sysctl": (_set("sysctl", value={"ip_forwarding": True}), "sysctl.ip_forwarding", ""),
    "duplicate real server": (
        _set("services", 0, "real_servers", 1, "address", value="10.0.0.11"),
        "services.0.real_servers.1",
        "already real_servers.0",
    ),
    "unknown probe type": (
        _set("services", 0, "probe", "type", value="ftp"),
        "services.0.probe",
        "unknown type",
    ),
    "server probe override error": (
        _set("services", 0, "real_servers", 0, "probe", value={"timeout": "9s"}),
        "services.0.real_servers.0.probe.timeout",
        "longer than the interval",
    ),
    "track tcp without port": (
        _set("track", value=[{"type": "tcp", "target": "10.0.0.254"}]),
        "track.0.target",
        "needs a port",
    ),
    "track icmp not an ip": (
        _set("track", value=[{"type": "icmp", "target": "gateway"}]),
        "track.0.target",
        "not an IP",
    ),
    "email without to": (
        _set("alerts", value={"email": {"smtp": "127.0.0.1:25", "from": "a@b", "to": []}}),
        "alerts.email.to",
        "at least 1",
    ),
    "email smtp without port": (
        _set("alerts", value={"email": {"smtp": "mail", "from": "a@b", "to": ["c@d"]}}),
        "alerts.email.smtp",
        "host:port",
    ),
    "pager url not http": (
        _set("alerts", value={"pager": {"url": "ftp://x/alert"}}),
        "alerts.pager.url",
        "not an http",
    ),
    "monitor without users_file": (
        _set("monitor", value={"listen": "127.0.0.1:8443", "tls_cert": "c", "tls_key": "k"}),
        "monitor.users_file",
        "required",
    ),
}

# (id, mutation, expected error line prefix "path: ", a word of the message)
MISTAKES: list[tuple[str, Mutation, str, str]] = [
    *(
        (name, _set(*_keys(path), value=v), path, word)
        for name, (path, v, word) in WRONG_VALUES.items()
    ),
    *((name, _drop(*_keys(path)), path, word) for name, (path, word) in MISSING_KEYS.items()),
    *((name, *mistake) for name, mistake in OTHER_MISTAKES.items()),
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
