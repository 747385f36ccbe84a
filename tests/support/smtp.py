"""Email test helpers: a loopback smarthost (aiosmtpd) that records what it is sent, and email inboxes."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from inbox.models import Inbox
from parley.crypto import SecretBox
from parley.db import Database

SMTP_USER = "parley"
SMTP_PASSWORD = "smarthost-password"
REPLY_TOKEN_KEY = "reply-token-key-for-tests-0123456789"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)
    # What DATA and RCPT answer; tests set these to make the smarthost refuse.
    data_reply: str = "250 2.0.0 Ok: queued"
    rcpt_reply: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply.startswith("250"):
            raw = envelope.original_content or b""
            with self.lock:
                self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(raw)))
        return self.data_reply


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


class Smarthost:
    """A real SMTP server on loopback (in its own thread, as aiosmtpd's Controller runs it)."""

    def __init__(self, port: int) -> None:
        self.handler = _Handler()
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=port,
            authenticator=_authenticate,
            auth_require_tls=False,
            auth_required=True,  # over plain TCP: loopback only, and the warning says so
        )
        self.port = port

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def settings(self) -> dict[str, Any]:
        """The inbox's `smtp` settings for this smarthost."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "security": "none",
            "username": SMTP_USER,
            "timeout": 10,
        }


async def make_email_inbox(
    db: Database,
    tenant_id: int,
    *,
    addresses: tuple[str, ...] = ("support@parley.test",),
    smtp: Mapping[str, Any] | None = None,
    secret_key: str,
    name: str = "Support mail",
) -> int:
    """An email inbox receiving for `addresses`, sending through `smtp` (a Smarthost's settings)."""
    settings: dict[str, Any] = {"addresses": list(addresses), "from_name": "Acme Support"}
    secrets = {"reply_token_key": REPLY_TOKEN_KEY}
    if smtp is not None:
        settings["smtp"] = dict(smtp)
        secrets["smtp_password"] = SMTP_PASSWORD
    async with db.transaction() as session:
        inbox = Inbox(
            tenant_id=tenant_id,
            name=name,
            channel="email",
            settings=settings,
            secrets_encrypted=SecretBox(secret_key).seal(secrets),
        )
        session.add(inbox)
        await session.flush()
        return inbox.id
