"""Real receivers for alerts: an SMTP server (aiosmtpd) and an HTTP pager endpoint (aiohttp).

Each keeps every copy it was handed and, like a real receiver should, each alert once by
its id. Used in-process by the unit tests; `python -m lab.alert_sinks HOST SMTP_PORT
HTTP_PORT OUT` runs both (in a namespace) and appends each accepted alert to OUT as a
JSON line: {"channel", "id", "event", "node", "severity", "summary"}.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import ssl
import sys
from collections import Counter
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["PagerSink", "SmtpSink"]

Record = Callable[[dict[str, Any]], None]


class SmtpSink:
    """An SMTP server on `host`; with `tls` it offers STARTTLS, with `login` it requires
    AUTH (over TLS) as that (user, password)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        login: tuple[str, str] | None = None,
        on_alert: Record | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.tls, self.login, self.on_alert = tls, login, on_alert
        self.messages: list[EmailMessage] = []
        self.copies: Counter[str] = Counter()  # alert id -> copies received
        self.alerts: dict[str, EmailMessage] = {}  # alert id -> first copy
        self.sessions: list[Session] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _protocol(self) -> SMTP:
        return SMTP(
            self,
            hostname="sink.test",
            tls_context=self.tls,
            require_starttls=self.tls is not None,
            auth_required=self.login is not None,
            auth_require_tls=True,
            authenticator=self._authenticate if self.login else None,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.login is not None
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.login[0].encode(),
            self.login[1].encode(),
        )
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 itself

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.sessions.append(session)
        alert_id = str(msg["X-Hapair-Alert-Id"])
        self.copies[alert_id] += 1
        if alert_id not in self.alerts:
            self.alerts[alert_id] = msg
            if self.on_alert is not None:
                body = msg.get_body(("plain",))
                self.on_alert(
                    {
                        "channel": "email",
                        "id": alert_id,
                        "subject": str(msg["Subject"]),
                        "body": body.get_content() if body is not None else "",
                    }
                )
        return "250 OK"


class PagerSink:
    """An HTTP endpoint taking JSON POSTs at /alert; answers `status` (set 503 to refuse)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, on_alert: Record | None = None
    ) -> None:
        self.host, self.port, self.on_alert = host, port, on_alert
        self.status = 200
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []  # (body, headers)
        self.copies: Counter[str] = Counter()
        self.alerts: dict[str, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/alert"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alert", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((body, dict(request.headers)))
        if self.status != 200:
            return web.Response(status=self.status)
        self.copies[body["id"]] += 1
        if body["id"] not in self.alerts:
            self.alerts[body["id"]] = body
            if self.on_alert is not None:
                self.on_alert({"channel": "pager", **body})
        return web.json_response({"ok": True})


async def _serve(host: str, smtp_port: int, http_port: int, out: str) -> None:
    def record(item: dict[str, Any]) -> None:
        with open(out, "a") as f:
            f.write(json.dumps(item) + "\n")

    smtp = SmtpSink(host, smtp_port, on_alert=record)
    pager = PagerSink(host, http_port, on_alert=record)
    await smtp.start()
    await pager.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    host, smtp_port, http_port, out = sys.argv[1:5]
    asyncio.run(_serve(host, int(smtp_port), int(http_port), out))
