"""The agent's rtnetlink socket (hapair/rtnl.py) against this machine's kernel: dumps of
links and addresses (no root needed), and a socket whose dump was cut short replaced."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from hapair.rtnl import NetlinkError, Rtnl
from hapair.vip import VipAddresses

pytestmark = pytest.mark.unit


def test_links_and_addresses_are_the_kernels() -> None:
    async def main() -> None:
        rtnl = Rtnl()
        try:
            links = {m.get("ifname"): int(m["index"]) for m in await rtnl.links()}
            assert links["lo"] == socket.if_nametoindex("lo")
            v4 = await rtnl.addresses(socket.AF_INET)
            assert ("127.0.0.1", links["lo"]) in {(m.get("local"), m["index"]) for m in v4}
            assert {m["family"] for m in v4} == {socket.AF_INET}
            every = await rtnl.addresses()
            assert len(every) >= len(v4)
            assert not rtnl.spoiled
        finally:
            rtnl.close()

    asyncio.run(main())


def test_a_dump_cut_short_spoils_the_socket_and_the_next_is_fresh() -> None:
    """A dump left halfway makes the same socket's next dump fail (EBUSY)."""

    async def main() -> None:
        vips = VipAddresses()
        first = vips.ipr
        for _ in range(3):
            read = asyncio.create_task(first.links())
            await asyncio.sleep(0)
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError, NetlinkError):
                await read
        assert first.spoiled
        fresh = vips.ipr
        assert fresh is not first
        assert "lo" in {m.get("ifname") for m in await fresh.links()}
        assert await vips.local_addresses()
        vips.close()

    asyncio.run(main())
