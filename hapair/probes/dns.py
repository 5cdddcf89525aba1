"""DNS probe: one UDP query for `query`/`qtype` to address:port; up on NOERROR with answers.

Owns only the query through dnspython; it does not recurse, retry or fall back to TCP
(a truncated reply still counts if it carries an answer).
"""

from __future__ import annotations

import asyncio
import time
from ipaddress import IPv4Address, IPv6Address

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from hapair.config.checks import DnsProbe
from hapair.probes import Result, describe_error, endpoint


async def check(probe: DnsProbe, address: IPv4Address | IPv6Address, port: int) -> Result:
    started = time.perf_counter()
    label = f"DNS {probe.qtype} {probe.query} @{endpoint(address, port)}"
    try:
        query = dns.message.make_query(probe.query, probe.qtype)
        async with asyncio.timeout(probe.timeout):
            reply = await dns.asyncquery.udp(query, str(address), port=port)
        rcode = dns.rcode.to_text(reply.rcode())
        answers = sum(len(rrset) for rrset in reply.answer)
        if reply.rcode() != dns.rcode.NOERROR:
            ok, outcome = False, rcode
        elif answers == 0:
            ok, outcome = False, "NOERROR but no answer"
        else:
            ok, outcome = True, f"NOERROR, {answers} answer{'s' if answers > 1 else ''}"
    except TimeoutError:
        ok, outcome = False, f"no answer within {probe.timeout:g}s"
    except dns.exception.DNSException as exc:
        ok, outcome = False, f"bad reply: {exc}"
    except Exception as exc:
        ok, outcome = False, describe_error(exc)
    return Result(ok, f"{label}: {outcome}", time.perf_counter() - started)
