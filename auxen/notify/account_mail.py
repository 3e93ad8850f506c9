"""Email about a person's own account, before it belongs to any workspace: the link that
confirms an address, and the note that someone tried to sign up with an address that
already has an account.

These do not go through the notification queue: the queue belongs to workspaces (and
webhooks, which must never see these), and a confirmation link is a credential that is
never written to the database. They are sent after the answer to the request that
caused them (so answer times do not depend on which email it is), retried a few times,
and logged without their text. A lost one costs the person a click: the account page and
the sign-up form send another.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiosmtplib

from auxen.config import Settings
from auxen.notify.mail import email_enabled, send_email

log = logging.getLogger(__name__)

ATTEMPTS = 3
FIRST_WAIT_S = 2.0


@dataclass(frozen=True)
class AccountMail:
    to: str
    subject: str
    text: str = ""

    def __repr__(self) -> str:  # the text may hold a confirmation link
        return f"AccountMail(to={self.to!r}, subject={self.subject!r})"


def confirm_address(to: str, link: str, *, hours: int) -> AccountMail:
    return AccountMail(
        to,
        "[Auxen] Confirm your email address",
        "Someone (we hope you) created an Auxen account with this address, or asked for a\n"
        "new confirmation link. To confirm that this address is yours, open:\n\n"
        f"{link}\n\n"
        f"The link works for {hours} hours. Until the address is confirmed the account cannot\n"
        "buy credits, invite anyone, make API keys or connect an agent.\n\n"
        "If this was not you, ignore this email: nothing is confirmed unless you open the\n"
        "link and press the button on its page.\n",
    )


def address_taken(to: str, base_url: str) -> AccountMail:
    return AccountMail(
        to,
        "[Auxen] Someone tried to sign up with your address",
        "Someone tried to create an Auxen account with this email address, which already\n"
        "has one. If it was you, sign in instead:\n\n"
        f"{base_url}/login\n\n"
        "If it was not you, you need do nothing: no account was created and nothing about\n"
        "your account changed.\n",
    )


async def send_account_mail(settings: Settings, mail: AccountMail) -> bool:
    """Send `mail`, trying a few times; whether it went. Never raises."""
    if not email_enabled(settings):
        log.warning("account email to one address not sent: no AUXEN_SMTP_HOST is set")
        return False
    wait = FIRST_WAIT_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            await send_email(settings, mail.to, mail.subject, mail.text)
            return True
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning(
                "account email (attempt %d of %d) failed: %s", attempt, ATTEMPTS,
                type(exc).__name__,
            )  # fmt: skip
        if attempt < ATTEMPTS:
            await asyncio.sleep(wait)
            wait *= 2
    return False
