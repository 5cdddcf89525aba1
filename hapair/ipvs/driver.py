"""Reads and writes the kernel's IPVS services, destinations and sync daemons, in the terms of
table.py, through one generic-netlink socket per network namespace; it decides nothing.

Its methods block, on the kernel alone: it handles each request inside the system call
that carries it (genl.py), so they are plain functions, called from the event loop.
`dump` alone is async: reading a large table yields to the loop every few services.
Writes go `genl.BATCH` to a send (`batches`), each refusal still tied to its change.
"""

from __future__ import annotations

import asyncio
import errno as errno_codes
import functools
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from hapair.ipvs import answers, wire
from hapair.ipvs import reconcile as rc
from hapair.ipvs.genl import BATCH, GenlSocket, NoIpvs
from hapair.ipvs.netlink import KernelError
from hapair.ipvs.table import Dest, DestKey, ServiceKey, Table, VirtualService
from hapair.ipvs.wire import SyncDaemon, SyncState

NO_IPVS = "the kernel has no IPVS (modprobe ip_vs?)"
_YIELD_EVERY = 32  # services read between two turns of the event loop


class IpvsError(Exception):
    """A request that failed; `errno` is the kernel's code (None: not the kernel's)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True, slots=True)
class _Request:
    cmd: int
    payload: Callable[[], bytes]
    what: Callable[[], str]  # for an error only
    enoent: str = ""  # what ENOENT means for this request


class IpvsDriver:
    """The IPVS of one network namespace (None: the caller's), as a context:
    `with IpvsDriver("ns1") as ipvs: table = await ipvs.dump()`."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock: GenlSocket | None = None
        self._services = answers.ServiceReader()
        self._dests = answers.DestReader()

    def __enter__(self) -> IpvsDriver:
        try:
            self._sock = GenlSocket.open(self.netns)
        except NoIpvs as e:
            raise IpvsError(f"{self._where()}{NO_IPVS}", errno_codes.ENOENT) from e
        except KernelError as e:
            raise IpvsError(f"{self._where()}looking up IPVS: {e.reason}", e.code) from e
        except OSError as e:  # ENOENT: no such namespace
            raise IpvsError(
                f"{self._where()}opening a netlink socket: {e.strerror or e}", e.errno
            ) from e
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- reading ---

    async def dump(self, keys: Iterable[ServiceKey] | None = None) -> Table:
        """Every service with its destinations, whoever created them; or only those of
        `keys` that exist (a pass that changed a few services re-reads only those)."""
        table: Table = {}
        if keys is None:
            answers = self._read(wire.GET_SERVICE, b"", "listing services")
        else:
            answers = []
            for key in keys:
                try:
                    what = functools.partial("reading {}".format, key)
                    answers += self._read(
                        wire.GET_SERVICE, wire.service_attr(key), what, dump=False
                    )
                except IpvsError as e:
                    if e.errno != errno_codes.ESRCH:
                        raise
        for n, payload in enumerate(answers, 1):
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # the caller's event loop runs between services
            service = self._services.read(payload)
            if service is not None:
                key = service.key
                what = functools.partial("listing the destinations of {}".format, key)
                dests = self._read(wire.GET_DEST, wire.service_attr(key), what)
                self._dests.read(dests, key.family, service.dests)
                table[key] = service
        return table

    def list_daemons(self) -> list[SyncDaemon]:
        said = self._read(wire.GET_DAEMON, b"", "listing sync daemons")
        try:
            return [d for payload in said if (d := answers.daemon_of(payload)) is not None]
        except answers.BadAnswer as e:
            raise IpvsError(f"{self._where()}listing sync daemons: {e}") from e

    # --- writing ---

    def apply(self, changes: Sequence[rc.Change]) -> list[IpvsError | None]:
        """Each change's refusal, or None."""
        return [error for batch in self.batches(changes) for _, error in batch]

    def batches(
        self, changes: Sequence[rc.Change]
    ) -> Iterator[list[tuple[rc.Change, IpvsError | None]]]:
        """Each change with its refusal (or None), `BATCH` changes to a system call: a
        caller may let its event loop run between two batches."""
        for start in range(0, len(changes), BATCH):
            chunk = changes[start : start + BATCH]
            yield list(zip(chunk, self._write([_request_of(c) for c in chunk]), strict=True))

    def add_service(self, service: VirtualService) -> None:
        """Create the service with its settings; its `dests` are not written (see add_dest)."""
        self._write_one(rc.AddService(service))

    def edit_service(self, service: VirtualService) -> None:
        """Change scheduler, persistence, netmask and flags in place (IPVS "set")."""
        self._write_one(rc.EditService(service))

    def delete_service(self, key: ServiceKey) -> None:
        """Delete the service and its destinations."""
        self._write_one(rc.DeleteService(key))

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self._write_one(rc.AddDest(key, dest))

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        """Change weight, forwarding and thresholds in place: connections stay on it."""
        self._write_one(rc.EditDest(key, dest))

    def delete_dest(self, key: ServiceKey, dest_key: DestKey) -> None:
        self._write_one(rc.DeleteDest(key, dest_key))

    def start_daemon(self, daemon: SyncDaemon) -> None:
        what = f"starting {daemon.state.name.lower()} sync daemon on {daemon.ifname}"
        payload = functools.partial(wire.daemon_payload, daemon)
        self._raise(self._write([_Request(wire.NEW_DAEMON, payload, lambda: what)]))

    def stop_daemon(self, state: SyncState) -> None:
        what = f"stopping {state.name.lower()} sync daemon"
        request = _Request(wire.DEL_DAEMON, lambda: wire.daemon_state_payload(state), lambda: what)
        self._raise(self._write([request]))

    def flush(self) -> None:
        """Delete every virtual service of this namespace (IPVS has no per-service flush)."""
        request = _Request(wire.FLUSH, bytes, lambda: "flushing the IPVS table")
        self._raise(self._write([request]))

    def zero(self, key: ServiceKey | None = None) -> None:
        """Zero the counters of one service, or of all services when `key` is None."""
        if key is None:
            request = _Request(wire.ZERO, bytes, lambda: "zeroing IPVS counters")
        else:
            request = _Request(
                wire.ZERO, lambda: wire.service_attr(key), lambda: f"zeroing the counters of {key}"
            )
        self._raise(self._write([request]))

    # --- the socket ---

    def _write_one(self, change: rc.Change) -> None:
        self._raise(self.apply([change]))

    def _raise(self, errors: list[IpvsError | None]) -> None:
        if errors[0] is not None:
            raise errors[0]

    def _write(self, requests: list[_Request]) -> list[IpvsError | None]:
        """One send of at most `BATCH` requests; each one's refusal, or None."""
        assert len(requests) <= BATCH
        errors: list[IpvsError | None] = [None] * len(requests)
        sent: list[int] = []  # indexes in `requests` of what goes on the wire
        wires: list[tuple[int, bytes]] = []
        for n, request in enumerate(requests):
            try:
                wires.append((request.cmd, request.payload()))
                sent.append(n)
            except (ValueError, struct.error) as e:  # the model holds what IPVS cannot
                errors[n] = self._failed(request, e, errno_codes.EINVAL)
        if not wires:
            return errors
        try:
            if self._sock is None:
                raise OSError(errno_codes.EBADF, "the driver is not open")
            refusals = self._sock.write(wires)
        except OSError as e:  # the socket itself: what was done is unknown
            for n in sent:
                errors[n] = self._failed(requests[n], e.strerror or e, e.errno)
            return errors
        for n, refusal in zip(sent, refusals, strict=True):
            if refusal is not None:
                errors[n] = self._refused(requests[n], refusal)
        return errors

    def _read(
        self, cmd: int, payload: bytes, what: str | Callable[[], str], *, dump: bool = True
    ) -> list[bytes]:
        """One read; `what` (for an error only) may be a function, made into text then."""
        said = what if callable(what) else functools.partial(str, what)
        try:
            if self._sock is None:
                raise OSError(errno_codes.EBADF, "the driver is not open")
            return self._sock.request(cmd, payload, dump=dump)
        except KernelError as e:
            raise self._refused(_Request(cmd, bytes, said), e) from e
        except OSError as e:
            raise IpvsError(f"{self._where()}{said()}: {e.strerror or e}", e.errno) from e

    def _refused(self, request: _Request, e: KernelError) -> IpvsError:
        hint = {errno_codes.ESRCH: " (no such service)", errno_codes.ENOENT: request.enoent}
        return self._failed(request, f"{e.reason}{hint.get(e.code, '')}", e.code)

    def _failed(self, request: _Request, reason: object, code: int | None) -> IpvsError:
        return IpvsError(f"{self._where()}{request.what()}: {reason}", code)

    def _where(self) -> str:
        return f"netns {self.netns}: " if self.netns else ""


def _request_of(change: rc.Change) -> _Request:
    if isinstance(change, rc.AddService | rc.EditService):
        service = change.service
        cmd, verb = (
            (wire.NEW_SERVICE, "adding")
            if isinstance(change, rc.AddService)
            else (wire.SET_SERVICE, "editing")
        )
        # ENOENT: no such scheduler module (or persistence engine).
        hint = f" (scheduler {service.scheduler!r} not loaded?)"
        return _Request(
            cmd, lambda: wire.service_payload(service), lambda: f"{verb} {service.key}", hint
        )
    if isinstance(change, rc.DeleteService):
        key = change.key
        return _Request(wire.DEL_SERVICE, lambda: wire.service_attr(key), lambda: f"deleting {key}")
    if isinstance(change, rc.AddDest | rc.EditDest):
        skey, dest = change.service, change.dest
        if isinstance(change, rc.AddDest):  # NEW: no ENOENT
            return _Request(
                wire.NEW_DEST,
                lambda: wire.dest_payload(skey, dest),
                lambda: f"adding destination {dest.key} to {skey}",
            )
        return _Request(
            wire.SET_DEST,
            lambda: wire.dest_payload(skey, dest),
            lambda: f"editing destination {dest.key} of {skey}",
            " (no such destination)",
        )
    skey, dkey = change.service, change.dest
    return _Request(
        wire.DEL_DEST,
        lambda: wire.dest_key_payload(skey, dkey),
        lambda: f"deleting destination {dkey} from {skey}",
        " (no such destination)",
    )


__all__ = ["NO_IPVS", "IpvsDriver", "IpvsError", "SyncDaemon", "SyncState"]
