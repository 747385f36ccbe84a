"""Retention: a tenant's resolved conversations older than its policy are deleted, their counts kept.

A policy says "resolved conversations go `resolved_after_days` after they were resolved", for one
inbox or for every inbox without a policy of its own. The sweep deletes in batches, each its own
transaction: pick a batch (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so several sweepers share the work;
SQLite: its single writer, `BEGIN IMMEDIATE`), count their messages, add the counts to
`conversation_daily_stats` (per inbox and day the conversation was opened), delete them
(`RETURNING`, with the conditions checked again, so only what is really deleted is counted) and
their messages, labels and read marks with them (ON DELETE CASCADE). Counts and deletion commit
together, so each conversation is counted exactly once however many processes sweep. Attachment
files go from the media store after the commit. Each run writes one audit entry per tenant that
lost something.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, not_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from inbox.models import Conversation, ConversationStatus, Message, RetentionPolicy
from parley.audit import SYSTEM, audit
from parley.db import Base, Database, utcnow
from parley.media import MediaStore

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
SWEEP_INTERVAL_SECONDS = 3600.0


@dataclass(slots=True)
class TenantSweep:
    conversations: int = 0
    messages: int = 0
    attachments: int = 0


@dataclass(slots=True)
class RetentionRun:
    tenants: dict[int, TenantSweep] = field(default_factory=dict)

    @property
    def conversations(self) -> int:
        return sum(t.conversations for t in self.tenants.values())


def _due(policy: RetentionPolicy, overridden: set[int], now: datetime) -> Any:
    cutoff = now - timedelta(days=policy.resolved_after_days)
    where = [
        Conversation.tenant_id == policy.tenant_id,
        Conversation.status == ConversationStatus.RESOLVED,
        Conversation.resolved_at.is_not(None),
        Conversation.resolved_at < cutoff,
    ]
    if policy.inbox_id is not None:
        where.append(Conversation.inbox_id == policy.inbox_id)
    elif overridden:
        where.append(not_(Conversation.inbox_id.in_(overridden)))
    return and_(*where)


async def sweep_retention(
    db: Database,
    media: MediaStore | None = None,
    *,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> RetentionRun:
    """Delete every tenant's conversations past its retention; return what went, per tenant."""
    now = now or utcnow()
    async with db.sessionmaker() as session:
        policies = list(
            (await session.execute(select(RetentionPolicy).order_by(RetentionPolicy.id))).scalars()
        )
    by_tenant: dict[int, list[RetentionPolicy]] = defaultdict(list)
    for policy in policies:
        by_tenant[policy.tenant_id].append(policy)
    run = RetentionRun()
    for tenant_id, tenant_policies in by_tenant.items():
        overridden = {p.inbox_id for p in tenant_policies if p.inbox_id is not None}
        swept = TenantSweep()
        for policy in tenant_policies:
            condition = _due(policy, overridden, now)
            while True:
                deleted, messages, keys = await _delete_batch(db, media, condition, batch_size)
                swept.conversations += deleted
                swept.messages += messages
                swept.attachments += len(keys)
                for key in keys:
                    if media is not None:
                        await media.delete(key)
                if deleted < batch_size:
                    break
        if swept.conversations:
            run.tenants[tenant_id] = swept
            async with db.transaction() as session:
                await audit(
                    session,
                    tenant_id=tenant_id,
                    actor=SYSTEM,
                    action="retention.swept",
                    object_type="tenant",
                    object_id=tenant_id,
                    details={
                        "conversations": swept.conversations,
                        "messages": swept.messages,
                        "attachments": swept.attachments,
                        "policies": [
                            {"inbox_id": p.inbox_id, "resolved_after_days": p.resolved_after_days}
                            for p in tenant_policies
                        ],
                    },
                )
    return run


