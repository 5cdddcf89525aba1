"""SMTP probe: a 220 banner, EHLO, optionally STARTTLS, then QUIT, against address:port.

Owns only the dialogue through aiosmtplib; it sends no mail, and with STARTTLS it checks
that TLS works, not whose certificate it is (real servers rarely carry a trusted one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from ipaddress import IPv4Address, IPv6Address

import aiosmtplib

from hapair.config.checks import SmtpProbe
from hapair.probes import Result, describe_error, endpoint, one_line


async def check(probe: SmtpProbe, address: IPv4Address | IPv6Address, port: int) -> Result:
    started = time.perf_counter()
    steps: list[str] = []  # what succeeded so far, so a failure says where it happened
    doing = "banner"
    client = aiosmtplib.SMTP(
        hostname=str(address),
        port=port,
        local_hostname=probe.helo_name,  # given, so aiosmtplib never looks up our FQDN
        start_tls=False,  # else it would STARTTLS on its own whenever offered
        validate_certs=False,
        timeout=None,  # the probe's asyncio.timeout bounds the whole dialogue
    )
    try:
        async with asyncio.timeout(probe.timeout):
            banner = await client.connect()
            steps.append(f"banner {banner.code} {_first_line(banner.message)}")
            doing = "EHLO"
            await client.ehlo(hostname=probe.helo_name)
            steps.append("EHLO ok")
            if probe.starttls:
                doing = "STARTTLS"
                await client.starttls(validate_certs=False)
                await client.ehlo(hostname=probe.helo_name)  # RFC 3207: the session starts over
                steps.append("STARTTLS ok")
            doing = "QUIT"
            await client.quit()
        ok, outcome = True, ""
    except TimeoutError:
        ok, outcome = False, f"{doing}: no answer within {probe.timeout:g}s"
    except aiosmtplib.SMTPResponseException as exc:
        code = f" {exc.code}" if exc.code > 0 else ":"  # -1: not an SMTP reply at all
        ok, outcome = False, f"{doing}{code} {_first_line(exc.message)}"
    except aiosmtplib.SMTPConnectError as exc:
        # aiosmtplib wraps what went wrong while connecting; the cause says it better.
        cause = exc.__cause__ or exc
        closed = isinstance(cause, aiosmtplib.SMTPServerDisconnected)
        ok, outcome = False, "connection closed by the server" if closed else describe_error(cause)
    except aiosmtplib.SMTPServerDisconnected:
        ok, outcome = False, "connection closed by the server"
    except aiosmtplib.SMTPException as exc:
        ok, outcome = False, one_line(exc.message) or type(exc).__name__
    except Exception as exc:
        ok, outcome = False, describe_error(exc)
    finally:
        with contextlib.suppress(Exception):
            client.close()  # drops the transport when QUIT was not reached
    if outcome:
        steps.append(outcome)
    latency = time.perf_counter() - started
    return Result(ok, f"SMTP {endpoint(address, port)}: {'; '.join(steps)}", latency)


def _first_line(text: str) -> str:
    """A multi-line reply's first line: the greeting, not the extension list."""
    return one_line(text.strip().splitlines()[0]) if text.strip() else ""
