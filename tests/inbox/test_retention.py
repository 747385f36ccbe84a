"""Retention on both databases: old resolved conversations go, open and recent ones stay, counts are kept."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from crm_core.models import ChannelIdentity, Contact
from inbox.models import (
    Conversation,
    ConversationDailyStats,
    ConversationStatus,
    Inbox,
    Message,
    MessageStatus,
    RetentionPolicy,
)
from inbox.retention import sweep_retention
from parley.audit import AuditEntry
from parley.db import Database, utcnow
from parley.media import MediaStore
from tests.conftest import make_tenant


async def add_inbox(db: Database, tenant_id: int, name: str) -> int:
    async with db.transaction() as session:
        inbox = Inbox(tenant_id=tenant_id, name=name, channel="twilio_sms", settings={})
        session.add(inbox)
        await session.flush()
        return inbox.id


async def add_conversation(
    db: Database,
    tenant_id: int,
    inbox_id: int,
    *,
    status: ConversationStatus,
    resolved_days_ago: int | None,
    opened_days_ago: int = 100,
    messages: tuple[str, ...] = ("inbound", "outbound", "inbound"),
    attachment_url: str | None = None,
) -> int:
    now = utcnow()
    async with db.transaction() as session:
        contact = Contact(tenant_id=tenant_id, name="Customer", attributes={})
        session.add(contact)
        await session.flush()
        identity = ChannelIdentity(
            tenant_id=tenant_id, contact_id=contact.id, kind="phone", address=f"+1415555{contact.id:04d}"
        )
        session.add(identity)
        await session.flush()
        conversation = Conversation(
            tenant_id=tenant_id,
            inbox_id=inbox_id,
            contact_id=contact.id,
            identity_id=identity.id,
            status=status,
            created_at=now - timedelta(days=opened_days_ago),
            resolved_at=None if resolved_days_ago is None else now - timedelta(days=resolved_days_ago),
        )
        session.add(conversation)
        await session.flush()
        for i, direction in enumerate(messages):
            session.add(
                Message(
                    tenant_id=tenant_id,
                    inbox_id=inbox_id,
                    conversation_id=conversation.id,
                    direction=direction,
                    sender_type="contact" if direction == "inbound" else "user",
                    body=f"message {i}",
                    attachments=[{"url": attachment_url}] if attachment_url and i == 0 else [],
                    status=MessageStatus.RECEIVED if direction == "inbound" else MessageStatus.SENT,
                )
            )
        return conversation.id


async def set_policies(db: Database, tenant_id: int, *rules: tuple[int | None, int]) -> None:
    async with db.transaction() as session:
        for inbox_id, days in rules:
            session.add(RetentionPolicy(tenant_id=tenant_id, inbox_id=inbox_id, resolved_after_days=days))


async def existing(db: Database, ids: list[int]) -> set[int]:
    async with db.sessionmaker() as session:
        rows = await session.execute(select(Conversation.id).where(Conversation.id.in_(ids)))
        return set(rows.scalars())


async def stats(db: Database, tenant_id: int) -> dict[int, tuple[int, int, int]]:
    """Per inbox: conversations, messages in, messages out (summed over days)."""
    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(
                ConversationDailyStats.inbox_id,
                func.sum(ConversationDailyStats.conversations),
                func.sum(ConversationDailyStats.messages_in),
                func.sum(ConversationDailyStats.messages_out),
            )
            .where(ConversationDailyStats.tenant_id == tenant_id)
            .group_by(ConversationDailyStats.inbox_id)
        )
        return {inbox: (int(c), int(i), int(o)) for inbox, c, i, o in rows.all()}


async def test_the_sweep_deletes_old_resolved_conversations_only_and_keeps_their_counts(
    db: Database, tmp_path: Path
) -> None:
    acme = await make_tenant(db, "acme")
    other = await make_tenant(db, "globex")
    support = await add_inbox(db, acme.tenant_id, "Support")
    sales = await add_inbox(db, acme.tenant_id, "Sales")
    theirs = await add_inbox(db, other.tenant_id, "Theirs")
    media = MediaStore(tmp_path / "media", 10_000)
    file = await media.put(acme.tenant_id, b"photo", filename="p.jpg", content_type="image/jpeg")
    # The tenant keeps 30 days by default, and Sales 365.
    await set_policies(db, acme.tenant_id, (None, 30), (sales, 365))

    old = await add_conversation(
        db,
        acme.tenant_id,
        support,
        status=ConversationStatus.RESOLVED,
        resolved_days_ago=40,
        attachment_url=file.url,
    )
    old_too = await add_conversation(
        db,
        acme.tenant_id,
        support,
        status=ConversationStatus.RESOLVED,
        resolved_days_ago=31,
        messages=("inbound",),
    )
    recent = await add_conversation(
        db, acme.tenant_id, support, status=ConversationStatus.RESOLVED, resolved_days_ago=5
    )
    still_open = await add_conversation(
        db, acme.tenant_id, support, status=ConversationStatus.OPEN, resolved_days_ago=None
    )
    # Reopened after an old resolution: no longer resolved, so kept.
    reopened = await add_conversation(
        db, acme.tenant_id, support, status=ConversationStatus.OPEN, resolved_days_ago=90
    )
    sales_kept = await add_conversation(
        db, acme.tenant_id, sales, status=ConversationStatus.RESOLVED, resolved_days_ago=40
    )
    sales_old = await add_conversation(
        db, acme.tenant_id, sales, status=ConversationStatus.RESOLVED, resolved_days_ago=400
    )
    # Another tenant without a policy keeps everything.
    foreign = await add_conversation(
        db, other.tenant_id, theirs, status=ConversationStatus.RESOLVED, resolved_days_ago=999
    )
    everything = [old, old_too, recent, still_open, reopened, sales_kept, sales_old, foreign]

    run = await sweep_retention(db, media, batch_size=1)  # batches of one: every batch boundary is crossed

    assert await existing(db, everything) == {recent, still_open, reopened, sales_kept, foreign}
    assert run.tenants[acme.tenant_id].conversations == 3 and other.tenant_id not in run.tenants
    async with db.sessionmaker() as session:
        left = await session.execute(
            select(func.count())
            .select_from(Message)
            .where(Message.conversation_id.in_([old, old_too, sales_old]))
        )
        assert left.scalar() == 0
    assert await stats(db, acme.tenant_id) == {support: (2, 3, 1), sales: (1, 2, 1)}
    assert await stats(db, other.tenant_id) == {}
    try:
        await media.read(file.key)
        raise AssertionError("the attachment's file outlived its conversation")
    except FileNotFoundError:
        pass

    async with db.sessionmaker() as session:
        (entry,) = (
            await session.execute(select(AuditEntry).where(AuditEntry.action == "retention.swept"))
        ).scalars()
    assert (entry.tenant_id, entry.actor_type) == (acme.tenant_id, "system")
    assert (entry.details["conversations"], entry.details["messages"], entry.details["attachments"]) == (
        3,
        7,
        1,
    )

    # Nothing more is due: a second run deletes and counts nothing, and audits nothing.
    again = await sweep_retention(db, media)
    assert again.conversations == 0
    assert await stats(db, acme.tenant_id) == {support: (2, 3, 1), sales: (1, 2, 1)}


async def test_sweepers_running_at_once_count_each_conversation_once(db: Database) -> None:
    acme = await make_tenant(db, "acme")
    support = await add_inbox(db, acme.tenant_id, "Support")
    await set_policies(db, acme.tenant_id, (None, 10))
    ids = [
        await add_conversation(
            db, acme.tenant_id, support, status=ConversationStatus.RESOLVED, resolved_days_ago=20
        )
        for _ in range(12)
    ]
    other = Database(db.url)  # a second process's connection pool
    try:
        runs: list[Any] = await asyncio.gather(
            sweep_retention(db, batch_size=2),
            sweep_retention(other, batch_size=2),
            sweep_retention(db, batch_size=3),
        )
    finally:
        await other.dispose()
    assert await existing(db, ids) == set()
    assert sum(r.conversations for r in runs) == 12
    assert await stats(db, acme.tenant_id) == {support: (12, 24, 12)}
