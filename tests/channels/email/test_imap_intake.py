"""IMAP polling through the real intake: Dovecot → poller → accept_email → conversations."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import delete, select

from gateway.app import create_app
from gateway.email_intake import EmailIntake
from gateway.imap_polling import ImapPollers, imap_context
from inbox.models import Conversation, Inbox, Message
from inbox.runtime import InboxDirectory
from parley.crypto import SecretBox
from parley.db import Database
from parley.media import MediaStore
from parley.settings import Settings
from tests.channels.email.conftest import ImapAccount, make_email_inbox
from tests.channels.email.test_imap import Mailbox
from tests.conftest import SECRET_KEY, eventually, make_tenant

CORPUS = Path(__file__).parents[2] / "fixtures" / "email"
OUTCOMES = ("stored", "ignored", "rejected")


def mail(
    message_id: str, subject: str, text: str, *, sender: str = "ann@example.com", reply_to: str = ""
) -> bytes:
    threading = f"In-Reply-To: {reply_to}\r\nReferences: {reply_to}\r\n" if reply_to else ""
    return (
        f"Message-ID: {message_id}\r\nFrom: Ann <{sender}>\r\nTo: support@parley.test\r\n{threading}"
        f"Subject: {subject}\r\nDate: Tue, 03 Mar 2026 10:00:00 +0000\r\n\r\n{text}\r\n"
    ).encode()


class _Notifier:
    def notify(self) -> None:
        pass


@dataclass
class Polling:
    db: Database
    pollers: ImapPollers
    tenant_id: int
    inbox_id: int

    async def conversations(self) -> list[tuple[str | None, list[str]]]:
        """Each conversation's thread key with its messages' bodies, in order."""
        async with self.db.sessionmaker() as session:
            conversations = (await session.execute(select(Conversation).order_by(Conversation.id))).scalars()
            found = []
            for conversation in conversations:
                bodies = (
                    await session.execute(
                        select(Message.body)
                        .where(Message.conversation_id == conversation.id, Message.direction == "inbound")
                        .order_by(Message.id)
                    )
                ).scalars()
                found.append((conversation.thread_key, list(bodies)))
            return found


@pytest.fixture
def mailbox(imap_account: ImapAccount) -> Iterator[Mailbox]:
    box = Mailbox(imap_account)
    yield box
    box.close()


@pytest_asyncio.fixture
async def polling(db: Database, imap_account: ImapAccount, tmp_path: Path) -> AsyncIterator[Polling]:
    tenant = await make_tenant(db, "acme")
    inbox_id = await make_email_inbox(
        db,
        tenant.tenant_id,
        settings={"imap": imap_account.settings(failed_folder="Rejected")},
        secrets={"imap_password": imap_account.password},
    )
    directory = InboxDirectory(db, SecretBox(SECRET_KEY))
    intake = EmailIntake(db, directory, MediaStore(tmp_path / "media", 1024 * 1024), _Notifier())
    yield Polling(db, ImapPollers(intake, directory, rescan=0.2), tenant.tenant_id, inbox_id)
    await directory.close()


async def test_polled_mail_opens_threads_replies_join_them_and_machines_open_nothing(
    polling: Polling, mailbox: Mailbox
) -> None:
    mailbox.append(mail("<a1@example.com>", "Order 7", "Where is order 7?"))
    mailbox.append(mail("<a2@example.com>", "Re: Order 7", "Any news?", reply_to="<a1@example.com>"))
    mailbox.append(mail("<b1@example.com>", "Invoice", "Wrong invoice.", sender="bob@example.com"))
    mailbox.append((CORPUS / "auto_reply__auto_submitted.eml").read_bytes())
    mailbox.append((CORPUS / "invalid__missing_from.eml").read_bytes())

    counted = {
        o: REGISTRY.get_sample_value("parley_imap_messages_total", {"outcome": o}) or 0 for o in OUTCOMES
    }

    [result] = (await polling.pollers.poll_all_once()).values()

    assert not isinstance(result, Exception)
    for outcome, n in {"stored": 3, "ignored": 1, "rejected": 1}.items():
        value = REGISTRY.get_sample_value("parley_imap_messages_total", {"outcome": outcome})
        assert value == counted[outcome] + n, outcome
    assert (result.accepted, result.rejected) == (4, 1)  # the auto-reply is taken in, and ignored
    assert await polling.conversations() == [
        ("<a1@example.com>", ["Where is order 7?", "Any news?"]),
        ("<b1@example.com>", ["Wrong invoice."]),
    ]
    seen = [subject for subject, flags in mailbox.messages() if r"\Seen" in flags]
    assert seen == ["Order 7", "Re: Order 7", "Invoice", "Automatic reply: Your order"]
    [(subject, flags)] = mailbox.messages("Rejected")
    assert subject == "Who sent this?" and r"\Flagged" in flags

    [again] = (await polling.pollers.poll_all_once()).values()
    assert not isinstance(again, Exception) and again.accepted == 0

    mailbox.append(mail("<a3@example.com>", "Re: Order 7", "Found it, thanks.", reply_to="<a2@example.com>"))
    await polling.pollers.poll_all_once()
    assert (await polling.conversations())[0][1][-1] == "Found it, thanks."


async def test_a_bounce_in_the_mailbox_fails_the_reply_it_reports_on(
    polling: Polling, mailbox: Mailbox
) -> None:
    mailbox.append(mail("<a1@example.com>", "Order 7", "Where is order 7?"))
    await polling.pollers.poll_all_once()
    assert len(await polling.conversations()) == 1
    async with polling.db.transaction() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        reply = Message(
            tenant_id=polling.tenant_id,
            inbox_id=polling.inbox_id,
            conversation_id=conversation.id,
            direction="outbound",
            sender_type="user",
            body="It ships today.",
            provider_message_id="<parley-outbound-1@parley.test>",
            status="sent",
        )
        session.add(reply)
    mailbox.append((CORPUS / "bounce__dsn_multipart_report.eml").read_bytes())

    await polling.pollers.poll_all_once()

    async with polling.db.sessionmaker() as session:
        bounced = (await session.execute(select(Message).where(Message.direction == "outbound"))).scalar_one()
    assert (bounced.status, bounced.error_code) == ("failed", "5.1.1")
    assert len(await polling.conversations()) == 1


async def test_the_pollers_follow_inboxes_as_they_are_added_and_deleted(
    polling: Polling, mailbox: Mailbox, db: Database
) -> None:
    async with db.transaction() as session:  # start without the inbox polling
        inbox = await session.get_one(Inbox, polling.inbox_id)
        imap_settings = inbox.settings["imap"]
        inbox.settings = {key: value for key, value in inbox.settings.items() if key != "imap"}
    stop = asyncio.Event()
    task = asyncio.create_task(polling.pollers.run(stop))
    try:
        await asyncio.sleep(0.5)
        assert polling.pollers.polling == []

        mailbox.append(mail("<a1@example.com>", "Order 7", "Where is order 7?"))
        async with db.transaction() as session:
            inbox = await session.get_one(Inbox, polling.inbox_id)
            inbox.settings = {**inbox.settings, "imap": imap_settings}
        await eventually(lambda: polling.pollers.polling == [polling.inbox_id])
        await eventually(lambda: any(r"\Seen" in flags for _, flags in mailbox.messages()))
        assert len(await polling.conversations()) == 1

        async with db.transaction() as session:
            await session.execute(delete(Inbox).where(Inbox.id == polling.inbox_id))
        await eventually(lambda: polling.pollers.polling == [])
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_parley_imap_once_polls_every_mailbox_and_exits(
    db: Database, settings: Settings, imap_account: ImapAccount, mailbox: Mailbox
) -> None:
    tenant = await make_tenant(db, "acme")
    inbox_id = await make_email_inbox(
        db,
        tenant.tenant_id,
        settings={"imap": imap_account.settings()},
        secrets={"imap_password": imap_account.password},
    )
    mailbox.append(mail("<a1@example.com>", "Order 7", "Where is order 7?"))
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": settings.database_url,
        "PARLEY_DATA_DIR": str(settings.data_dir),
        "PARLEY_SECRET_KEY": SECRET_KEY,
    }
    command = [sys.executable, "-m", "parley", "imap", "--once"]
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).parents[3],
    )

    assert result.returncode == 0, result.stderr
    assert f"inbox {inbox_id}: 1 stored, 0 rejected" in result.stdout
    async with db.sessionmaker() as session:
        assert (await session.execute(select(Message.body))).scalars().all() == ["Where is order 7?"]


async def test_the_gateway_polls_too_when_served_with_imap(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    imap_account: ImapAccount,
    mailbox: Mailbox,
) -> None:
    tenant = await make_tenant(db, "acme")
    await make_email_inbox(
        db,
        tenant.tenant_id,
        settings={"imap": imap_account.settings()},
        secrets={"imap_password": imap_account.password},
    )
    mailbox.append(mail("<a1@example.com>", "Order 7", "Where is order 7?"))
    app = create_app(settings)
    app.cleanup_ctx.append(imap_context(rescan=0.2))  # what `parley serve --imap` adds

    client = await aiohttp_client(app)

    async def stored() -> bool:
        async with db.sessionmaker() as session:
            return (await session.execute(select(Message.body))).scalars().all() == ["Where is order 7?"]

    await eventually(stored)
    await client.close()


async def test_an_inbox_whose_settings_are_unusable_does_not_stop_the_others(
    polling: Polling, db: Database, imap_account: ImapAccount
) -> None:
    async with db.transaction() as session:
        session.add_all(
            [
                Inbox(  # secrets sealed with another PARLEY_SECRET_KEY
                    tenant_id=polling.tenant_id,
                    name="Old mail",
                    channel="email",
                    settings={"addresses": ["old@parley.test"], "imap": imap_account.settings()},
                    secrets_encrypted=SecretBox("another key").seal({"imap_password": "x"}),
                ),
                Inbox(  # IMAP settings broken outside the API
                    tenant_id=polling.tenant_id,
                    name="Broken mail",
                    channel="email",
                    settings={"addresses": ["broken@parley.test"], "imap": {"host": "h"}},
                ),
            ]
        )
    assert list(await polling.pollers.configured()) == [polling.inbox_id]
