"""The IMAP poller against a real Dovecot: what it takes, what it marks, where it keeps its place."""

from __future__ import annotations

import asyncio
import imaplib
import re
import ssl
from collections.abc import Iterator
from typing import Any

import aioimaplib
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from channels.base import ConfigurationError, MalformedPayload
from channels.email.imap import (
    MAX_ATTEMPTS,
    REJECTED_KEYWORD,
    Accepted,
    ImapConfig,
    ImapError,
    ImapPoller,
    ImapState,
    Rejected,
    clean_imap_settings,
    encode_mailbox,
)
from gateway.imap_polling import InboxStateStore
from inbox.models import Inbox
from parley.db import Database
from tests.channels.email.conftest import ImapAccount
from tests.conftest import eventually, make_tenant


def email(n: int, *, size: int = 0) -> bytes:
    padding = ("x" * 70 + "\r\n") * (size // 72)
    return (
        f"Message-ID: <imap-{n}@example.com>\r\nFrom: Customer {n} <customer{n}@example.com>\r\n"
        f"To: support@parley.test\r\nSubject: Question {n}\r\n\r\nHello, this is question {n}.\r\n{padding}"
    ).encode()


class Mailbox:
    """The customer's side of the mailbox: Python's imaplib, as another mail client would be."""

    def __init__(self, account: ImapAccount) -> None:
        self.imap = imaplib.IMAP4(account.host, account.server.imap_port)
        self.imap.login(account.username, account.password)

    def append(self, raw: bytes, folder: str = "INBOX", *, seen: bool = False) -> None:
        status, _ = self.imap.append(encode_mailbox(folder), r"(\Seen)" if seen else None, None, raw)
        assert status == "OK"

    def messages(self, folder: str = "INBOX") -> list[tuple[str, set[str]]]:
        """(Subject, flags) of each message in the folder, in UID order."""
        status, _ = self.imap.select(encode_mailbox(folder))
        assert status == "OK", folder
        _, data = self.imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        found = []
        for item in data:
            if isinstance(item, tuple):
                flags = set(re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split())  # type: ignore[union-attr]
                subject = item[1].decode().strip().removeprefix("Subject: ")
                found.append((subject, flags))
        self.imap.close()
        return found

    def folders(self) -> list[str]:
        _, data = self.imap.list()
        return [line.decode().rsplit(' "/" ', 1)[-1].strip('"') for line in data if isinstance(line, bytes)]

    def recreate(self, folder: str) -> None:
        assert self.imap.delete(encode_mailbox(folder))[0] == "OK"
        assert self.imap.create(encode_mailbox(folder))[0] == "OK"

    def close(self) -> None:
        self.imap.logout()


@pytest.fixture
def mailbox(imap_account: ImapAccount) -> Iterator[Mailbox]:
    box = Mailbox(imap_account)
    yield box
    box.close()


class RecordingIntake:
    """Stands in for the email intake: records what it was handed, answers as told."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.answer: Any = Accepted()

    async def __call__(self, raw: bytes) -> Accepted | Rejected:
        self.received.append(raw)
        answer = self.answer(raw) if callable(self.answer) else self.answer
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    def subjects(self) -> list[str]:
        return [re.search(rb"Subject: ([^\r\n]*)", raw).group(1).decode() for raw in self.received]  # type: ignore[union-attr]


async def email_inbox(db: Database) -> int:
    tenant = await make_tenant(db, "acme")
    async with db.transaction() as session:
        inbox = Inbox(tenant_id=tenant.tenant_id, name="Support mail", channel="email", settings={})
        session.add(inbox)
        await session.flush()
        return inbox.id


def poller(
    account: ImapAccount, db: Database, inbox_id: int, intake: RecordingIntake, **settings: Any
) -> ImapPoller:
    config = ImapConfig.from_settings(
        {"imap": account.settings(**settings)}, {"imap_password": account.password}
    )
    assert config is not None
    return ImapPoller(config, intake, InboxStateStore(db, inbox_id), name=f"inbox {inbox_id}")


async def test_a_poll_takes_new_mail_once_and_marks_it_seen(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    intake = RecordingIntake()
    imap = poller(imap_account, db, inbox_id, intake)
    for n in (1, 2, 3):
        mailbox.append(email(n))

    result = await imap.poll_once()

    assert (result.accepted, result.rejected) == (3, 0)
    assert intake.subjects() == ["Question 1", "Question 2", "Question 3"]
    assert intake.received[0] == email(1)  # the bytes exactly as the server holds them
    assert all(r"\Seen" in flags for _, flags in mailbox.messages())

    assert (await imap.poll_once()).accepted == 0  # nothing new: nothing fetched again
    assert len(intake.received) == 3

    mailbox.append(email(4))
    assert (await imap.poll_once()).accepted == 1
    assert intake.subjects()[-1] == "Question 4"


async def test_the_place_in_the_folder_is_kept_in_the_database(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    async with db.sessionmaker() as session:
        updated_before = (
            await session.execute(select(Inbox.updated_at).where(Inbox.id == inbox_id))
        ).scalar()
    mailbox.append(email(1))
    mailbox.append(email(2))
    result = await poller(imap_account, db, inbox_id, RecordingIntake()).poll_once()

    state = await InboxStateStore(db, inbox_id).load()
    assert state == ImapState("INBOX", result.uidvalidity or 0, 2)
    async with db.sessionmaker() as session:
        row = (await session.execute(select(Inbox).where(Inbox.id == inbox_id))).scalar_one()
    assert row.updated_at == updated_before  # the configuration did not change: cached adapters stay

    # A new poller (a restarted process) starts where the last one stopped, even for mail a person
    # left unread in their own client.
    fresh = RecordingIntake()
    mailbox.append(email(3))
    await poller(imap_account, db, inbox_id, fresh).poll_once()
    assert fresh.subjects() == ["Question 3"]


async def test_a_mailbox_is_taken_from_its_unseen_mail_in_batches_then_everything_new(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("channels.email.imap.BATCH_SIZE", 2)
    inbox_id = await email_inbox(db)
    intake = RecordingIntake()
    imap = poller(imap_account, db, inbox_id, intake)
    mailbox.append(email(1), seen=True)  # read long ago, before Parley polled this mailbox
    for n in (2, 3, 4):
        mailbox.append(email(n))
    mailbox.append(email(5), seen=True)

    assert (await imap.poll_once()).accepted == 2
    assert (await imap.poll_once()).accepted == 1
    assert intake.subjects() == ["Question 2", "Question 3", "Question 4"]
    assert (await imap.poll_once()).accepted == 0  # the old read mail stays out

    mailbox.append(email(6), seen=True)  # new mail a colleague read in their own client meanwhile
    assert (await imap.poll_once()).accepted == 1
    assert intake.subjects()[-1] == "Question 6"


async def test_a_recreated_folder_has_a_new_uidvalidity_and_is_taken_from_its_unseen_mail(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    intake = RecordingIntake()
    imap = poller(imap_account, db, inbox_id, intake, folder="Support")
    mailbox.imap.create("Support")
    for n in (1, 2):
        mailbox.append(email(n), "Support")
    first = await imap.poll_once()

    mailbox.recreate("Support")  # UIDs start again at 1: the stored last UID means nothing now
    mailbox.append(email(5), "Support")
    second = await imap.poll_once()

    assert second.uidvalidity != first.uidvalidity
    assert second.accepted == 1
    assert intake.subjects() == ["Question 1", "Question 2", "Question 5"]
    assert await InboxStateStore(db, inbox_id).load() == ImapState("Support", second.uidvalidity or 0, 1)


async def test_stored_mail_is_moved_to_the_processed_folder_created_on_first_use(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    folder = "Parley/Erledigt ✓ & Co"  # non-ASCII and '&': modified UTF-7 on the wire
    imap = poller(imap_account, db, inbox_id, RecordingIntake(), processed_folder=folder)
    mailbox.append(email(1))
    mailbox.append(email(2))

    assert (await imap.poll_once()).accepted == 2

    assert mailbox.messages("INBOX") == []
    assert [subject for subject, _ in mailbox.messages(folder)] == ["Question 1", "Question 2"]
    assert encode_mailbox(folder).strip('"') in mailbox.folders()


async def test_a_server_without_move_gets_copy_and_expunge(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = aioimaplib.IMAP4.has_capability
    monkeypatch.setattr(
        aioimaplib.IMAP4, "has_capability", lambda self, name: name != "MOVE" and real(self, name)
    )
    inbox_id = await email_inbox(db)
    imap = poller(imap_account, db, inbox_id, RecordingIntake(), processed_folder="Done")
    mailbox.append(email(1))
    mailbox.append(email(2))

    assert (await imap.poll_once()).accepted == 2

    assert mailbox.messages("INBOX") == []  # copied, flagged \Deleted and expunged
    assert [subject for subject, _ in mailbox.messages("Done")] == ["Question 1", "Question 2"]


async def test_a_rejected_message_is_flagged_moved_aside_and_never_retried(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    intake = RecordingIntake()
    intake.answer = lambda raw: Rejected("no From") if b"Question 2" in raw else Accepted()
    imap = poller(imap_account, db, inbox_id, intake, failed_folder="Parley rejected")
    for n in (1, 2, 3):
        mailbox.append(email(n))

    result = await imap.poll_once()

    assert (result.accepted, result.rejected) == (2, 1)
    assert [subject for subject, _ in mailbox.messages("INBOX")] == ["Question 1", "Question 3"]
    [(subject, flags)] = mailbox.messages("Parley rejected")
    assert subject == "Question 2"
    assert {r"\Flagged", REJECTED_KEYWORD} <= flags
    assert r"\Seen" not in flags  # left for a person to look at

    await imap.poll_once()
    assert len(intake.received) == 3


async def test_a_message_the_parser_refuses_is_rejected_in_place_without_a_failed_folder(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    intake = RecordingIntake()
    intake.answer = MalformedPayload("not an email")
    imap = poller(imap_account, db, inbox_id, intake)
    mailbox.append(email(1))

    assert (await imap.poll_once()).rejected == 1
    [(_, flags)] = mailbox.messages()
    assert r"\Flagged" in flags
    await imap.poll_once()
    assert len(intake.received) == 1


async def test_an_oversized_message_is_rejected_without_being_downloaded(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    intake = RecordingIntake()
    imap = poller(imap_account, db, inbox_id, intake, max_message_bytes=2048)
    mailbox.append(email(1, size=4096))
    mailbox.append(email(2))

    result = await imap.poll_once()

    assert (result.accepted, result.rejected) == (1, 1)
    assert intake.subjects() == ["Question 2"]
    flags = dict(mailbox.messages())
    assert r"\Flagged" in flags["Question 1"]


async def test_a_database_outage_leaves_the_message_for_the_next_poll(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    intake = RecordingIntake()
    imap = poller(imap_account, db, inbox_id, intake)
    mailbox.append(email(1))
    mailbox.append(email(2))

    intake.answer = OperationalError("INSERT", None, Exception("connection refused"))
    for _ in range(MAX_ATTEMPTS + 1):  # an outage is never counted against the message
        with pytest.raises(OperationalError):
            await imap.poll_once()
    assert all(r"\Seen" not in flags for _, flags in mailbox.messages())
    assert await InboxStateStore(db, inbox_id).load() is None

    intake.answer = Accepted()
    assert (await imap.poll_once()).accepted == 2
    assert intake.subjects()[-2:] == ["Question 1", "Question 2"]


async def test_a_message_that_keeps_crashing_the_intake_is_given_up_after_a_few_polls(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    intake = RecordingIntake()
    intake.answer = lambda raw: RuntimeError("bug") if b"Question 1" in raw else Accepted()
    imap = poller(imap_account, db, inbox_id, intake)
    mailbox.append(email(1))
    mailbox.append(email(2))

    results = [await imap.poll_once() for _ in range(MAX_ATTEMPTS)]

    # Until it is given up on, the crashing message holds back the ones after it (order is kept).
    assert [(r.accepted, r.rejected) for r in results] == [(0, 0)] * (MAX_ATTEMPTS - 1) + [(1, 1)]
    flags = dict(mailbox.messages())
    assert r"\Flagged" in flags["Question 1"] and r"\Seen" in flags["Question 2"]


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_tls_and_starttls_check_the_servers_certificate(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox, security: str
) -> None:
    inbox_id = await email_inbox(db)
    server = imap_account.server
    port = server.imaps_port if security == "tls" else server.imap_port
    intake = RecordingIntake()
    trusted = poller(
        imap_account,
        db,
        inbox_id,
        intake,
        security=security,
        port=port,
        ca_certificate=server.cert_path.read_text(),
    )
    mailbox.append(email(1))
    assert (await trusted.poll_once()).accepted == 1

    untrusted = poller(imap_account, db, inbox_id, intake, security=security, port=port)
    with pytest.raises(ImapError, match="CERTIFICATE_VERIFY_FAILED"):
        await untrusted.poll_once()


async def test_a_wrong_password_is_an_imap_error_naming_the_login(
    db: Database, imap_account: ImapAccount
) -> None:
    config = ImapConfig.from_settings({"imap": imap_account.settings()}, {"imap_password": "wrong"})
    assert config is not None
    imap = ImapPoller(config, RecordingIntake(), InboxStateStore(db, await email_inbox(db)))
    with pytest.raises(ImapError, match=f"login refused for {imap_account.username}"):
        await imap.poll_once()


async def test_run_keeps_polling_through_failures_until_stopped(
    db: Database, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    inbox_id = await email_inbox(db)
    intake = RecordingIntake()
    failures = [OperationalError("INSERT", None, Exception("database restarting"))] * 2
    intake.answer = lambda raw: failures.pop() if failures else Accepted()
    imap = poller(imap_account, db, inbox_id, intake)
    imap.max_backoff = 0.2
    stop = asyncio.Event()
    task = asyncio.create_task(imap.run(stop))
    mailbox.append(email(1))
    try:
        await eventually(lambda: "Question 1" in [s for s, f in mailbox.messages() if r"\Seen" in f], 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert intake.subjects() == ["Question 1"] * 3  # two failed attempts, then stored


@pytest.mark.parametrize(
    ("imap", "secrets", "error"),
    [
        ("imap.example.com", {"imap_password": "pw"}, "imap must be an object"),
        ({"username": "u"}, {"imap_password": "pw"}, "host is required"),
        ({"host": "h", "username": "u"}, {}, "imap_password is required"),
        ({"host": "h", "username": "u", "security": "ssl3"}, {"imap_password": "pw"}, "imap.security"),
        ({"host": "h", "username": "u", "port": 0}, {"imap_password": "pw"}, "imap.port"),
        ({"host": "h", "username": "u", "poll_interval": 0}, {"imap_password": "pw"}, "imap.poll_interval"),
        ({"host": "h", "username": "u", "processed_folder": "INBOX"}, {"imap_password": "pw"}, "differ"),
        ({"host": "h", "username": "u", "folder": "a\r\nb"}, {"imap_password": "pw"}, "folder name"),
        ({"host": "h", "username": "u", "ca_certificate": "junk"}, {"imap_password": "pw"}, "PEM"),
    ],
)
def test_bad_imap_settings_are_refused_naming_the_field(
    imap: Any, secrets: dict[str, str], error: str
) -> None:
    with pytest.raises(ConfigurationError, match=error):
        clean_imap_settings({"imap": imap}, secrets)


def test_imap_settings_get_defaults_and_an_inbox_without_them_does_not_poll() -> None:
    cleaned, secrets = clean_imap_settings(
        {"imap": {"host": "imap.example.com", "username": "support@example.com"}}, {"imap_password": "pw"}
    )
    assert cleaned == {
        "host": "imap.example.com",
        "username": "support@example.com",
        "security": "tls",
        "port": 993,
        "folder": "INBOX",
        "poll_interval": 60.0,
        "timeout": 30.0,
        "max_message_bytes": 25 * 1024 * 1024,
    }
    assert secrets == {"imap_password": "pw"}
    assert ImapConfig.from_settings({}, {}) is None
    assert "pw" not in repr(ImapConfig.from_settings({"imap": cleaned}, secrets))


def test_mailbox_names_are_quoted_and_modified_utf7() -> None:
    assert encode_mailbox("INBOX") == '"INBOX"'
    assert encode_mailbox('Say "hi"') == '"Say \\"hi\\""'
    assert encode_mailbox("Tom & Jerry") == '"Tom &- Jerry"'
    assert encode_mailbox("Entwürfe") == '"Entw&APw-rfe"'  # RFC 3501's own example style
    assert encode_mailbox("台北") == '"&U,BTFw-"'  # RFC 3501 5.1.3's example


def test_the_ssl_context_trusts_the_given_certificate_only() -> None:
    config = ImapConfig(host="h", username="u", password="p")
    assert config.ssl_context().verify_mode == ssl.CERT_REQUIRED
