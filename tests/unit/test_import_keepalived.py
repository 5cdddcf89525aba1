"""`hapair import-keepalived`: keepalived.conf files (tests/keepalived/, written from
keepalived.conf(5)) made hapair configs, as an operator sees them: the TOML, what
`hapair check` says of it, the reports on standard error, the exit code."""

from __future__ import annotations

import os
import shutil
import time
import tomllib
from pathlib import Path

import pytest
from hapair_cli import hapair
from hypothesis import given, settings
from hypothesis import strategies as st

from hapair.keepalived import import_files
from hapair.keepalived.parse import ParseError, parse_file, parse_text

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[1] / "keepalived"


@pytest.fixture
def confs(tmp_path: Path) -> Path:
    """The samples in a folder of their own, with a key file beside them."""
    folder = tmp_path / "keepalived"
    shutil.copytree(SAMPLES, folder)
    key = tmp_path / "authkey"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    return folder


def _import(*args: str, key: Path | None = None) -> tuple[int, str, list[str]]:
    extra = ["--auth-key-file", str(key)] if key is not None else []
    done = hapair("import-keepalived", *args, *extra)
    return done.returncode, done.stdout, done.stderr.splitlines()


def _checked(text: str, tmp_path: Path) -> str:
    out = tmp_path / "out.toml"
    out.write_text(text)
    done = hapair("check", "-c", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_one_director_passes_check(confs: Path, tmp_path: Path) -> None:
    key = tmp_path / "authkey"
    code, out, err = _import(str(confs / "lvs1.conf"), key=key)
    assert code == 0, err
    assert _checked(out, tmp_path) == "ok\n"
    doc = tomllib.loads(out)
    assert doc["node"] == {"name": "lvs1", "priority": 150}
    cluster = doc["cluster"]
    assert (cluster["id"], cluster["interval"], cluster["preempt_delay"]) == (51, "1s", "5s")
    assert cluster["deadtime"] == "3414ms"  # 3 x advert_int + (256 - 150) / 256 s, as VRRP
    assert cluster["auth_key_file"] == str(key)
    assert cluster["links"] == [
        {"type": "udp", "interface": "eth0", "group": "239.0.0.18", "port": 694}
    ]
    assert doc["vips"] == [  # $VIP and $IFACE substituted, `dev` the interface
        {"address": "10.0.0.100/24", "interface": "eth0"},
        {"address": "10.0.1.100/24", "interface": "eth2"},
    ]
    assert doc["track"] == [
        {"type": "interface", "interface": "eth1"},
        {
            "type": "script",
            "command": "/usr/bin/ping -c1 -W1 10.0.0.254",
            "fall": 3,
            "rise": 2,
            "interval": "2s",
            "timeout": "1s",
        },
    ]
    assert doc["sync"] == {"enabled": True, "interface": "eth1", "sync_id": 51}
    assert doc["alerts"]["email"] == {
        "smtp": "127.0.0.1:25",
        "from": "keepalived@example.org",
        "to": ["oncall@example.org", "ops@example.org"],
    }
    assert doc["alerts"]["scripts"] == {
        "on_fault": "/etc/keepalived/notify.sh fault",
        "on_master": "/etc/keepalived/notify.sh master",
        "on_backup": "/etc/keepalived/notify.sh backup",
    }


def test_services_from_an_included_glob(confs: Path, tmp_path: Path) -> None:
    _, out, _ = _import(str(confs / "lvs1.conf"), key=tmp_path / "authkey")
    web, tls = tomllib.loads(out)["services"]
    assert web | {"real_servers": None, "probe": None} == {
        "name": "10.0.0.100-80",
        "protocol": "tcp",
        "address": "10.0.0.100",
        "port": 80,
        "scheduler": "wrr",
        "forward": "dr",
        "persistence": "300s",
        "sorry_server": "10.0.0.9:80",
        "quorum": 1,
        "on_failure": "inhibit",
        "real_servers": None,
        "probe": None,
    }
    assert web["probe"] == {  # the same HTTP_GET on both servers: the service's probe
        "type": "http",
        "interval": "6s",
        "rise": 1,
        "path": "/health",
        "expect_status": 200,
        "timeout": "3s",
        "fall": 3,
    }
    assert [s["weight"] for s in web["real_servers"]] == [2, 1]
    assert (tls["scheduler"], tls["forward"]) == ("rr", "nat")
    assert tls["probe"]["type"] == "https" and tls["probe"]["port"] == 8443
    assert tls["real_servers"] == [{"address": "10.0.0.11", "port": 8443}]


def test_reports_on_standard_error(
    confs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(confs)
    code, out, err = _import("lvs1.conf", key=tmp_path / "authkey")
    assert code == 0  # nothing that changes behaviour was left behind
    assert err == [
        "lvs1.conf:13: smtp_connect_timeout 30: hapair's mail has its own timeout",
        "lvs1.conf:15: vrrp_skip_check_adv_addr: hapair sends no VRRP advertisements",
        "lvs1.conf:35: state MASTER: hapair has no initial state: the director with the "
        "higher priority is MASTER",
        "lvs1.conf:41: authentication: hapair authenticates every heartbeat with "
        "cluster.auth_key_file",
        "lvs1.conf:47: 10.0.1.100/24 dev eth2 label eth2:vip: label eth2:vip: hapair adds "
        "the address without it",
        "conf.d/web.conf:21: delay_before_retry 2: hapair probes again at the probe interval",
        "conf.d/web.conf:34: delay_before_retry 2: hapair probes again at the probe interval",
    ]
    assert "s3cret" not in "\n".join(err) + out  # the VRRP password is not repeated


def test_comments_where_to_look(confs: Path, tmp_path: Path) -> None:
    key = tmp_path / "authkey"
    _, out, _ = _import(str(confs / "lvs1.conf"), key=key)
    lines = out.splitlines()
    at = lines.index(f'auth_key_file = "{key}"')
    assert lines[at - 1] == (
        f"# LOOK: create the key on both directors: head -c 32 /dev/urandom > {key}; "
        f"chmod 600 {key}"
    )
    assert lines[lines.index("[[cluster.links]]") - 1].startswith(
        "# LOOK: hapair's heartbeats are UDP port 694"
    )
    assert lines[1].startswith("# 7 keepalived statements were not carried over")


def test_pair_file_from_both_directors(confs: Path, tmp_path: Path) -> None:
    out = tmp_path / "pair.toml"
    code, stdout, err = _import(
        str(confs / "lvs1.conf"), str(confs / "lvs2.conf"), "-o", str(out),
        key=tmp_path / "authkey",
    )  # fmt: skip
    assert (code, stdout) == (0, "")
    assert err[-1] == f"wrote {out}"
    assert len([e for e in err if "conf.d/web.conf:21" in e]) == 1  # shared: said once
    doc = tomllib.loads(out.read_text())
    assert doc["nodes"] == [{"name": "lvs1", "priority": 150}, {"name": "lvs2", "priority": 100}]
    assert doc["cluster"]["deadtime"] == "3609ms"  # the longer: the BACKUP's skew
    assert "node" not in doc and len(doc["services"]) == 2
    check = hapair("check", "-c", str(out))
    assert (check.returncode, check.stdout) == (0, "ok\n")


def test_old_synonyms_and_every_checker(
    confs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(confs)
    code, out, err = _import("legacy.conf", key=tmp_path / "authkey")
    assert code == 1  # a weight, a notify, a digest and routes are lost: behaviour changes
    assert err == [
        "legacy.conf:11: $PRIO=110: @lb-b: applies only when keepalived runs as lb-b "
        "(router_id is lb-a)",
        "legacy.conf:28: priority 90: @lb-b: applies only when keepalived runs as lb-b "
        "(router_id is lb-a)",
        "legacy.conf:13: static_routes: hapair adds no routes or rules; keep them in the "
        "system's network config",
        "legacy.conf:24: state BACKUP: hapair has no initial state: the director with the "
        "higher priority is MASTER",
        "legacy.conf:31: unicast_src_ip 10.0.0.2: hapair's heartbeats leave from the address "
        "the routing picks",
        "legacy.conf:20: weight -20: hapair faults the director on a failed track; it moves "
        "no priority by a weight",
        "legacy.conf:42: notify /etc/keepalived/notify-any.sh: hapair runs alerts.scripts "
        "on_master, on_backup and on_fault only",
        "legacy.conf:73: digest 9b3a0c85a887a256d6939da88aabd8cd: hapair does not check a "
        "body's MD5 digest",
    ]
    assert _checked(out, tmp_path) == "ok\n"
    doc = tomllib.loads(out)
    assert doc["node"] == {"name": "lb-a", "priority": 120}  # @lb-a $PRIO=120
    assert doc["cluster"]["preempt"] is False
    assert (doc["cluster"]["interval"], doc["cluster"]["deadtime"]) == ("500ms", "1766ms")
    assert doc["cluster"]["links"][0]["peer"] == "10.0.0.3"
    assert doc["sync"] == {"enabled": True, "interface": "eth1"}
    assert doc["alerts"]["email"]["smtp"] == "192.0.2.25:2525"
    services = {s["name"]: s for s in doc["services"]}
    assert set(services) == {
        "10.0.0.200-8080", "10.0.0.200-8081", "fwmark-5", "10.0.0.200-25", "10.0.0.200-53",
    }  # fmt: skip
    assert services["10.0.0.200-8080"]["probe"]["type"] == "tcp"
    assert services["10.0.0.200-8080"]["probe"]["fall"] == 4  # nb_get_retry 3, and the first
    mark = services["fwmark-5"]
    assert (mark["protocol"], mark["fwmark"], mark["persistence_netmask"]) == ("fwmark", 5, 24)
    assert mark["probe"]["port"] == 80
    smtp, ping = services["10.0.0.200-25"]["real_servers"]
    assert smtp["probe"]["helo_name"] == "lb-a.example.org" and ping["probe"]["type"] == "icmp"
    dns, misc = services["10.0.0.200-53"]["real_servers"]
    assert (dns["probe"]["qtype"], dns["probe"]["query"]) == ("A", "example.org")
    assert misc["probe"]["command"] == "/usr/local/bin/check-dns 10.0.0.52"
    lines = out.splitlines()
    digest = lines.index('address = "10.0.0.31"') - 2
    assert lines[digest].startswith("# LOOK: keepalived legacy.conf:73 `digest ")


def test_odd_syntax(confs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(confs)
    code, out, err = _import("odd.conf", key=tmp_path / "authkey")
    assert code == 1
    assert err == [
        "odd.conf:10: static_ipaddress: @^lvs9: applies only when keepalived runs as any but "
        "lvs9 (router_id is lvs9)",
        "odd.conf:20: 10.0.0.150/24 dev eth0 label eth0:1: label eth0:1: hapair adds the "
        "address without it",  # a continued line: reported at its first
        "odd.conf:28: vrrp_instance VI_2: hapair fails every VIP over together; its VIPs and "
        "tracks are carried over with VI_1's settings",
        "odd.conf:47: url: hapair checks one url per server",
        "odd.conf:51: connect_ip 10.0.0.99: hapair probes the real server's own address, "
        "from its own",
        "odd.conf:56: UDP_CHECK: hapair has no UDP_CHECK; give a probe by hand",
        "odd.conf:61: misc_dynamic: hapair does not set weights from a script's exit code",
    ]
    assert _checked(out, tmp_path) == "ok\n"
    doc = tomllib.loads(out)
    assert doc["node"]["priority"] == 254
    assert doc["cluster"]["links"][0]["group"] == "239.1.1.18"
    assert [v["address"] for v in doc["vips"]] == [
        "10.0.0.150/24",
        "10.0.0.151/24",
        "10.0.0.152/24",
    ]
    probe = doc["services"][0]["real_servers"][0]["probe"]
    assert probe["path"] == "/status#page" and probe["expect_status"] == "200-399"
    assert probe["host"] == "www.example.org" and probe["timeout"] == "3s"
    assert "# LOOK: connect_timeout 10s cut to delay_loop 3s" in out.splitlines()
    assert "# LOOK: keepalived's 255 (address owner) made 254" in out.splitlines()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad.conf", "bad.conf:5: vrrp_instance VI_1 {: the block is never closed"),
        (
            "broken-include.conf",
            "broken-include.conf:4: missing/services.conf: No such file or directory",
        ),
    ],
)
def test_unreadable_input_exits_2(
    confs: Path, name: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(confs)
    code, out, err = _import(name)
    assert (code, out, err) == (2, "", [message])


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    code, out, err = _import(str(tmp_path / "nope.conf"))
    assert (code, out) == (2, "")
    assert err == [f"{tmp_path}/nope.conf:1: No such file or directory"]


def test_pair_with_unicast_peers_and_equal_priorities(tmp_path: Path) -> None:
    for name, me, peer in (("a", "10.0.0.2", "10.0.0.3"), ("b", "10.0.0.3", "10.0.0.2")):
        (tmp_path / f"{name}.conf").write_text(
            f"global_defs {{\n router_id lb-{name}\n}}\n"
            "vrrp_instance V {\n"
            f" state {'MASTER' if name == 'a' else 'BACKUP'}\n interface eth0\n"
            " virtual_router_id 3\n priority 100\n"
            f" unicast_src_ip {me}\n unicast_peer {{\n  {peer}\n }}\n"
            " virtual_ipaddress {\n  10.0.0.10/24\n }\n}\n"
        )
    done = import_files([tmp_path / "a.conf", tmp_path / "b.conf"], str(tmp_path / "key"))
    doc = tomllib.loads(done.text)
    assert doc["nodes"] == [{"name": "lb-a", "priority": 100}, {"name": "lb-b", "priority": 99}]
    assert doc["cluster"]["links"][0]["group"] == "239.0.0.18"
    assert "# LOOK: keepalived's unicast_peer 10.0.0.3: a pair file shares its links, so hapair" \
        " uses multicast here" in done.text.splitlines()  # fmt: skip
    assert any("one less here (it was BACKUP)" in line for line in done.text.splitlines())
    assert (done.problems, done.exit_code) == ([], 0)


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("include a.conf\n")
    with pytest.raises(ParseError, match=r"a.conf:1: include a.conf: nested more than"):
        parse_file(tmp_path / "a.conf")


def test_includes_that_fan_out_are_bounded(tmp_path: Path) -> None:
    """Files that each include the next one 64 times (no loop, under the depth limit)
    would be read 64 ** 5 times: the parse stops at a total of bytes read, FILE:LINE."""
    for level in range(5):
        (tmp_path / f"l{level}.conf").write_text(f"include l{level + 1}.conf\n" * 64)
    (tmp_path / "l5.conf").write_text(f"! {'x' * 4000}\n")
    started = time.monotonic()
    with pytest.raises(ParseError, match=r"l4\.conf:\d+: .*the includes read more than"):
        parse_file(tmp_path / "l0.conf")
    assert time.monotonic() - started < 10
    done = hapair("import-keepalived", str(tmp_path / "l0.conf"))
    assert done.returncode == 2 and "the includes read more than" in done.stderr


def test_parser_shapes() -> None:
    tree = parse_text(
        '$X=eth1\nfoo "a b" # c\nblock\n{\n  inner $X ${X}x\n}\n'
        "@n1 one {\n two\n}\nurl { path / }\n"
    )
    assert [(s.line, s.words) for s in tree] == [
        (2, ("foo", "a b")), (3, ("block",)), (7, ("one",)), (10, ("url",)),
    ]  # fmt: skip
    assert tree[1].children[0].words == ("inner", "eth1", "eth1x")
    assert tree[2].condition == "n1"  # the block goes with its first line
    assert tree[3].children[0].words == ("path", "/")
    with pytest.raises(ParseError, match=r"^x.conf:2: '}' closes no block$"):
        parse_text("a\n}\n", "x.conf")
    with pytest.raises(ParseError, match=r"^x.conf:1: '\{' with no statement before it$"):
        parse_text("{\n}\n", "x.conf")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*'ab {}"!#@$=\\\n\t^_1.', "include x", "$V", "@a "])).map("".join))