async def _delete_batch(
    db: Database, media: MediaStore | None, condition: Any, batch_size: int
) -> tuple[int, int, list[str]]:
    """One transaction: count, record and delete up to `batch_size` due conversations."""
    async with db.transaction() as session:
        pick = select(Conversation.id).where(condition).order_by(Conversation.id).limit(batch_size)
        if not db.is_sqlite:
            pick = pick.with_for_update(skip_locked=True)
        ids = list((await session.execute(pick)).scalars())
        if not ids:
            return 0, 0, []
        per_conversation = await _message_counts(session, ids)
        files = await _attachment_keys(session, ids, media)
        gone = (
            await session.execute(
                delete(Conversation)
                .where(Conversation.id.in_(ids), condition)
                .returning(
                    Conversation.id, Conversation.tenant_id, Conversation.inbox_id, Conversation.created_at
                )
                .execution_options(synchronize_session=False)
            )
        ).all()
        stats: dict[tuple[int, int, date], list[int]] = defaultdict(lambda: [0, 0, 0])
        deleted_ids = set()
        for conversation_id, tenant_id, inbox_id, created_at in gone:
            deleted_ids.add(conversation_id)
            counts = stats[(tenant_id, inbox_id, created_at.date())]
            inbound, outbound = per_conversation.get(conversation_id, (0, 0))
            counts[0] += 1
            counts[1] += inbound
            counts[2] += outbound
        for (tenant_id, inbox_id, day), (conversations, inbound, outbound) in stats.items():
            await _add_stats(session, db, tenant_id, inbox_id, day, conversations, inbound, outbound)
        messages = sum(sum(per_conversation.get(i, (0, 0))) for i in deleted_ids)
        keys = [key for conversation_id, key in files if conversation_id in deleted_ids]
    return len(gone), messages, keys


async def _message_counts(session: AsyncSession, ids: list[int]) -> dict[int, tuple[int, int]]:
    rows = await session.execute(
        select(
            Message.conversation_id,
            func.sum(case((Message.direction == "inbound", 1), else_=0)),
            func.sum(case((Message.direction == "inbound", 0), else_=1)),
        )
        .where(Message.conversation_id.in_(ids))
        .group_by(Message.conversation_id)
    )
    return {cid: (int(i or 0), int(o or 0)) for cid, i, o in rows.all()}


async def _attachment_keys(
    session: AsyncSession, ids: list[int], media: MediaStore | None
) -> list[tuple[int, str]]:
    if media is None:
        return []
    found: list[tuple[int, str]] = []
    rows = await session.execute(
        select(Message.conversation_id, Message.attachments).where(Message.conversation_id.in_(ids))
    )
    for conversation_id, attachments in rows.all():
        for attachment in attachments or []:
            url = attachment.get("url") if isinstance(attachment, dict) else None
            key = media.key_of(url) if isinstance(url, str) else None
            if key is not None:
                found.append((conversation_id, key))
    return found


async def _add_stats(
    session: AsyncSession,
    db: Database,
    tenant_id: int,
    inbox_id: int,
    day: date,
    conversations: int,
    inbound: int,
    outbound: int,
) -> None:
    insert = sqlite_insert if db.is_sqlite else pg_insert
    table = Base.metadata.tables["conversation_daily_stats"]
    stmt = insert(table).values(
        tenant_id=tenant_id,
        inbox_id=inbox_id,
        day=day,
        conversations=conversations,
        messages_in=inbound,
        messages_out=outbound,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "inbox_id", "day"],
        set_={
            "conversations": table.c.conversations + stmt.excluded.conversations,
            "messages_in": table.c.messages_in + stmt.excluded.messages_in,
            "messages_out": table.c.messages_out + stmt.excluded.messages_out,
        },
    )
    await session.execute(stmt)


class RetentionSweeper:
    """The in-process sweep of `parley serve` (with Redis, Celery beat runs `parley.retention_sweep`)."""

    def __init__(self, db: Database, media: MediaStore | None) -> None:
        self.db = db
        self.media = media

    async def run_sweeps(
        self,
        *,
        interval: float = SWEEP_INTERVAL_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Sweep every `interval` seconds until cancelled."""
        while True:
            await sleep(interval)
            try:
                await sweep_retention(self.db, self.media)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a database hiccup
                logger.exception("retention sweep failed; retrying")
