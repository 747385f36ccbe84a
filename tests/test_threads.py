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


def mailed(n: int, *, refs: tuple[str, ...] = (), proof: int | None = None) -> InboundMessage:
    """A message of a channel that threads by reference (email): its own id is its thread's key."""
    return InboundMessage(
        provider_message_id=f"<m{n}@example.com>",
        sender=Address("email", "ann@example.com"),
        recipient=None,
        text=f"mail {n}",
        thread_key=f"<m{n}@example.com>",
        thread_refs=refs,
        conversation_id=proof,
    )


async def conversation_of(db: Database, provider_message_id: str) -> int:
    async with db.sessionmaker() as session:
        return int(
            (
                await session.execute(
                    select(Message.conversation_id).where(Message.provider_message_id == provider_message_id)
                )
            ).scalar_one()
        )


async def test_a_message_naming_a_stored_one_joins_its_conversation(
    db: Database, inbox: InboxRuntime
) -> None:
    await pipeline.ingest(db, inbox, [mailed(1)])
    await pipeline.ingest(db, inbox, [mailed(2)])
    # Unknown references are skipped; the nearest stored one decides.
    await pipeline.ingest(
        db, inbox, [mailed(3, refs=("<unknown@x>", "<m2@example.com>", "<m1@example.com>"))]
    )
    assert await conversation_of(db, "<m3@example.com>") == await conversation_of(db, "<m2@example.com>")
    assert await conversation_of(db, "<m2@example.com>") != await conversation_of(db, "<m1@example.com>")
    # Nothing known: a thread of its own.
    await pipeline.ingest(db, inbox, [mailed(4, refs=("<unknown@x>",))])
    assert [key for key, _, _ in await conversations(db)] == [
        "<m1@example.com>",
        "<m2@example.com>",
        "<m4@example.com>",
    ]


async def test_a_proven_conversation_counts_only_in_its_own_inbox(db: Database, inbox: InboxRuntime) -> None:
    await pipeline.ingest(db, inbox, [mailed(1)])
    first = await conversation_of(db, "<m1@example.com>")
    await pipeline.ingest(db, inbox, [mailed(2, proof=first)])
    assert await conversation_of(db, "<m2@example.com>") == first

    other_tenant = await make_tenant(db, "globex")
    other_id = await make_twilio_inbox(db, other_tenant.tenant_id, "http://127.0.0.1:9", "AC" + "1" * 32, "t")
    directory = InboxDirectory(db, SecretBox(SECRET_KEY))
    other = await directory.get(other_id)
    assert other is not None
    # Another inbox's message claiming this inbox's conversation (or referencing its messages) gets
    # a thread of its own.
    await pipeline.ingest(db, other, [mailed(3, proof=first, refs=("<m1@example.com>",))])
    assert await conversation_of(db, "<m3@example.com>") != first
    await directory.close()
