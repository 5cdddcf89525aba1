"""The serial heartbeat link: a null-modem cable carrying framed payloads.

Owns the port, its framing (hapair.core.framing) and reopening it after the cable or
device is gone. It must not block the event loop, raise from `send`, or look inside a
payload; a lost port is counted and retried every `reopen_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any, cast

import serial_asyncio_fast

from hapair.config.model import SerialLink
from hapair.core.framing import MAX_PAYLOAD, FrameDecoder, encode_frame
from hapair.links import LinkError, OnDatagram

log = logging.getLogger(__name__)

REOPEN_INTERVAL = 1.0
# Heartbeats queued behind a stalled line are stale by the time they leave: drop instead.
MAX_WRITE_BACKLOG = 4096


class _FrameProtocol(asyncio.Protocol):
    def __init__(self, link: SerialHeartbeatLink) -> None:
        self.link = link
        self.lost = asyncio.Event()
        self.error: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        self.link._received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.error = exc
        self.lost.set()


class SerialHeartbeatLink:
    """Sends payloads as frames and hands each intact received frame to `on_datagram`.

    `counters`: sent, send_errors, received, callback_errors, disconnects, reopens,
    open_failures. `dropped` counts what the frame decoder threw away, by reason.
    """

    def __init__(
        self,
        config: SerialLink,
        on_datagram: OnDatagram,
        *,
        reopen_interval: float = REOPEN_INTERVAL,
    ) -> None:
        self.config = config
        self.on_datagram = on_datagram
        self.reopen_interval = reopen_interval
        self.counters: Counter[str] = Counter()
        self.decoder = FrameDecoder()
        self.last_error: str | None = None
        self._transport: asyncio.Transport | None = None
        self._protocol: _FrameProtocol | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def name(self) -> str:
        return str(self.config.device)

    @property
    def dropped(self) -> Counter[str]:
        return self.decoder.dropped

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def start(self) -> None:
        """Open the port; LinkError if it cannot be opened now. Later losses are retried."""
        self._closed = False
        try:
            await self._open()
        except Exception as exc:
            raise LinkError(f"serial link {self.name}: cannot open: {exc}") from exc
        self._supervisor = asyncio.create_task(self._supervise(), name=f"serial-{self.name}")

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        protocol = _FrameProtocol(self)
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            loop, lambda: protocol, str(self.config.device), baudrate=self.config.baud
        )
        port: Any = cast(Any, transport).serial
        with contextlib.suppress(Exception):
            port.reset_input_buffer()  # heartbeats queued while we were away are stale
        self._transport, self._protocol = cast(asyncio.Transport, transport), protocol

    async def _supervise(self) -> None:
        """Wait for the port to be lost, then try to reopen it until it comes back."""
        while not self._closed:
            assert self._protocol is not None
            await self._protocol.lost.wait()
            if self._closed:
                return
            self.counters["disconnects"] += 1
            self.last_error = f"serial link {self.name}: lost: {self._protocol.error or 'closed'}"
            log.warning("%s; reopening every %.1fs", self.last_error, self.reopen_interval)
            self._transport = None
            while not self._closed:
                await asyncio.sleep(self.reopen_interval)
                try:
                    await self._open()
                except Exception as exc:
                    self.counters["open_failures"] += 1
                    self.last_error = f"serial link {self.name}: cannot reopen: {exc}"
                    continue
                self.counters["reopens"] += 1
                log.info("serial link %s: reopened", self.name)
                break

    def send(self, payload: bytes) -> None:
        """Queue one frame for the line, or count why not; never blocks, never raises."""
        if len(payload) > MAX_PAYLOAD:
            self._send_failed(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            self._send_failed("port not open")
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BACKLOG:
            self._send_failed("line stalled, heartbeat dropped")
            return
        try:
            transport.write(encode_frame(payload))
        except Exception as exc:  # the transport reports most errors via connection_lost
            self._send_failed(str(exc))
            return
        self.counters["sent"] += 1

    def _send_failed(self, reason: str) -> None:
        self.counters["send_errors"] += 1
        self.last_error = f"serial link {self.name}: send: {reason}"

    def _received(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            self.counters["received"] += 1
            try:
                self.on_datagram(payload)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("serial link %s: on_datagram failed", self.name)

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._transport is not None:
            self._transport.close()
            if self._protocol is not None:
                # The transport closes the port in an executor; let it finish.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._protocol.lost.wait(), 2.0)
        self._transport = self._protocol = self._supervisor = None
