"""The services side's lifecycle around a warm-up, with the table keeper stood in for (its
sync daemon and connection count need a kernel with IPVS: the kernel layer has those)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import samples

from hapair.alerts import Alerter
from hapair.config import validate
from hapair.services import Services

pytestmark = pytest.mark.unit


class Keeper:
    """A backup sync daemon whose connection count never settles."""

    sync_role = "backup"

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.counting = False  # inside connections(), until it returns or is cut off

    async def connections(self) -> int:
        self.counting = True
        try:
            self.asked.set()
            await asyncio.Event().wait()
            return 0
        finally:
            self.counting = False

    def stop_sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_close_waits_for_the_warm_up_it_cuts_short(tmp_path: Path) -> None:
    key = tmp_path / "authkey"
    key.write_bytes(bytes(32))
    key.chmod(0o600)
    cfg = validate(
        samples.config(key, sync={"interface": "eth1", "warmup": "30s"})
        | {"node": {"name": "lvs1", "priority": 150, "state_dir": str(tmp_path)}}
    )

    async def main() -> None:
        services = Services(cfg, Alerter("lvs1", cfg.alerts, tmp_path))
        keeper = Keeper()
        services.keeper = keeper  # type: ignore[assignment]
        learned: list[str] = []
        reason = services.warm_up(True, lambda task, why: learned.append(why))
        assert reason is not None and "connections" in reason
        await asyncio.wait_for(keeper.asked.wait(), 5)
        assert keeper.counting
        await services.close()
        assert not keeper.counting, "close() returned with the warm-up still running"
        assert learned == []

    asyncio.run(main())
