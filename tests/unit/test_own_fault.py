"""A probe or a check that fails because this host is out of descriptors says nothing of
its target: no verdict either way (a flood of web clients once starved an ICMP check
into "Too many open files", and the MASTER went FAULT)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import pytest

from hapair.probes import own_fault

pytestmark = pytest.mark.unit


def test_own_fault_reads_causes() -> None:
    emfile = OSError(errno.EMFILE, "Too many open files")
    assert own_fault(emfile)
    try:
        try:
            raise emfile
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert own_fault(wrapped)
    assert not own_fault(OSError(errno.ECONNREFUSED, "refused"))
    assert not own_fault(TimeoutError())


SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, resource, socket
    from ipaddress import ip_address
    from hapair.config.checks import TcpProbe, TcpTrack
    from hapair import probes, track
    from hapair.probes.prober import Prober, Target

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    port = server.getsockname()[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    async def main():
        verdicts = []
        prober = Prober(lambda key, ok, reason: verdicts.append((ok, reason)))
        probe = TcpProbe(type="tcp", interval=0.05, timeout=0.5, rise=1, fall=1)
        prober.sync({"web": Target(probe, ip_address("127.0.0.1"), port, True)})
        await asyncio.sleep(0.3)
        out = {"before": prober.watches["web"].last[:2]}
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        out["check"] = (await probes.check(probe, ip_address("127.0.0.1"), port))[:2]
        out["track"] = await track.check_once(TcpTrack(type="tcp", target=f"127.0.0.1:{port}"))
        await asyncio.sleep(0.5)
        out["starved"] = prober.watches["web"].last[:2]
        for fd in held:
            os.close(fd)
        await asyncio.sleep(0.3)
        out["after"] = prober.watches["web"].last[:2]
        out["verdicts"] = verdicts
        await prober.close()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def test_out_of_descriptors_is_no_verdict_on_the_target() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for name in ("check", "starved"):
        ok, reason = out[name]
        assert ok is None and "too many open files" in reason.lower(), (name, out[name])
    assert out["track"][0] is None and "this host" in out["track"][1]
    assert out["before"][0] is True and out["after"][0] is True, out
    assert out["verdicts"] == []  # the server never went down, nor came up again
