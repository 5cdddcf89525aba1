"""The table keeper's error paths that a real kernel will not produce on demand: a sync
daemon that refuses to stop must not keep the others running."""

from __future__ import annotations

import pytest

from hapair.config.model import Sync
from hapair.ipvs.driver import IpvsError, SyncDaemon, SyncState
from hapair.ipvs.keeper import TableKeeper

pytestmark = pytest.mark.unit


class Daemons:
    """Stands in for the driver's sync-daemon calls: the master's stop is refused."""

    def __init__(self) -> None:
        self.running = {SyncState.MASTER, SyncState.BACKUP}

    def list_daemons(self) -> list[SyncDaemon]:
        return [SyncDaemon(state, "eth1", 7) for state in sorted(self.running)]

    def stop_daemon(self, state: SyncState) -> None:
        if state is SyncState.MASTER:
            raise IpvsError("stopping master sync daemon: Interrupted system call", 4)
        self.running.discard(state)


def test_stop_sync_tries_every_daemon(caplog: pytest.LogCaptureFixture) -> None:
    keeper = TableKeeper(Sync(interface="eth1"), cluster_id=7)
    keeper.driver = Daemons()  # type: ignore[assignment]
    keeper.available = True
    keeper.sync_role = "master"
    keeper.stop_sync()
    assert keeper.driver.running == {SyncState.MASTER}  # type: ignore[attr-defined]
    assert "stopping master sync daemon" in caplog.text
    assert keeper.sync_role is None
