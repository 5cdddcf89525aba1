"""The operator's word on real servers: drained, disabled, added or removed at run time.

Pure state with its rules: a command is applied or refused with a reason; the
whole roster is a small JSON document that the agent keeps on disk, so an
operator's drain survives a restart and a reload. `effective` merges it into the
configured services.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hapair.config.model import RealServer, Service
from hapair.config.types import parse_endpoint
from hapair.core.refused import Refused
from hapair.ipvs.reconcile import dest_keys
from hapair.ipvs.table import DestKey

ADMIN = ("drained", "disabled")  # "enabled" is the absence of an override


def server_text(key: DestKey) -> str:
    """`10.0.0.11:80`, or `10.0.0.21` for a server of a fwmark service (no port)."""
    return str(key) if key.port else str(key).rsplit(":", 1)[0].strip("[]")


def parse_server(text: str) -> DestKey:
    endpoint = parse_endpoint(text)
    return DestKey(endpoint.address, endpoint.port or 0)


@dataclass
class Roster:
    admin: dict[str, dict[str, str]] = field(default_factory=dict)  # service -> server -> state
    added: dict[str, dict[str, int]] = field(default_factory=dict)  # service -> server -> weight
    removed: dict[str, list[str]] = field(default_factory=dict)  # service -> servers

    # Commands.

    def apply(
        self, services: list[Service], cmd: str, service: str, server: str, weight: int = 1
    ) -> str:
        """Carry out drain|enable|disable|add|remove; return what was done, or raise Refused."""
        svc = next((s for s in services if s.name == service), None)
        if svc is None:
            names = ", ".join(s.name for s in services) or "none"
            raise Refused(f"no service {service!r} (services: {names})")
        key = self._server_key(svc, server)
        text = server_text(key)
        present = key in dest_keys(self.effective(svc))
        if cmd == "add":
            if present:
                raise Refused(f"{text} is already a real server of {service}")
            if not 0 <= weight <= 65535:
                raise Refused(f"weight {weight} is not 0..65535")
            if text in self.removed.get(service, []):
                self.removed[service].remove(text)
            if key not in dest_keys(svc):
                self.added.setdefault(service, {})[text] = weight
            return f"added {text} to {service}"
        if not present:
            raise Refused(f"{text} is not a real server of {service}")
        if cmd == "remove":
            self.added.get(service, {}).pop(text, None)
            if key in dest_keys(svc):
                self.removed.setdefault(service, []).append(text)
            self.admin.get(service, {}).pop(text, None)
            return f"removed {text} from {service}"
        if cmd == "enable":
            self.admin.get(service, {}).pop(text, None)
            return f"{text} of {service} is back under probe control"
        state = {"drain": "drained", "disable": "disabled"}.get(cmd)
        if state is None:
            raise Refused(f"unknown action {cmd!r}")
        self.admin.setdefault(service, {})[text] = state
        return f"{text} of {service} {state}"

    @staticmethod
    def _server_key(svc: Service, server: str) -> DestKey:
        try:
            endpoint = parse_endpoint(server)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        if svc.protocol == "fwmark":
            if endpoint.port not in (None, 0):
                raise Refused(f"a real server of fwmark service {svc.name} has no port")
            return DestKey(endpoint.address, 0)
        port = endpoint.port or svc.port or 0
        if svc.forward != "nat" and port != svc.port:
            raise Refused(f"with forward = {svc.forward!r} the port must be {svc.port}")
        return DestKey(endpoint.address, port)

    # Views.

    def effective(self, svc: Service) -> Service:
        """The service with the operator's additions and removals."""
        if not self.removed.get(svc.name) and not self.added.get(svc.name):
            return svc  # the common case; models are frozen, so the same one will do
        removed = set(self.removed.get(svc.name, []))
        kept = [
            rs
            for rs, key in zip(svc.real_servers, dest_keys(svc), strict=True)
            if server_text(key) not in removed
        ]
        extra = []
        for text, weight in self.added.get(svc.name, {}).items():
            try:
                key = self._server_key(svc, text)
            except Refused:
                continue  # added under another config (e.g. before forward changed)
            extra.append(RealServer(address=key.address, port=key.port or None, weight=weight))
        return svc.model_copy(update={"real_servers": kept + extra})

    def admin_states(self) -> dict[tuple[str, DestKey], str]:
        out: dict[tuple[str, DestKey], str] = {}
        for service, servers in self.admin.items():
            for text, state in servers.items():
                out[(service, parse_server(text))] = state
        return out

    # On disk.

    def to_json(self) -> dict[str, Any]:
        return {"admin": self.admin, "added": self.added, "removed": self.removed}

    @classmethod
    def from_json(cls, data: Any) -> Roster:
        """A roster from disk; anything malformed is dropped rather than trusted."""
        roster = cls()
        if not isinstance(data, dict):
            return roster
        for service, servers in _table(data, "admin"):
            roster.admin[service] = {
                k: v for k, v in servers.items() if _server(k) and isinstance(v, str) and v in ADMIN
            }
        for service, servers in _table(data, "added"):
            roster.added[service] = {
                k: v
                for k, v in servers.items()
                if _server(k) and type(v) is int and 0 <= v <= 65535
            }
        removed = data.get("removed")
        for service, servers in removed.items() if isinstance(removed, dict) else ():
            if isinstance(servers, list):
                roster.removed[str(service)] = [s for s in servers if _server(s)]
        return roster


def _table(data: dict[str, Any], name: str) -> list[tuple[str, dict[Any, Any]]]:
    section = data.get(name)
    if not isinstance(section, dict):
        return []
    return [(str(k), v) for k, v in section.items() if isinstance(v, dict)]


def _server(text: Any) -> bool:
    try:
        parse_server(text)
    except ValueError:
        return False
    return True
