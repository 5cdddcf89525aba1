"""`hapair import-keepalived`: keepalived.conf files read (parse.py), converted
(convert.py, services.py), written as a hapair config with comments where to look,
and checked as `hapair check` would, but for the key file not made yet."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hapair.keepalived.convert import Converted, convert, router_id
from hapair.keepalived.parse import ParseError, Reader, Statement, parse_file, read_disk
from hapair.keepalived.report import Report

__all__ = ["Imported", "ParseError", "import_files"]


@dataclass(frozen=True, slots=True)
class Imported:
    text: str  # the hapair config, with its comments
    reports: list[Report]
    problems: list[str]  # what `hapair check` would still find (not the missing key)

    @property
    def exit_code(self) -> int:
        behaviour = any(r.changes_behaviour for r in self.reports)
        return 1 if behaviour or self.problems else 0


def import_files(
    paths: list[Path], auth_key_file: str = "/etc/hapair/authkey", reader: Reader | None = None
) -> Imported:
    """One director's file, or both directors' made one pair file; ParseError when a
    file cannot be read or parsed. A pair that cannot be merged raises MergeError."""
    from hapair.config.merge import pair_document

    trees = [_parse(p, reader) for p in paths]
    done = [convert(t, auth_key_file, f"lvs{i + 1}") for i, t in enumerate(trees)]
    # An include both files share is reported once
    reports = list({str(r): r for c in done for r in c.notes.reports}.values())
    head = "# Made by hapair import-keepalived from " + " and ".join(map(str, paths)) + "\n"
    if len(done) == 1:
        doc, comments = done[0].doc, done[0].notes.comments
    else:
        a, b = _pair_up(done)
        doc = pair_document(a.doc, b.doc, (str(paths[0]), str(paths[1])))
        comments = _pair_comments(a, b)
    if reports:
        head += (
            f"# {len(reports)} keepalived statements were not carried over: each is on "
            "standard error, and each LOOK comment below marks a place to check.\n"
        )
    text = head + annotate(_to_toml(doc), comments)
    return Imported(text, reports, _problems(text))


def _parse(path: Path, reader: Reader | None) -> list[Statement]:
    """The tree of `path`; read again as its router id when an `@NAME $VAR=value`
    definition depends on it (keepalived -i NAME)."""
    read = reader or read_disk
    tree = parse_file(path, read)
    rid = router_id(tree)
    return tree if rid is None else parse_file(path, read, instance=rid)


def _to_toml(doc: dict[str, Any]) -> str:
    from hapair.config.toml_out import to_toml

    return to_toml(doc)


def _pair_up(done: list[Converted]) -> tuple[Converted, Converted]:
    """Two directors' documents made to agree where a pair must and keepalived need
    not: one deadtime (the longer), one link, different names and priorities."""
    a, b = done
    clusters = [c.doc["cluster"] for c in done]
    longest = max(clusters, key=lambda c: _seconds(c["deadtime"]))["deadtime"]
    for cluster in clusters:
        cluster["deadtime"] = longest
    links = [c["links"] for c in clusters]
    if links[0] and links[1] and links[0] != links[1]:
        for c, cluster in zip(done, clusters, strict=True):
            if "peer" in cluster["links"][0]:
                peer = cluster["links"][0].pop("peer")
                cluster["links"][0] = {
                    "type": "udp",
                    "interface": cluster["links"][0]["interface"],
                    "group": "239.0.0.18",
                    "port": 694,
                }
                c.notes.comment(
                    "cluster.links",
                    f"LOOK: keepalived's unicast_peer {peer}: a "
                    "pair file shares its links, so hapair uses multicast here",
                )
        b.doc["cluster"]["links"] = a.doc["cluster"]["links"]
    nodes = [a.doc["node"], b.doc["node"]]
    if nodes[0]["name"] == nodes[1]["name"]:
        nodes[1]["name"] = nodes[1]["name"][:30] + "-2"
        b.notes.comment("nodes.1.name", "LOOK: both directors had this router_id")
    if nodes[0]["priority"] == nodes[1]["priority"]:
        lower = 1 if a.state == "MASTER" or b.state != "MASTER" else 0
        nodes[lower]["priority"] -= 1
        done[lower].notes.comment(
            f"nodes.{lower}.priority",
            "LOOK: keepalived gave both directors this priority; one less here (it was BACKUP)",
        )
    return a, b


def _seconds(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text[:-1])


def _pair_comments(a: Converted, b: Converted) -> dict[str, list[str]]:
    comments: dict[str, list[str]] = {}
    for i, c in enumerate((a, b)):
        for path, lines in c.notes.comments.items():
            path = re.sub(r"^node\b", f"nodes.{i}", path)
            for line in lines:
                if line not in comments.setdefault(path, []):
                    comments[path].append(line)
    return comments


def annotate(text: str, comments: dict[str, list[str]]) -> str:
    """`text` (as to_toml writes it) with each comment before the line of its path:
    a table's header (`services.0`, `cluster.links.0`) or a key (`cluster.id`)."""
    out: list[str] = []
    where: dict[str, str] = {}  # a header's dotted name -> the path of its current table
    counts: dict[str, int] = {}
    current = ""
    left = dict(comments)
    for line in text.splitlines():
        header = re.fullmatch(r"(\[\[?)([^\]]+)\]\]?", line)
        if header:
            name = header[2]
            parent_name, _, last = name.rpartition(".")
            parent = where.get(parent_name, parent_name)
            base = f"{parent}.{last}" if parent else last
            if header[1] == "[[":
                counts[base] = counts.get(base, -1) + 1
                current = f"{base}.{counts[base]}"
                paths = [base, current] if counts[base] == 0 else [current]
            else:
                current, paths = base, [base]
            where[name] = current
        else:
            key = line.partition(" = ")[0]
            paths = [f"{current}.{key}" if current else key] if " = " in line else []
        for path in paths:
            out += [f"# {c}" for c in left.pop(path, [])]
        out.append(line)
    rest = [f"# {c}" for lines in left.values() for c in lines]
    return "\n".join(rest + out) + "\n" if rest else "\n".join(out) + "\n"


def _problems(text: str) -> list[str]:
    """What `hapair check` finds in `text`, but for the key file, made after."""
    from hapair.config import ConfigError, parse_all

    try:
        parse_all(text, base_dir=Path("."))
    except ConfigError as exc:
        return [str(p) for p in exc.problems if not str(p).startswith("cluster.auth_key_file")]
    return []
