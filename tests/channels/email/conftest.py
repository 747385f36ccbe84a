"""Email test fixtures: a throwaway Dovecot (IMAP) for the session, a fresh mail account per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

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