def test_parser_fuzz_text(text: str) -> None:
    try:
        parse_text(text, "f.conf")
    except ParseError as exc:
        assert str(exc).startswith("f.conf:")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parser_fuzz_bytes(data: bytes) -> None:
    try:
        parse_file(Path("/x/f.conf"), reader=lambda p: data if p.name == "f.conf" else b"")
    except ParseError as exc:
        assert str(exc).startswith("/x/f.conf:")


_WORDS = [
    "global_defs", "router_id", "vrrp_instance", "virtual_server", "real_server", "HTTP_GET",
    "url", "path", "status_code", "TCP_CHECK", "SMTP_CHECK", "host", "connect_port",
    "DNS_CHECK", "MISC_CHECK", "virtual_ipaddress", "track_script", "vrrp_script",
    "track_interface", "unicast_peer", "priority", "advert_int", "weight", "group",
    "fwmark", "virtual_server_group", "lvs_sync_daemon", "notification_email", "smtp_server",
    "retry", "delay_loop", "connect_timeout", "quorum", "sorry_server", "@x", "@^x",
    "10.0.0.1", "10.0.0.1/24", "80", "0", "-1", "255", "1.5", "dev", "eth0", "id", "x", "{", "}",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*_WORDS, "\n", "\n", "\n"]), max_size=80).map(" ".join))
