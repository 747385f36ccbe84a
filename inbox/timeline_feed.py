"""The CRM timeline as read: stored entries and the contact's messages and calls, newest first.

Messages and calls are merged in when the feed is read, from `messages` through the contact's
conversations, rather than copied into `timeline_entries` (see `crm_core.timeline`). Each page is
two index-ordered queries, one per source, each stopped after `limit + 1` rows past the cursor,
merged here: keyset pagination on (occurred_at, source, id), stable while new things happen.

This module also writes the conversation entries (opened, resolved, reopened): it sits above
`crm_core` and may read conversations.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, false, func, not_, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import Contact, TimelineEntry
from crm_core.timeline import KINDS, MESSAGE_KINDS, live_contact, plain, record_entry
from inbox.listing import preview
from inbox.models import Conversation, ConversationStatus, Inbox, Message
from parley.db import Database
from parley.outbox import Event, Handler

# Sources in the feed's order at equal times: a stored entry sorts after a message of the same instant.
ENTRY, MESSAGE = 0, 1
_RESOLVED = str(ConversationStatus.RESOLVED)


class InvalidCursor(ValueError):
    """The cursor is not one the feed returned."""


@dataclass(frozen=True, slots=True)
class Cursor:
    occurred_at: datetime
    source: int
    id: int

    def encode(self) -> str:
        text = json.dumps([self.occurred_at.isoformat(), self.source, self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            when, source, row_id = json.loads(raw)
            moment = datetime.fromisoformat(when)
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as e:
            raise InvalidCursor(cursor) from e
        if source not in (ENTRY, MESSAGE) or not isinstance(row_id, int) or moment.tzinfo is None:
            raise InvalidCursor(cursor)
        return cls(moment, source, row_id)


@dataclass(frozen=True, slots=True)
class TimelineItem:
    """One line of the feed; `data` holds plain values (customer text included: escape it)."""

    kind: str
    occurred_at: datetime
    source: int
    id: int
    contact_id: int | None
    data: dict[str, Any] = field(default_factory=dict)
    conversation_id: int | None = None
    message_id: int | None = None
    deal_id: int | None = None
    ticket_id: int | None = None
    campaign_id: int | None = None

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.occurred_at, self.source, self.id)

    @property
    def key(self) -> tuple[datetime, int, int]:
        return (self.occurred_at, self.source, self.id)


@dataclass(frozen=True, slots=True)
class TimelinePage:
    items: Sequence[TimelineItem]
    next_cursor: str | None


def wanted_kinds(filters: Collection[str] | None) -> frozenset[str]:
    """The kinds a filter names: a kind, or a family (`deal` is every `deal.*`, `message` both ways)."""
    if not filters:
        return frozenset(KINDS)
    chosen = {k for k in KINDS for f in filters if k == f or k.startswith(f + ".")}
    return frozenset(chosen)


def _before(cursor: Cursor | None, when: Any, row_id: Any, source: int) -> ColumnElement[bool]:
    if cursor is None:
        return true()
    if source < cursor.source:
        same_instant: ColumnElement[bool] = true()
    elif source == cursor.source:
        same_instant = row_id < cursor.id
    else:
        same_instant = false()
    return or_(when < cursor.occurred_at, and_(when == cursor.occurred_at, same_instant))


def _has_key(session: AsyncSession, key: str) -> ColumnElement[bool]:
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        return Message.extra.op("?", return_type=Boolean)(key)
    return func.json_type(Message.extra, f"$.{key}").is_not(None)


def _message_kind(direction: str, extra: dict[str, Any]) -> str:
    if "voicemail" in extra:
        return "voicemail"
    if "call" in extra or "recording" in extra:
        return "call"
    return "message.in" if direction == "inbound" else "message.out"


def _message_filter(session: AsyncSession, kinds: frozenset[str]) -> ColumnElement[bool]:
    voicemail = _has_key(session, "voicemail")
    call = and_(or_(_has_key(session, "call"), _has_key(session, "recording")), not_(voicemail))
    plain_message = and_(not_(voicemail), not_(call))
    parts: list[ColumnElement[bool]] = []
    if "message.in" in kinds:
        parts.append(and_(plain_message, Message.direction == "inbound"))
    if "message.out" in kinds:
        parts.append(and_(plain_message, Message.direction != "inbound"))
    if "call" in kinds:
        parts.append(call)
    if "voicemail" in kinds:
        parts.append(voicemail)
    return or_(*parts) if parts else false()


async def _entries(
    session: AsyncSession,
    tenant_id: int,
    scope: ColumnElement[bool],
    kinds: frozenset[str],
    cursor: Cursor | None,
    limit: int,
) -> list[TimelineItem]:
    stored = kinds - set(MESSAGE_KINDS)
    if not stored:
        return []
    stmt = (
        select(TimelineEntry)
        .where(
            TimelineEntry.tenant_id == tenant_id,
            scope,
            _before(cursor, TimelineEntry.occurred_at, TimelineEntry.id, ENTRY),
        )
        .order_by(TimelineEntry.occurred_at.desc(), TimelineEntry.id.desc())
        .limit(limit + 1)
    )
    if stored != set(KINDS) - set(MESSAGE_KINDS):
        stmt = stmt.where(TimelineEntry.kind.in_(sorted(stored)))
    return [
        TimelineItem(
            kind=e.kind,
            occurred_at=e.occurred_at,
            source=ENTRY,
            id=e.id,
            contact_id=e.contact_id,
            data=dict(e.data or {}),
            conversation_id=e.conversation_id,
            message_id=e.message_id,
            deal_id=e.deal_id,
            ticket_id=e.ticket_id,
            campaign_id=e.campaign_id,
        )
        for e in (await session.execute(stmt)).scalars()
    ]


async def _messages(
    session: AsyncSession,
    tenant_id: int,
    scope: ColumnElement[bool],
    kinds: frozenset[str],
    cursor: Cursor | None,
    limit: int,
) -> list[TimelineItem]:
    if not kinds & set(MESSAGE_KINDS):
        return []
    # Columns rather than ORM objects: the feed reads many rows and changes none.
    stmt = (
        select(
            Message.id,
            Message.conversation_id,
            Message.direction,
            Message.sender_type,
            Message.status,
            Message.body,
            Message.attachments,
            Message.extra,
            Message.created_at,
            Conversation.contact_id,
            Inbox.channel,
        )
        .join(Conversation, Conversation.id == Message.conversation_id)
        .join(Inbox, Inbox.id == Message.inbox_id)
        .where(
            Message.tenant_id == tenant_id,
            Conversation.tenant_id == tenant_id,
            scope,
            Message.private.is_(False),
            _before(cursor, Message.created_at, Message.id, MESSAGE),
        )
        .order_by(Message.created_at.desc(), Message.id.desc())
        .limit(limit + 1)
    )
    if kinds & set(MESSAGE_KINDS) != set(MESSAGE_KINDS):
        stmt = stmt.where(_message_filter(session, kinds))
    items = []
    for row in (await session.execute(stmt)).all():
        extra = row.extra or {}
        data: dict[str, Any] = {
            "channel": row.channel,
            "direction": row.direction,
            "sender_type": row.sender_type,
            "status": row.status,
            "text": preview(row.body, row.attachments or [], extra, length=280),
        }
        for key in ("call", "voicemail"):
            if isinstance(extra.get(key), dict):
                data[key] = plain(extra[key])
        items.append(
            TimelineItem(
                kind=_message_kind(row.direction, extra),
                occurred_at=row.created_at,
                source=MESSAGE,
                id=row.id,
                contact_id=row.contact_id,
                data=data,
                conversation_id=row.conversation_id,
                message_id=row.id,
            )
        )
    return items


async def _feed(
    session: AsyncSession,
    tenant_id: int,
    entry_scope: ColumnElement[bool],
    message_scope: ColumnElement[bool],
    *,
    kinds: Collection[str] | None,
    cursor: str | None,
    limit: int,
) -> TimelinePage:
    after = Cursor.decode(cursor) if cursor else None
    chosen = wanted_kinds(kinds)
    merged = sorted(
        [
            *await _entries(session, tenant_id, entry_scope, chosen, after, limit),
            *await _messages(session, tenant_id, message_scope, chosen, after, limit),
        ],
        key=lambda item: item.key,
        reverse=True,
    )
    page = merged[:limit]
    return TimelinePage(page, page[-1].cursor.encode() if len(merged) > limit else None)


async def contact_timeline(
    session: AsyncSession,
    tenant_id: int,
    contact_id: int,
    *,
    kinds: Collection[str] | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> TimelinePage:
    """A contact's feed, newest first; raises InvalidCursor for a cursor it did not make."""
    return await _feed(
        session,
        tenant_id,
        TimelineEntry.contact_id == contact_id,
        Conversation.contact_id == contact_id,
        kinds=kinds,
        cursor=cursor,
        limit=limit,
    )


