"""On threaded channels a conversation is a thread: whoever writes in it, and even after it was resolved."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy import select, update

from channels.base import Address, InboundMessage
from gateway import pipeline
from inbox.models import Conversation, Message
from inbox.runtime import InboxDirectory, InboxRuntime
from parley.crypto import SecretBox
from parley.db import Database
from parley.models import OutboxEvent
from tests.conftest import SECRET_KEY, make_tenant, make_twilio_inbox


def said(n: int, *, by: str, thread: str | None) -> InboundMessage:
    return InboundMessage(
        provider_message_id=f"Ev{n:08d}",
        sender=Address("slack", f"T1:{by}"),
        recipient=None,
        text=f"message {n}",
        thread_key=thread,
    )


@pytest_asyncio.fixture
async def inbox(db: Database) -> AsyncIterator[InboxRuntime]:
    tenant = await make_tenant(db, "acme")
    inbox_id = await make_twilio_inbox(db, tenant.tenant_id, "http://127.0.0.1:9", "AC" + "0" * 32, "token")
    directory = InboxDirectory(db, SecretBox(SECRET_KEY))
    runtime = await directory.get(inbox_id)
    assert runtime is not None
    yield runtime
    await directory.close()


async def conversations(db: Database) -> list[tuple[str | None, str, int]]:
    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(Conversation.thread_key, Conversation.status, Conversation.contact_id).order_by(
                Conversation.id
            )
        )
        return [(row.thread_key, row.status, row.contact_id) for row in rows]


async def test_one_conversation_per_thread_whoever_writes_in_it(db: Database, inbox: InboxRuntime) -> None:
    await pipeline.ingest(db, inbox, [said(1, by="U_ANN", thread="C1:100.1")])
    await pipeline.ingest(db, inbox, [said(2, by="U_BOB", thread="C1:100.1")])  # a colleague replies in it
    await pipeline.ingest(db, inbox, [said(3, by="U_ANN", thread="C1:200.2")])  # Ann starts another thread
    threads = await conversations(db)
    assert [(key, status) for key, status, _ in threads] == [("C1:100.1", "open"), ("C1:200.2", "open")]
    assert threads[0][2] == threads[1][2]  # both started by Ann's contact
    async with db.sessionmaker() as session:
        senders = (await session.execute(select(Message.sender_id).order_by(Message.id))).scalars().all()
    assert senders[0] == senders[2] != senders[1]  # Bob is his own contact in Ann's thread


async def test_a_new_reply_reopens_the_resolved_thread(db: Database, inbox: InboxRuntime) -> None:
    await pipeline.ingest(db, inbox, [said(1, by="U_ANN", thread="C1:100.1")])
    async with db.transaction() as session:
        await session.execute(
            update(Conversation).values(status="resolved", resolved_at=Conversation.created_at)
        )
    await pipeline.ingest(db, inbox, [said(2, by="U_ANN", thread="C1:100.1")])
    assert await conversations(db) == [("C1:100.1", "open", (await conversations(db))[0][2])]
    async with db.sessionmaker() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        topics = (await session.execute(select(OutboxEvent.topic).order_by(OutboxEvent.id))).scalars().all()
    assert conversation.resolved_at is None
    assert topics[-2:] == ["conversation.reopened", "message.received"]


async def test_threaded_and_unthreaded_conversations_of_one_contact_coexist(
    db: Database, inbox: InboxRuntime
) -> None:
    await pipeline.ingest(db, inbox, [said(1, by="U_ANN", thread=None)])
    await pipeline.ingest(db, inbox, [said(2, by="U_ANN", thread="C1:100.1")])
    await pipeline.ingest(db, inbox, [said(3, by="U_ANN", thread=None)])
    assert [(key, status) for key, status, _ in await conversations(db)] == [
        (None, "open"),
        ("C1:100.1", "open"),
    ]
