"""Test layers and shared fixtures.

Layers are markers: `unit` (no root), `netns` (root, namespaces on the host
kernel), `kernel` (a kernel with IPVS: inside the QEMU guest of
scripts/run-in-kernel), `systemd` (systemd as init: a director or a lab VM, not run by
scripts/test, whose machines have none). A test whose layer cannot run here is skipped, unless
HAPAIR_REQUIRE_LAYERS=1 (set by scripts/test), which turns such a skip into an
error so that CI never passes on tests that did not run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pair import *  # noqa: F403  (the director-pair fixture)
from topology import *  # noqa: F403  (the namespace fixtures)

LAYERS = ("unit", "netns", "kernel", "systemd")


def _why_not(layer: str) -> str | None:
    if layer == "unit":
        return None
    if os.geteuid() != 0:
        return f"{layer} tests need root"
    if shutil.which("ip") is None:
        return f"{layer} tests need iproute2"
    if layer == "kernel" and not (
        os.environ.get("HAPAIR_IN_GUEST") == "1" and Path("/proc/net/ip_vs").exists()
    ):
        return "kernel tests run inside the guest: scripts/run-in-kernel pytest -m kernel"
    if layer == "systemd" and not Path("/run/systemd/system").is_dir():
        return "systemd tests need systemd as init (a director, a Vagrant VM)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    strict = os.environ.get("HAPAIR_REQUIRE_LAYERS") == "1"
    for item in items:
        layers = [m.name for m in item.iter_markers() if m.name in LAYERS]
        if len(layers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: mark it with exactly one of {LAYERS}")
        reason = _why_not(layers[0])
        if reason is None:
            continue
        if strict:
            item.add_marker(pytest.mark.usefixtures("_layer_unavailable"))
            item.user_properties.append(("layer_unavailable", reason))
        else:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A valid auth key: 32 random bytes, mode 0600."""
    path = tmp_path / "authkey"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


@pytest.fixture
def etc(key_file: Path) -> Path:
    """A config folder with a valid `authkey` in it (key_file): the base_dir of a config
    that names its key file `authkey`, as the examples in etc/ do."""
    return key_file.parent


@pytest.fixture
def _layer_unavailable(request: pytest.FixtureRequest) -> None:
    reason = dict(request.node.user_properties)["layer_unavailable"]
    pytest.fail(f"HAPAIR_REQUIRE_LAYERS=1 but this layer cannot run here: {reason}")
