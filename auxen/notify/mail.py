"""Email over SMTP with aiosmtplib: host, port, STARTTLS or implicit TLS and credentials
from the environment (`AUXEN_SMTP_*`). Without `AUXEN_SMTP_HOST` the channel is off."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib

from auxen.config import Settings


def email_enabled(settings: Settings) -> bool:
    return bool(settings.smtp_host)


async def send_email(settings: Settings, to: str, subject: str, text: str) -> None:
    """Send one plain-text message; raises aiosmtplib.SMTPException or OSError."""
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="auxen")
    message.set_content(text)
    await aiosmtplib.send(
        message,
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        start_tls=settings.smtp_starttls and not settings.smtp_tls,
        use_tls=settings.smtp_tls,
        timeout=settings.smtp_timeout_s,
    )
