"""The serial heartbeat link: a null-modem cable carrying framed payloads.

Owns the port, its framing (hapair.core.framing) and reopening it after the cable or
device is gone. It must not block the event loop, raise from `send`, or look inside a
payload; a lost port is counted and retried every `reopen_interval` seconds.

The port's file descriptor is read and written here, non-blocking, with the loop's
add_reader/add_writer: pyserial-asyncio-fast's transport, after a partial write, leaves
its writer registered on an empty buffer and then raises on every turn of the loop
(its PR #36).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from functools import partial

import serial

from hapair.config.model import SerialLink
from hapair.core.framing import MAX_PAYLOAD, FrameDecoder, encode_frame
from hapair.links import LinkError, OnDatagram

log = logging.getLogger(__name__)

REOPEN_INTERVAL = 1.0
READ_SIZE = 4096


class SerialHeartbeatLink:
    """Sends payloads as frames and hands each intact received frame to `on_datagram`.

    `counters`: sent, send_errors, received, callback_errors, disconnects, reopens,
    open_failures. `dropped` counts what was thrown away, by reason: the frame decoder's
    (see FrameDecoder) and `tx_full`, a heartbeat the line had no room for.
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
        self._port: serial.Serial | None = None
        self._unsent = b""  # the tail of a frame the line took only part of
        self._lost = asyncio.Event()
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
        return self._port is not None

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
        port = await loop.run_in_executor(
            None, partial(serial.Serial, str(self.config.device), baudrate=self.config.baud)
        )
        with contextlib.suppress(Exception):
            port.reset_input_buffer()  # heartbeats queued while we were away are stale
        os.set_blocking(port.fd, False)  # pyserial opens it so; send() relies on it
        loop.add_reader(port.fd, self._read_ready)
        self._port = port
        self._lost.clear()

    async def _supervise(self) -> None:
        """Wait for the port to be lost, then try to reopen it until it comes back."""
        while not self._closed:
            await self._lost.wait()
            if self._closed:
                return
            self.counters["disconnects"] += 1
            log.warning("%s; reopening every %.1fs", self.last_error, self.reopen_interval)
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
        """Write one frame to the line now, or count why not; never blocks, never raises.

        A heartbeat the line has no room for now is stale by the time it would leave, so
        it is dropped, not queued.
        """
        if len(payload) > MAX_PAYLOAD:
            self._send_failed(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
            return
        port = self._port
        if port is None:
            self._send_failed("port not open")
            return
        if self._unsent:
            self.dropped["tx_full"] += 1
            return
        frame = encode_frame(payload)
        try:
            written = os.write(port.fd, frame)
        except BlockingIOError:
            self.dropped["tx_full"] += 1
            return
        except OSError as exc:
            self._send_failed(str(exc))
            self._port_lost(f"send: {exc}")
            return
        self.counters["sent"] += 1
        if written < len(frame):
            # Finish this frame (new ones are dropped meanwhile) rather than leave the peer
            # a truncated one: its decoder would resynchronise, but lose the frame and count
            # it as damage the line never did.
            self._unsent = frame[written:]
            asyncio.get_running_loop().add_writer(port.fd, self._write_unsent)

    def _write_unsent(self) -> None:
        assert self._port is not None
        try:
            written = os.write(self._port.fd, self._unsent)
        except BlockingIOError:
            return
        except OSError as exc:
            self._send_failed(str(exc))
            self._port_lost(f"send: {exc}")
            return
        self._unsent = self._unsent[written:]
        if not self._unsent:
            asyncio.get_running_loop().remove_writer(self._port.fd)

    def _send_failed(self, reason: str) -> None:
        self.counters["send_errors"] += 1
        self.last_error = f"serial link {self.name}: send: {reason}"

    def _read_ready(self) -> None:
        assert self._port is not None
        try:
            data = os.read(self._port.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._port_lost(str(exc))
            return
        if not data:  # a hung-up tty reads as end of file, for ever
            self._port_lost("end of file")
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            self.counters["received"] += 1
            try:
                self.on_datagram(payload)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("serial link %s: on_datagram failed", self.name)

    def _port_lost(self, reason: str) -> None:
        """Give up the port; the supervisor reopens the device."""
        if self._port is None:
            return
        self._close_port()
        self.last_error = f"serial link {self.name}: lost: {reason}"
        self._lost.set()

    def _close_port(self) -> None:
        """Unregister the port's descriptor from the loop and close it."""
        port, self._port, self._unsent = self._port, None, b""
        if port is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(port.fd)
        loop.remove_writer(port.fd)
        # Unsent output is stale heartbeats; without it, close() has nothing to drain and
        # cannot block on a stalled line.
        with contextlib.suppress(Exception):
            port.reset_output_buffer()
        with contextlib.suppress(OSError):
            port.close()

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._close_port()
        self._supervisor = None