async def company_timeline(
    session: AsyncSession,
    tenant_id: int,
    company_id: int,
    *,
    kinds: Collection[str] | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> TimelinePage:
    """A company's feed: its contacts' feeds and the company's own deal events, newest first."""
    members = select(Contact.id).where(Contact.company_id == company_id, Contact.tenant_id == tenant_id)
    return await _feed(
        session,
        tenant_id,
        or_(TimelineEntry.company_id == company_id, TimelineEntry.contact_id.in_(members)),
        Conversation.contact_id.in_(members),
        kinds=kinds,
        cursor=cursor,
        limit=limit,
    )


# --- the conversation entries -------------------------------------------------------------------


class ConversationTimeline:
    """Writes conversation opened / resolved / reopened entries from the inbox's events."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def topics(self) -> dict[str, list[Handler]]:
        return {
            "conversation.opened": [self.opened],
            "conversation.reopened": [self.reopened],
            "conversation.updated": [self.updated],
        }

    async def _record(self, event: Event, kind: str, data: dict[str, Any] | None = None) -> None:
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    select(Conversation.id, Conversation.contact_id, Inbox.name, Inbox.channel)
                    .join(Inbox, Inbox.id == Conversation.inbox_id)
                    .where(
                        Conversation.id == event.payload.get("conversation_id"),
                        Conversation.tenant_id == event.tenant_id,
                    )
                )
            ).one_or_none()
            if row is None:
                return
            await record_entry(
                session,
                event,
                kind=kind,
                contact_id=await live_contact(session, event.tenant_id, row.contact_id),
                data={"inbox": row.name, "channel": row.channel, **(data or {})},
                conversation_id=row.id,
            )

    async def opened(self, event: Event) -> None:
        await self._record(event, "conversation.opened")

    async def reopened(self, event: Event) -> None:
        await self._record(event, "conversation.reopened", {"reason": "customer wrote"})

    async def updated(self, event: Event) -> None:
        """Only status changes to or from resolved are timeline-worthy."""
        status = (event.payload.get("changes") or {}).get("status")
        if not isinstance(status, dict):
            return
        if status.get("new") == _RESOLVED:
            kind = "conversation.resolved"
        elif status.get("old") == _RESOLVED:
            kind = "conversation.reopened"
        else:
            return
        by = event.payload.get("changed_by")
        await self._record(event, kind, plain(by) if isinstance(by, dict) else None)


def conversation_timeline_subscribers(db: Database) -> dict[str, list[Handler]]:
    """The conversation entries' topics and handlers, for `gateway.wiring.build_subscribers`."""
    return ConversationTimeline(db).topics()
