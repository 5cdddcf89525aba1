"""ICMP probe: one echo request (ICMPv6 for an IPv6 address) through icmplib; up on a reply.

Needs a raw socket (root or CAP_NET_RAW), as the agent has; without one it reports that
rather than raising. `port` is ignored: ICMP has none.
"""

from __future__ import annotations

import asyncio
import time
from ipaddress import IPv4Address, IPv6Address

from hapair.config.checks import IcmpProbe
from hapair.probes import Result, describe_error


async def check(probe: IcmpProbe, address: IPv4Address | IPv6Address, port: int) -> Result:
    started = time.perf_counter()
    label = f"ICMP echo to {address}"
    try:
        from icmplib import async_ping  # lazy: few use ICMP

        async with asyncio.timeout(probe.timeout):
            host = await async_ping(str(address), count=1, timeout=probe.timeout, privileged=True)
        if host.is_alive:
            ok, outcome = True, f"reply in {host.avg_rtt:.2f} ms"
        else:
            ok, outcome = False, f"no reply within {probe.timeout:g}s"
    except TimeoutError:
        ok, outcome = False, f"no reply within {probe.timeout:g}s"
    except Exception as exc:
        ok, outcome = False, describe_error(exc)
    return Result(ok, f"{label}: {outcome}", time.perf_counter() - started)
