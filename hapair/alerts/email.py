"""The email channel: one message per alert over SMTP (aiosmtplib), STARTTLS and login
as configured. Raises on any failure; the caller keeps the alert and retries."""

from __future__ import annotations

import email.policy
import email.utils
from email.message import EmailMessage

import aiosmtplib

from hapair.alerts.policy import Alert
from hapair.config.model import Email

SMTP_TIMEOUT = 30.0  # seconds for the whole conversation
SUBJECT_MAX = 200  # characters; the whole summary is in the body
# Lines up to RFC 5322's limit: a folded Subject would start with a space, not "[hapair]".
POLICY = email.policy.SMTP.clone(max_line_length=998)


def message_of(cfg: Email, alert: Alert) -> EmailMessage:
    msg = EmailMessage(policy=POLICY)
    msg["From"] = cfg.from_
    msg["To"] = ", ".join(cfg.to)
    subject = f"[hapair] {alert.title}"
    msg["Subject"] = subject if len(subject) <= SUBJECT_MAX else subject[: SUBJECT_MAX - 3] + "..."
    msg["Date"] = email.utils.formatdate(alert.time, localtime=True)
    # The same id on every retry: a mail system or a reader can spot a second copy.
    msg["Message-ID"] = f"<{alert.id}@{cfg.from_.rpartition('@')[2]}>"
    msg["X-Hapair-Alert-Id"] = alert.id
    msg["X-Hapair-Severity"] = alert.severity
    lines = [
        alert.summary,
        "",
        f"node:     {alert.node}",
        f"event:    {alert.event}",
        f"severity: {alert.severity}",
        f"time:     {email.utils.formatdate(alert.time, localtime=True)}",
        *(f"{key + ':':<9} {value}" for key, value in sorted(alert.details.items())),
        f"alert id: {alert.id}",
    ]
    msg.set_content("\n".join(lines) + "\n")
    return msg


class EmailChannel:
    name = "email"

    def __init__(self, cfg: Email) -> None:
        self.cfg = cfg

    async def send(self, alert: Alert) -> None:
        cfg = self.cfg
        password = None
        if cfg.password_file is not None:
            # Read at each send: a rotated password needs no reload.
            password = cfg.password_file.read_text().rstrip("\r\n")
        await aiosmtplib.send(
            message_of(cfg, alert).as_bytes(),  # as is: aiosmtplib would fold at 78
            sender=cfg.from_,
            recipients=cfg.to,
            hostname=cfg.smtp.host,
            port=cfg.smtp.port,
            start_tls=cfg.starttls,  # False means never, not "if offered"
            username=cfg.username,
            password=password,
            timeout=SMTP_TIMEOUT,
        )

    async def close(self) -> None:
        pass