def test_converter_fuzz(text: str) -> None:
    """Whatever parses converts: a config text and reports, never an exception."""
    try:
        parse_text(text, "f.conf")
    except ParseError:
        return
    done = import_files([Path("/x/f.conf")], "/k", reader=lambda p: text.encode())
    assert done.text.startswith("# Made by hapair import-keepalived")
    assert done.exit_code in (0, 1)


def _conf(path: Path, rid: str, priority: int, vip: str, service: str) -> Path:
    path.write_text(
        f"global_defs {{\n    router_id {rid}\n}}\n"
        "vrrp_instance V {\n    interface eth0\n    virtual_router_id 4\n"
        f"    priority {priority}\n    virtual_ipaddress {{\n        {vip}\n    }}\n}}\n"
        f"virtual_server {service} 80 {{\n    lb_algo rr\n"
        f"    real_server 10.0.0.70 80 {{\n        weight 1\n    }}\n}}\n"
    )
    return path


def test_what_check_would_refuse_is_exit_1(tmp_path: Path) -> None:
    conf = _conf(tmp_path / "k.conf", "d1", 100, "10.0.0.10/24", "10.0.0.99")
    code, out, err = _import(str(conf), key=tmp_path / "authkey")
    assert code == 1
    assert err == [
        "hapair check would find: services.0.address: 10.0.0.99 is none of the [[vips]]; "
        "only the MASTER must receive its traffic"
    ]
    assert tomllib.loads(out)["services"][0]["address"] == "10.0.0.99"


