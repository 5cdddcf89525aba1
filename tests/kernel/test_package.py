"""The Debian package (scripts/build-deb, built on the host before the guest boots),
installed in the guest with apt as an operator installs it (/usr, /etc, /opt and /var
are the guest's throw-away overlays): its files, the installed `hapair check` of the
example config, a failover between two directors that run the installed hapair, and a
removal that keeps the operator's config."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pair import Lab, started, wait_for

from lab.shell import sh

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = [
    "/usr/bin/hapair",
    "/opt/hapair/bin/python3",
    "/lib/systemd/system/hapair.service",
    "/etc/hapair/README",
    "/etc/hapair/hapair.toml.example",
    "/usr/share/man/man8/hapair.8.gz",
    "/usr/share/man/man5/hapair.toml.5.gz",
    "/usr/share/doc/hapair/copyright",
]


def package() -> Path:
    found = sorted((ROOT / "dist").glob("hapair_*.deb"))
    if not found:
        why = "no dist/hapair_*.deb: run scripts/build-deb on the host first (scripts/test does)"
        if os.environ.get("HAPAIR_REQUIRE_LAYERS") == "1":
            pytest.fail(f"HAPAIR_REQUIRE_LAYERS=1 but this test cannot run here: {why}")
        pytest.skip(why)
    return found[-1]


def apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", "-y", "-q", *args],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    deb = package()
    # In the guest / is the host's root, read-only, and /opt an overlay mounted on it: a
    # removal's rmdir of the emptied /opt fails there (EROFS) where a director's would
    # just remove an empty folder. Listing /opt as base-files' too (in the guest's
    # throw-away dpkg database) keeps dpkg from trying.
    shared = Path("/var/lib/dpkg/info/base-files.list")
    before = shared.read_text()
    shared.write_text(before + "/opt\n")
    done = apt("install", str(deb))
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"installed {deb.name}: {done.stdout.strip().splitlines()[-3:]}")
    yield deb
    subprocess.run(["dpkg", "--purge", "hapair"], capture_output=True, timeout=300)
    shared.write_text(before)


def test_the_package_installs_its_files_and_nothing_secret(installed: Path) -> None:
    for path in INSTALLED:
        assert Path(path).exists(), path
    assert not Path("/etc/hapair/authkey").exists()  # the operator makes the key
    assert not Path("/etc/hapair/users").exists()  # and the monitor's users: no default
    assert not Path("/etc/hapair/hapair.toml").exists()  # the unit waits for a config
    assert sh("/usr/bin/hapair", "--version").stdout.strip() == "hapair 0.1.0"
    listed = sh("dpkg-query", "-L", "hapair").stdout.split()
    assert "/opt/hapair/lib/python3.11/site-packages/hapair/agent.py" in listed
    # Compiled on the director by the postinst, from the package's own sources.
    assert list(Path("/opt/hapair/lib/python3.11/site-packages/hapair").glob("__pycache__/*.pyc"))


def test_the_installed_check_takes_the_example_once_its_key_exists(installed: Path) -> None:
    config = Path("/etc/hapair/hapair.toml")
    config.write_bytes(Path("/etc/hapair/hapair.toml.example").read_bytes())
    key = Path("/etc/hapair/authkey")
    try:
        missing = subprocess.run(
            ["/usr/bin/hapair", "check", "-c", str(config)], capture_output=True, text=True
        )
        assert missing.returncode == 2 and "authkey" in missing.stdout, missing.stdout
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        done = subprocess.run(
            ["/usr/bin/hapair", "check", "-c", str(config)], capture_output=True, text=True
        )
        assert (done.returncode, done.stdout) == (0, "ok\n"), done.stdout + done.stderr
    finally:
        config.unlink()
        key.unlink(missing_ok=True)


def test_two_directors_running_the_installed_hapair_fail_over(
    installed: Path, lab_factory: Callable[..., Lab]
) -> None:
    lab = lab_factory()
    for director in lab.dirs:
        director.program = "/usr/bin/hapair"
    started(lab)
    dir1, dir2 = lab.dirs
    assert dir1.proc is not None
    maps = Path(f"/proc/{dir1.proc.pid}/maps").read_text()
    assert "/opt/hapair/lib/python3.11/site-packages/pydantic_core" in maps  # the package's
    for ifname in ("eth0", "eth1"):
        dir1.ns.ip("link", "set", ifname, "down")
    dir1.signal(signal.SIGKILL)
    wait_for(lambda: dir2.holds_vip() and dir2.state() == "MASTER", 15)
    wait_for(lambda: lab.client_mac_for_vip() == dir2.mac(), 5)


def test_a_removal_keeps_the_operators_config(installed: Path) -> None:
    config = Path("/etc/hapair/hapair.toml")
    config.write_text("# the operator's\n")
    try:
        done = apt("remove", "hapair")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not Path("/usr/bin/hapair").exists()
        assert not Path("/opt/hapair/lib/python3.11/site-packages/hapair").exists()
        assert config.read_text() == "# the operator's\n"
        assert Path("/etc/hapair/hapair.toml.example").exists()  # a conffile stays too
        status = sh("dpkg-query", "-W", "-f=${Status}", "hapair").stdout
        assert status == "deinstall ok config-files", status
    finally:
        config.unlink(missing_ok=True)
