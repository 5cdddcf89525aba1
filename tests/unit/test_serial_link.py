"""The serial link on a real pty whose far end stops reading for a while and then resumes:
the line fills up, heartbeats are dropped and counted, and the peer decodes every frame that
went out, intact. (pyserial-asyncio-fast's transport, after a partial write, left its writer
registered on an empty buffer and raised `Write buffer should not be empty` on every turn.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hapair.config.model import SerialLink
from hapair.core.framing import FrameDecoder
from hapair.links.serial import SerialHeartbeatLink

pytestmark = pytest.mark.unit

SEND_EVERY = 0.002
# Heartbeat-sized frames (116 bytes): the write that fills the line is most likely partial.
PADDING = b"." * 100
# Far more than a pty buffers (about 16 KiB on Linux 6.x): the line is full long before.
UNREAD_BYTES = 256 * 1024


def _payload(seq: int) -> bytes:
    return b"%08d" % seq + PADDING


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_line_nobody_reads_drops_heartbeats_and_the_peer_decodes_them_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop_errors: list[dict[str, Any]] = []

        def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            loop_errors.append(context)
            loop.default_exception_handler(context)

        loop.set_exception_handler(on_loop_error)
        far_end, near_end = os.openpty()  # the peer reads the master; the link opens the tty
        os.set_blocking(far_end, False)
        peer = FrameDecoder()
        peer_got: list[bytes] = []

        def peer_reads() -> None:
            peer_got.extend(peer.feed(os.read(far_end, 65536)))

        link = SerialHeartbeatLink(
            SerialLink(type="serial", device=Path(os.ttyname(near_end))), lambda _: None
        )
        await link.start()
        attempts = 0

        async def send_forever() -> None:
            nonlocal attempts
            while True:
                link.send(_payload(attempts))
                attempts += 1
                await asyncio.sleep(SEND_EVERY)

        sender = asyncio.create_task(send_forever())
        try:
            loop.add_reader(far_end, peer_reads)
            await _until(lambda: len(peer_got) >= 10, 5, "the first heartbeats")

            loop.remove_reader(far_end)  # the peer stops reading
            unread_from = attempts
            await _until(
                lambda: (
                    link.dropped["tx_full"] >= 20
                    or (attempts - unread_from) * len(_payload(0)) > UNREAD_BYTES
                ),
                30,
                "the line to fill up",
            )
            dropped_while_unread = link.dropped["tx_full"]

            loop.add_reader(far_end, peer_reads)  # ... and resumes
            resumed_at = attempts
            await _until(
                lambda: any(int(p[:8]) > resumed_at + 20 for p in peer_got),
                5,
                "heartbeats sent after the peer resumed",
            )
            sender.cancel()
            await _until(lambda: len(peer_got) == link.counters["sent"], 5, "the line to drain")
        finally:
            sender.cancel()
            loop.remove_reader(far_end)
            await link.close()
            os.close(far_end)
            os.close(near_end)

        assert loop_errors == []
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "Write buffer should not be empty" not in caplog.text
        assert dropped_while_unread > 0
        # Every frame that went out arrived whole and in order; none were corrupted.
        assert not peer.dropped
        seqs = [int(p[:8]) for p in peer_got]
        assert seqs == sorted(set(seqs))
        assert all(p == _payload(seq) for p, seq in zip(peer_got, seqs, strict=True))
        # Once the line had room again, heartbeats went out again (few dropped since).
        assert link.dropped["tx_full"] - dropped_while_unread < 20
        assert link.counters["sent"] + link.dropped["tx_full"] == attempts
        assert not link.counters["send_errors"] and not link.counters["disconnects"]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_closing_a_link_on_a_full_line_unregisters_and_closes_its_port() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        far_end, near_end = os.openpty()  # nobody ever reads the far end
        tty = os.ttyname(near_end)
        link = SerialHeartbeatLink(SerialLink(type="serial", device=Path(tty)), lambda _: None)
        await link.start()
        [port_fd] = [fd for fd in _fds_of(tty) if fd != near_end]
        try:
            for seq in range(UNREAD_BYTES // len(_payload(0))):
                link.send(_payload(seq))
                if link.dropped["tx_full"]:
                    break
            assert link.dropped["tx_full"], "the line never filled up"
        finally:
            await link.close()
            os.close(far_end)
            os.close(near_end)
        assert not loop.remove_reader(port_fd) and not loop.remove_writer(port_fd)
        assert port_fd not in _fds_of(tty)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def _fds_of(path: str) -> list[int]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                fds.append(int(fd))
    return fds