def test_two_directors_of_different_pairs_exit_1(tmp_path: Path) -> None:
    a = _conf(tmp_path / "a.conf", "d1", 100, "10.0.0.10/24", "10.0.0.10")
    b = _conf(tmp_path / "b.conf", "d2", 90, "10.0.0.11/24", "10.0.0.11")
    out = tmp_path / "pair.toml"
    code, stdout, err = _import(str(a), str(b), "-o", str(out))
    assert (code, stdout, out.exists()) == (1, "", False)
    assert err[0] == f"hapair: {a} and {b} differ in what a pair shares ({a} -> {b}):"


def test_instances_of_one_sync_group(tmp_path: Path) -> None:
    conf = tmp_path / "g.conf"
    conf.write_text(
        "global_defs {\n router_id g1\n}\n"
        "vrrp_sync_group G {\n group {\n  OUT\n  IN\n }\n}\n"
        "vrrp_instance OUT {\n interface eth0\n virtual_router_id 5\n priority 120\n"
        " track_interface {\n  eth0\n }\n virtual_ipaddress {\n  192.0.2.10/24\n }\n}\n"
        "vrrp_instance IN {\n interface eth1\n virtual_router_id 6\n priority 120\n"
        " track_interface {\n  eth0\n  eth1\n }\n virtual_ipaddress {\n  10.1.0.1/24\n }\n}\n"
    )
    done = import_files([conf], str(tmp_path / "key"))
    assert [str(r) for r in done.reports] == [
        f"{conf}:21: vrrp_instance IN: in one vrrp_sync_group, as hapair fails over; its VIPs "
        "and tracks are carried over with OUT's settings"
    ]
    doc = tomllib.loads(done.text)
    assert doc["vips"] == [
        {"address": "192.0.2.10/24", "interface": "eth0"},
        {"address": "10.1.0.1/24", "interface": "eth1"},
    ]
    assert doc["track"] == [
        {"type": "interface", "interface": "eth0"},
        {"type": "interface", "interface": "eth1"},
    ]
    assert (done.exit_code, doc["cluster"]["id"]) == (0, 5)
