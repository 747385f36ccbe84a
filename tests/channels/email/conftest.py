"""Email test fixtures: a throwaway Dovecot (IMAP) for the session, a fresh mail account per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from channels.email.channel import Email
from inbox.models import Inbox
from parley.crypto import SecretBox
from parley.db import Database
from tests.conftest import SECRET_KEY
from tests.support.dovecot import DovecotServer

_ACCOUNTS = itertools.count(1)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """A Dovecot IMAP server on free loopback ports, its own config, users and maildirs under /tmp."""
    server = DovecotServer.start("correct-horse-battery")
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True, slots=True)
class ImapAccount:
    server: DovecotServer
    username: str
    password: str

    @property
    def host(self) -> str:
        return self.server.host

    def settings(self, **overrides: object) -> dict[str, object]:
        """The inbox's `imap` settings for this account, plain IMAP on loopback unless overridden."""
        return {
            "host": self.server.host,
            "port": self.server.imap_port,
            "security": "none",
            "username": self.username,
            "poll_interval": 1,
            "timeout": 10,
            **overrides,
        }


@pytest.fixture
def imap_account(dovecot: DovecotServer) -> ImapAccount:
    """A new, empty mailbox on the shared Dovecot."""
    return ImapAccount(dovecot, f"support{next(_ACCOUNTS)}@parley.test", dovecot.password)


async def make_email_inbox(
    db: Database,
    tenant_id: int,
    *,
    addresses: Sequence[str] = ("support@parley.test",),
    settings: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> int:
    """An email inbox stored as the API would store it (settings and secrets cleaned by the channel)."""
    cleaned, cleaned_secrets = Email.validate_config(
        {"addresses": list(addresses), **(settings or {})}, {"reply_token_key": "k" * 32, **(secrets or {})}
    )
    async with db.transaction() as session:
        inbox = Inbox(
            tenant_id=tenant_id,
            name="Support mail",
            channel="email",
            settings=cleaned,
            secrets_encrypted=SecretBox(SECRET_KEY).seal(cleaned_secrets),
        )
        session.add(inbox)
        await session.flush()
        return inbox.id
