"""The pair file: one config for both directors, two `[[nodes]]` entries and the rest
shared. Each director's view is checked as a `[node]` file is, with its problems at
`nodes.N.<key>`; the version is the SHA-256 of the file's bytes."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hapair_cli import hapair

from hapair import agent as agent_module
from hapair.agent import Agent
from hapair.config import ConfigError, load, load_all, parse

pytestmark = pytest.mark.unit

ETC = Path(__file__).resolve().parents[2] / "etc"

NODES = """
[[nodes]]
name = "lvs1"
priority = 150
monitor_listen = "198.18.1.2:8443"

[[nodes]]
name = "lvs2"
priority = 100
control_socket = "/run/hapair/second.sock"
monitor_listen = "198.18.2.2:8443"
"""

SHARED = """
[cluster]
id = 51
auth_key_file = "authkey"

[[cluster.links]]
type = "udp"
interface = "eth1"
group = "239.0.0.18"

[[vips]]
address = "10.0.0.100/24"
interface = "eth0"

[monitor]
tls_cert = "monitor.crt"
tls_key = "monitor.key"
users_file = "users"
"""

PAIR = NODES + SHARED


@pytest.fixture
def here(key_file: Path) -> Path:
    """A folder with an auth key: where the configs of these tests live."""
    return key_file.parent


def problems_of(text: str, here: Path, node: str | None = None, every: bool = False) -> list[str]:
    path = here / "pair.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        if every:
            load_all(path, node)
        else:
            load(path, node)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("node", "priority", "listen", "peer", "sock"),
    [
        ("lvs1", 150, "198.18.1.2", "lvs2", "/run/hapair/lvs1.sock"),
        ("lvs2", 100, "198.18.2.2", "lvs1", "/run/hapair/second.sock"),
    ],
)
def test_each_entry_resolves_to_its_director(
    here: Path, node: str, priority: int, listen: str, peer: str, sock: str
) -> None:
    cfg = parse(PAIR, base_dir=here, node=node)
    assert (cfg.node.name, cfg.node.priority) == (node, priority)
    assert cfg.monitor is not None and (cfg.monitor.listen.host, cfg.monitor.listen.port) == (
        listen,
        8443,
    )
    assert cfg.monitor.tls_cert == here / "monitor.crt"  # shared, relative to the file
    assert str(cfg.node.socket_path) == sock  # a key given for one director alone
    assert cfg.pair and cfg.peer_node == peer
    assert [str(v.address) for v in cfg.vips] == ["10.0.0.100/24"]


def test_the_shared_monitor_listen_serves_an_entry_without_its_own(here: Path) -> None:
    text = PAIR.replace('monitor_listen = "198.18.2.2:8443"\n', "").replace(
        "[monitor]\n", '[monitor]\nlisten = "127.0.0.1:9443"\n'
    )
    first, second = (parse(text, base_dir=here, node=n) for n in ("lvs1", "lvs2"))
    assert first.monitor is not None and second.monitor is not None
    assert (str(first.monitor.listen), str(second.monitor.listen)) == (
        "198.18.1.2:8443",
        "127.0.0.1:9443",
    )


def test_monitor_listen_without_a_monitor_is_an_error(here: Path) -> None:
    text = PAIR[: PAIR.index("[monitor]")]
    assert problems_of(text, here, every=True) == [
        "nodes.0.monitor_listen: there is no [monitor] to listen for",
        "nodes.1.monitor_listen: there is no [monitor] to listen for",
    ]


def test_an_entry_without_listen_and_no_shared_one_is_reported_at_its_entry(here: Path) -> None:
    text = PAIR.replace('monitor_listen = "198.18.2.2:8443"\n', "")
    assert problems_of(text, here, every=True) == [
        "nodes.1.monitor_listen: required, as [monitor] has no listen"
    ]
    assert load(here / "pair.toml", "lvs1").node.name == "lvs1"  # its view is whole


@pytest.mark.parametrize(
    ("host", "expected"), [("lvs2.example.org", "lvs2"), ("lvs1", "lvs1"), ("lvs2", "lvs2")]
)
def test_without_node_the_entry_named_like_the_host(
    here: Path, monkeypatch: pytest.MonkeyPatch, host: str, expected: str
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    assert parse(PAIR, base_dir=here).node.name == expected


def test_no_entry_named_like_the_host_names_the_entries(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "lvs3.example.org")
    problems = problems_of(PAIR, here)
    assert len(problems) == 1
    assert problems[0].startswith("nodes: no entry is named 'lvs3'")
    assert "'lvs1', 'lvs2'" in problems[0] and "--node" in problems[0]


def test_no_entry_named_by_node(here: Path) -> None:
    assert problems_of(PAIR, here, node="lvs9") == [
        "nodes: no entry is named 'lvs9'; the entries are 'lvs1', 'lvs2'"
    ]
    assert problems_of(PAIR, here, node="lvs9", every=True) == [
        "nodes: no entry is named 'lvs9'; the entries are 'lvs1', 'lvs2'"
    ]


def test_load_all_gives_every_director_or_the_one_named(here: Path) -> None:
    path = here / "pair.toml"
    path.write_text(PAIR)
    assert [c.node.name for c in load_all(path)] == ["lvs1", "lvs2"]
    assert [c.node.name for c in load_all(path, "lvs2")] == ["lvs2"]


def test_an_error_in_one_directors_view_is_at_its_entry(here: Path) -> None:
    text = PAIR.replace("priority = 100", "priority = 255").replace(
        'name = "lvs1"', 'name = "lvs1"\nstate_dirr = "/tmp"'
    )
    assert problems_of(text, here, every=True) == [
        "nodes.0.state_dirr: unknown key (a typo?)",
        "nodes.1.priority: Input should be less than or equal to 254",
    ]
    # Only the director asked for is checked.
    assert problems_of(text, here, node="lvs2") == [
        "nodes.1.priority: Input should be less than or equal to 254"
    ]


def test_only_the_director_asked_for_is_checked(here: Path) -> None:
    path = here / "pair.toml"
    path.write_text(PAIR.replace("priority = 100", "priority = 255"))
    assert load_all(path, "lvs1")[0].node.priority == 150
    assert load(path, "lvs1").node.priority == 150
    with pytest.raises(ConfigError):
        load_all(path)


def test_a_missing_required_key_is_at_its_entry(here: Path) -> None:
    text = PAIR.replace('name = "lvs2"\npriority = 100\n', 'name = "lvs2"\n')
    assert problems_of(text, here, every=True) == ["nodes.1.priority: required"]


def test_a_rule_on_an_entry_key_is_at_its_entry(here: Path) -> None:
    long = "/run/" + "x" * 120 + ".sock"
    text = PAIR.replace('control_socket = "/run/hapair/second.sock"', f'control_socket = "{long}"')
    [problem] = problems_of(text, here, every=True)
    assert problem.startswith("nodes.1.control_socket: ")


def test_an_error_in_a_shared_section_is_reported_once(here: Path) -> None:
    text = PAIR.replace("id = 51", "id = 0").replace('interface = "eth0"', 'interface = ""')
    problems = problems_of(text, here, every=True)
    assert [p.split(":")[0] for p in problems] == ["cluster.id", "vips.0.interface"]


def test_a_rule_error_in_a_shared_section_is_reported_once(here: Path) -> None:
    text = PAIR.replace("id = 51", 'id = 51\ninterval = "1s"\ndeadtime = "1s"')
    problems = problems_of(text, here, every=True)
    assert [p.split(":")[0] for p in problems] == ["cluster.deadtime"]


def test_two_entries_with_the_same_name(here: Path) -> None:
    problems = problems_of(PAIR.replace('"lvs2"', '"lvs1"'), here, every=True)
    assert problems == ["nodes.1.name: 'lvs1' is nodes.0's name too; each needs its own"]
    assert problems_of(PAIR.replace('"lvs2"', '"lvs1"'), here, node="lvs1") == problems


def test_two_entries_with_the_same_priority(here: Path) -> None:
    problems = problems_of(PAIR.replace("priority = 100", "priority = 150"), here, every=True)
    assert len(problems) == 1 and problems[0].startswith(
        "nodes.1.priority: 150 is nodes.0's priority too"
    )


def test_node_and_nodes_together_are_an_error(here: Path) -> None:
    text = '[node]\nname = "lvs1"\npriority = 150\n' + PAIR
    [problem] = problems_of(text, here, every=True)
    assert problem.startswith("nodes: both [node] and [[nodes]]")


@pytest.mark.parametrize("count", [1, 3])
def test_a_pair_is_two_entries(here: Path, count: int) -> None:
    entries = "".join(f'[[nodes]]\nname = "n{i}"\npriority = {10 + i}\n' for i in range(count))
    for every in (True, False):
        assert problems_of(entries + SHARED, here, node="n0", every=every) == [
            f"nodes: a pair is two directors: give exactly two [[nodes]] entries ({count} entries)"
        ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodes = 5\n", "nodes: a pair is two directors"),
        ("nodes = [1, 2]\n", "nodes.0: must be a table"),
    ],
)
def test_nodes_that_are_not_tables(here: Path, text: str, expected: str) -> None:
    problems = problems_of(text + SHARED, here, every=True)
    assert problems and problems[0].startswith(expected)


def test_version_is_the_sha256_of_the_bytes_and_the_same_for_both(here: Path) -> None:
    path = here / "pair.toml"
    data = PAIR.encode()
    path.write_bytes(data)
    first, second = load_all(path)
    assert first.version == second.version == hashlib.sha256(data).hexdigest()
    assert load(path, "lvs2").version == first.version
    path.write_bytes(data + b"# a comment changes the version\n")
    assert load(path, "lvs1").version == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load(path, "lvs1").version != first.version


def test_a_node_file_works_as_before(here: Path) -> None:
    text = '[node]\nname = "lvs1"\npriority = 150\n' + SHARED.replace(
        "[monitor]\n", '[monitor]\nlisten = "127.0.0.1:8443"\n'
    )
    path = here / "one.toml"
    path.write_text(text)
    cfg = load(path)
    assert (cfg.node.name, cfg.pair, cfg.peer_node) == ("lvs1", False, None)
    assert cfg.version == hashlib.sha256(text.encode()).hexdigest()
    assert [c.node.name for c in load_all(path)] == ["lvs1"]
    assert load(path, "lvs1").node.name == "lvs1"
    with pytest.raises(ConfigError) as info:
        load(path, "lvs2")
    assert [str(p) for p in info.value.problems] == [
        "node.name: 'lvs1', but --node asks for 'lvs2'"
    ]


def test_the_example_pair_file_checks_for_both(here: Path) -> None:
    path = here / "pair.toml"
    path.write_bytes((ETC / "pair.toml").read_bytes())
    assert [(c.node.name, c.peer_node) for c in load_all(path)] == [
        ("lvs1", "lvs2"),
        ("lvs2", "lvs1"),
    ]
    result = hapair("check", "-c", str(path))
    assert (result.returncode, result.stdout) == (0, "ok\n")


def test_cli_check_checks_every_entry_or_the_one_named(here: Path) -> None:
    path = here / "pair.toml"
    path.write_text(PAIR.replace("priority = 100", "priority = 0"))
    result = hapair("check", "-c", str(path))
    assert result.returncode == 2
    assert result.stdout == "nodes.1.priority: Input should be greater than or equal to 1\n"
    result = hapair("check", "-c", str(path), "--node", "lvs1")
    assert (result.returncode, result.stdout) == (0, "ok\n")
    result = hapair("check", "-c", str(path), "--node", "lvs2")
    assert result.returncode == 2 and result.stdout.startswith("nodes.1.priority: ")
    result = hapair("check", "-c", str(path), "--node", "lvs7")
    assert result.returncode == 2
    assert result.stdout == "nodes: no entry is named 'lvs7'; the entries are 'lvs1', 'lvs2'\n"


def test_cli_run_with_an_unknown_node_exits_2_naming_the_entries(here: Path) -> None:
    path = here / "pair.toml"
    path.write_text(PAIR)
    result = hapair("run", "-c", str(path), "--node", "lvs3")
    assert result.returncode == 2
    assert result.stderr == "nodes: no entry is named 'lvs3'; the entries are 'lvs1', 'lvs2'\n"


def test_a_reload_reads_the_entry_running_now(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP resolves the same entry as the start did, even when the host's name no
    longer matches it; with a `[node]` file, what `run --node` asked (as before)."""
    running = parse(PAIR, base_dir=here, node="lvs2")
    monkeypatch.setattr(socket, "gethostname", lambda: "lvs1")
    agent = SimpleNamespace(cfg=running, node_asked=None)
    assert Agent._reload_node(agent) == "lvs2"
    one = parse(
        '[node]\nname = "lvs1"\npriority = 150\n'
        + SHARED.replace("[monitor]\n", '[monitor]\nlisten = "127.0.0.1:8443"\n'),
        base_dir=here,
    )
    assert Agent._reload_node(SimpleNamespace(cfg=one, node_asked=None)) is None
    assert Agent._reload_node(SimpleNamespace(cfg=one, node_asked="lvs1")) == "lvs1"


