"""The systemd unit hapair ships (packaging/hapair.service), read by systemd's own tools
offline: `systemd-analyze verify` clean, and `systemd-analyze security` no more exposed
than 3.0 (Debian 12's keepalived.service: 9.6), with the settings the agent relies on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hapair.config.model import Monitor

pytestmark = pytest.mark.unit

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "hapair.service"
ANALYZE = shutil.which("systemd-analyze")


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if ANALYZE is None:
        why = "needs systemd-analyze (Debian's systemd package)"
        if os.environ.get("HAPAIR_REQUIRE_LAYERS") == "1":
            pytest.fail(f"HAPAIR_REQUIRE_LAYERS=1 but this test cannot run here: {why}")
        pytest.skip(why)
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=60, env={**os.environ}
    )


def settings() -> dict[str, list[str]]:
    """Every `Key=value` of the unit (a key may come more than once)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_verifies_it_clean(tmp_path: Path) -> None:
    """In a root of the test's as a package installs it: /usr/bin/hapair, the unit in
    /etc/systemd/system, and systemd's own units and /bin/kill beside it."""
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True
    )
    shutil.copy("/bin/kill", root / "usr" / "bin" / "kill")
    command = root / "usr" / "bin" / "hapair"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc" / "systemd" / "system" / "hapair.service")
    done = analyze("verify", "--man=no", f"--root={root}", "/etc/systemd/system/hapair.service")
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def exposure(unit: Path) -> float:
    done = analyze("security", "--offline=true", "--no-pager", str(unit))
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def test_it_is_no_more_exposed_than_three() -> None:
    score = exposure(UNIT)
    keepalived = Path("/lib/systemd/system/keepalived.service")
    baseline = f"; keepalived.service {exposure(keepalived)}" if keepalived.exists() else ""
    print(f"systemd-analyze security: hapair.service {score}{baseline}")
    assert score <= 3.0


def test_it_runs_the_agent_as_the_agent_expects() -> None:
    unit = settings()
    one = {key: values[-1] for key, values in unit.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"  # hapair/systemd.py
    assert one["ExecStart"] == "/usr/bin/hapair run -c /etc/hapair/hapair.toml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"  # a reload is SIGHUP
    assert one["Restart"] == "on-failure" and one["KillMode"] == "mixed"
    assert one["ConditionFileNotEmpty"] == "/etc/hapair/hapair.toml"
    assert one["After"] == one["Wants"] == "network-online.target"
    watchdog = float(one["WatchdogSec"].removesuffix("s"))
    assert 1 <= watchdog <= 10  # a hung agent holding VIPs is killed within seconds
    # Room for the monitor's largest connection cap beside the probes and the links.
    limits = Monitor.model_fields["max_connections"].metadata
    most = next(limit.le for limit in limits if hasattr(limit, "le"))
    assert int(one["LimitNOFILE"]) >= 2 * most
    assert set(one["RestrictAddressFamilies"].split()) == {
        "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET", "AF_UNIX"
    }  # fmt: skip
    assert set(one["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_NICE", "CAP_IPC_LOCK", "CAP_NET_BIND_SERVICE"
    }  # fmt: skip
    for key in ("RuntimeDirectory", "StateDirectory", "ConfigurationDirectory"):
        assert one[key] == "hapair"
    assert one["ReadWritePaths"] == "/etc/hapair"  # `hapair config apply` writes the file
    assert one["ProtectSystem"] == "strict" and one["NoNewPrivileges"] == "yes"
