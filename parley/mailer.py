"""Parley's own mail to its users: password resets, transcripts, mention notices.

Customer email goes through an email inbox (`channels/email`); this is the system's voice, sent
through `PARLEY_SMTP_URL` (`smtp://` with STARTTLS when offered, `smtps://` for implicit TLS,
credentials in the URL). Without it the message is logged, so a trial install still shows the link.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import unquote, urlsplit

import aiosmtplib

from parley.settings import Settings

logger = logging.getLogger(__name__)


class MailNotSent(Exception):
    """The smarthost refused the message or could not be reached."""


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    implicit_tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"PARLEY_SMTP_URL must look like smtp://user:pass@host:587, not {url!r}")
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 25),
            implicit_tls=implicit,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class Mailer:
    """Sends Parley's own messages; one per settings, shared by whoever needs it."""

    def __init__(self, settings: Settings, *, timeout: float = 15.0) -> None:
        self.sender = settings.mail_from
        self.target = SmtpTarget.parse(settings.smtp_url) if settings.smtp_url else None
        self.timeout = timeout

    def compose(self, to: str, subject: str, text: str, html: str | None = None) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain="parley.local")
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        """Send one message; MailNotSent if the smarthost refuses it or cannot be reached."""
        message = self.compose(to, subject, text, html)
        if self.target is None:
            logger.warning("PARLEY_SMTP_URL is not set; mail to %s not sent:\n%s\n\n%s", to, subject, text)
            return
        target = self.target
        try:
            await aiosmtplib.send(
                message,
                hostname=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                use_tls=target.implicit_tls,
                start_tls=None if not target.implicit_tls else False,
                timeout=self.timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as e:
            raise MailNotSent(f"mail to {to} not sent: {e}") from e
