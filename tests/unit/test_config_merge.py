"""`hapair config merge A B`: two one-director files made one pair file."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from hapair_cli import hapair
from test_cli import ETC

from hapair.config import load, parse_all
from hapair.config.merge import MergeError, merge
from hapair.config.toml_out import to_toml

pytestmark = pytest.mark.unit


def pair_of_files(tmp_path: Path) -> tuple[Path, Path]:
    """etc/web-dr.toml as lvs1 and as lvs2 (its own [node] and monitor listen)."""
    text = (ETC / "web-dr.toml").read_text()
    (tmp_path / "authkey").write_bytes(os.urandom(32))
    (tmp_path / "authkey").chmod(0o600)
    a, b = tmp_path / "lvs1.toml", tmp_path / "lvs2.toml"
    a.write_text(text)
    b.write_text(
        text.replace('name = "lvs1"', 'name = "lvs2"')
        .replace("priority = 150", "priority = 100")
        .replace("lvs1.sock", "lvs2.sock")
        .replace('listen = "127.0.0.1:8443"', 'listen = "127.0.0.2:8443"')
    )
    return a, b


def dump(cfg: object) -> dict[str, object]:
    out = dict(cfg.model_dump())  # type: ignore[attr-defined]
    out.pop("version", None)
    return out


def test_merge_round_trips(tmp_path: Path) -> None:
    a, b = pair_of_files(tmp_path)
    text = merge(a, b)
    raw = tomllib.loads(text)
    assert "node" not in raw and [n["name"] for n in raw["nodes"]] == ["lvs1", "lvs2"]
    assert list(raw["nodes"][1])[:3] == ["name", "priority", "monitor_listen"]
    assert raw["nodes"][1]["monitor_listen"] == "127.0.0.2:8443"
    views = parse_all(text, base_dir=tmp_path)
    assert [dump(v) for v in views] == [dump(load(a)), dump(load(b))]


def test_writer_reads_back() -> None:
    doc = {"a": 'x"\\\n\x7fé', "b": [1, 2.5, True], "c": {"d k": []}, "e": [{"f": {"g": 1}}]}
    assert tomllib.loads(to_toml(doc)) == doc
    # what the lab's builder passes: paths and tuples, written as strings and arrays
    lab_doc = {"node": {"state_dir": Path("/var/lib/x y")}, "vips": ({"address": "a"},)}
    assert tomllib.loads(to_toml(lab_doc)) == {
        "node": {"state_dir": "/var/lib/x y"},
        "vips": [{"address": "a"}],
    }


def test_differing_shared_parts_are_listed(tmp_path: Path) -> None:
    a, b = pair_of_files(tmp_path)
    b.write_text(
        b.read_text()
        .replace("id = 51", "id = 52")
        .replace('address = "10.0.0.13"', 'address = "10.0.0.14"')
    )
    with pytest.raises(MergeError) as exc:
        merge(a, b)
    assert exc.value.code == 1
    lines = "\n".join(exc.value.lines)
    assert "cluster.id: 51 -> 52" in lines
    assert "real server 10.0.0.14:80 added" in lines and "10.0.0.13:80 removed" in lines


def test_same_priority_refused(tmp_path: Path) -> None:
    a, b = pair_of_files(tmp_path)
    b.write_text(b.read_text().replace("priority = 100", "priority = 150"))
    done = hapair("config", "merge", str(a), str(b))
    assert done.returncode == 1 and "node.priority" in done.stderr and done.stdout == ""


def test_invalid_input_names_the_file(tmp_path: Path) -> None:
    a, b = pair_of_files(tmp_path)
    b.write_text(b.read_text().replace("priority = 100", "priority = 255"))
    done = hapair("config", "merge", str(a), str(b))
    assert done.returncode == 2 and f"{b}: node.priority:" in done.stderr
    done = hapair("config", "merge", str(a), str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "missing.toml" in done.stderr


def test_pair_file_input_is_invalid(tmp_path: Path) -> None:
    a, _ = pair_of_files(tmp_path)
    pair = tmp_path / "pair.toml"
    pair.write_text((ETC / "pair.toml").read_text())
    done = hapair("config", "merge", str(a), str(pair))
    assert done.returncode == 2 and "pair.toml" in done.stderr


def test_relative_paths_in_different_folders_refused(tmp_path: Path) -> None:
    a, b = pair_of_files(tmp_path)
    (tmp_path / "other").mkdir()
    moved = tmp_path / "other" / "lvs2.toml"
    moved.write_text(b.read_text())
    (tmp_path / "other" / "authkey").write_bytes((tmp_path / "authkey").read_bytes())
    (tmp_path / "other" / "authkey").chmod(0o600)
    with pytest.raises(MergeError) as exc:
        merge(a, moved)
    assert exc.value.code == 1 and "cluster.auth_key_file = 'authkey'" in "\n".join(exc.value.lines)


def test_cli_writes_out(tmp_path: Path) -> None:
    a, b = pair_of_files(tmp_path)
    out = tmp_path / "pair.toml"
    done = hapair("config", "merge", str(a), str(b), "-o", str(out))
    assert done.returncode == 0 and done.stdout == ""
    assert out.read_text() == merge(a, b)
    assert hapair("check", "-c", str(out)).stdout == "ok\n"
    shown = hapair("config", "merge", str(a), str(b))
    assert (shown.returncode, shown.stdout) == (0, out.read_text())
