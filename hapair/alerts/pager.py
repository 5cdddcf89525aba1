"""The pager channel: each alert as a JSON POST (aiohttp). Accepted means a 2xx answer
within `timeout`; anything else raises and the caller retries. The `id` field and the
Idempotency-Key header let the receiver drop a copy it already has."""

from __future__ import annotations

from typing import Any

import aiohttp

from hapair.alerts.policy import Alert
from hapair.config.model import Pager


class PagerError(Exception):
    pass


def payload_of(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "event": alert.event,
        "node": alert.node,
        "severity": alert.severity,
        "summary": alert.summary,
        "time": alert.time,
        "subject": alert.subject,
        "suppressed": alert.suppressed,
        "details": alert.details,
    }


class PagerChannel:
    name = "pager"

    def __init__(self, cfg: Pager) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None

    async def send(self, alert: Alert) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
                headers={"User-Agent": "hapair"},
            )
        async with self._session.post(
            self.cfg.url, json=payload_of(alert), headers={"Idempotency-Key": alert.id}
        ) as response:
            if not 200 <= response.status < 300:
                raise PagerError(f"{self.cfg.url} answered HTTP {response.status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