def test_a_sighup_reload_of_a_pair_file_applies_the_same_entry(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's reload itself, on a stand-in agent: started as lvs2 on a host named
    lvs1, it reloads lvs2's view of the changed file."""
    path = here / "pair.toml"
    path.write_text(PAIR)
    running = load(path, "lvs2")
    path.write_text(PAIR.replace('address = "10.0.0.100/24"', 'address = "10.0.0.101/24"'))
    monkeypatch.setattr(socket, "gethostname", lambda: "lvs1")
    monkeypatch.setattr(agent_module.host, "missing_interfaces", lambda cfg: [])
    applied: list[Any] = []
    failed: list[str] = []

    async def conflicts(vips: Any) -> list[Any]:
        return []

    async def apply(cfg: Any, key: bytes) -> None:
        applied.append(cfg)

    fake = SimpleNamespace(
        cfg=running,
        key=b"",
        config_path=path,
        node_asked=None,
        vips=SimpleNamespace(conflicts=conflicts),
        _apply_config=apply,
        _reload_failed=failed.append,
    )
    fake._reload_node = lambda: Agent._reload_node(fake)
    fake.refusals = lambda cfg: Agent.refusals(fake, cfg)
    asyncio.run(Agent._reload(fake))
    assert failed == []
    [cfg] = applied
    assert (cfg.node.name, cfg.peer_node, str(cfg.vips[0].address)) == (
        "lvs2",
        "lvs1",
        "10.0.0.101/24",
    )


def test_a_bad_monitor_listen_is_at_its_entry(here: Path) -> None:
    text = PAIR.replace('"198.18.2.2:8443"', '"nowhere"')
    [problem] = problems_of(text, here, every=True)
    assert problem.startswith("nodes.1.monitor_listen: 'nowhere': ")


def test_status_finds_the_socket_of_the_entry_named(here: Path) -> None:
    path = here / "pair.toml"
    path.write_text(PAIR.replace("/run/hapair/second.sock", str(here / "second.sock")))
    result = hapair("status", "-c", str(path), "--node", "lvs2", "--json")
    assert result.returncode == 3 and str(here / "second.sock") in result.stderr
