"""Private notes on a conversation, the @mentions in them, and the notifications mentions create.

A note is a message row with `private` set: it sits in the thread for agents, is never queued
for a channel (no `message.outbound` event) and is never shown to the customer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from inbox.lookup import InvalidInput, NotFoundError, conversation_of
from inbox.models import Message, MessageStatus, Notification, NotificationKind
from parley.db import utcnow
from parley.models import User
from parley.outbox import emit

NOTE_CREATED_TOPIC = "note.created"
NOTIFICATION_CREATED_TOPIC = "notification.created"
NOTIFICATIONS_READ_TOPIC = "notification.read"

# `@ann` or `@ann.lee+support`: an email's local part, not preceded by a word character (so the
# `@` inside an email address written in the note is not a mention).
_HANDLE = re.compile(r"(?<![\w.+@-])@([A-Za-z0-9][A-Za-z0-9._%+-]*)")


def mentioned_handles(body: str) -> set[str]:
    """The `@handle` tokens of a note, lower-cased, without a sentence's trailing dots."""
    return {match.rstrip(".").lower() for match in _HANDLE.findall(body) if match.rstrip(".")}


async def resolve_mentions(
    session: AsyncSession, tenant_id: int, body: str, user_ids: Iterable[int] = ()
) -> list[int]:
    """The users a note mentions: the explicit ids (all must be the tenant's) and the `@handles` found.

    A handle is the local part of a user's email, case-insensitively; handles nobody has are
    ignored (an `@` in prose is not an error). Unknown ids raise `InvalidInput`.
    """
    explicit = set(user_ids)
    handles = mentioned_handles(body)
    if not explicit and not handles:
        return []
    users = (await session.execute(select(User.id, User.email).where(User.tenant_id == tenant_id))).all()
    known = {row.id for row in users}
    unknown = sorted(explicit - known)
    if unknown:
        raise InvalidInput(
            "unknown_users", f"mentions: no user {', '.join(map(str, unknown))} in this tenant."
        )
    by_handle = {row.id for row in users if row.email.partition("@")[0].lower() in handles}
    return sorted(explicit | by_handle)


@dataclass(frozen=True, slots=True)
class NoteAdded:
    message: Message
    notified_user_ids: Sequence[int]


async def add_note(
    session: AsyncSession,
    *,
    tenant_id: int,
    user_id: int,
    conversation_id: int,
    body: str,
    mentions: Iterable[int] = (),
) -> NoteAdded:
    """Add a private note and notify the users it mentions (not its author), in the caller's transaction."""
    conversation = await conversation_of(session, tenant_id, conversation_id)
    mentioned = await resolve_mentions(session, tenant_id, body, mentions)
    message = Message(
        tenant_id=tenant_id,
        inbox_id=conversation.inbox_id,
        conversation_id=conversation.id,
        direction="outbound",
        sender_type="user",
        sender_id=user_id,
        body=body,
        attachments=[],
        # Never sent: "received" is the status of a message that is where it belongs.
        status=MessageStatus.RECEIVED,
        private=True,
        extra={"mentions": mentioned} if mentioned else {},
    )
    session.add(message)
    await session.flush()
    notifications = [
        Notification(
            tenant_id=tenant_id,
            user_id=mentioned_id,
            kind=NotificationKind.MENTION,
            conversation_id=conversation.id,
            message_id=message.id,
            actor_id=user_id,
        )
        for mentioned_id in mentioned
        if mentioned_id != user_id
    ]
    session.add_all(notifications)
    await session.flush()
    await emit(
        session,
        tenant_id,
        (
            NOTE_CREATED_TOPIC,
            {
                "message_id": message.id,
                "conversation_id": conversation.id,
                "inbox_id": conversation.inbox_id,
                "author_id": user_id,
                "private": True,
                "mentions": mentioned,
            },
        ),
        *(
            (
                NOTIFICATION_CREATED_TOPIC,
                {
                    "notification_id": n.id,
                    "user_id": n.user_id,
                    "kind": n.kind,
                    "conversation_id": n.conversation_id,
                    "message_id": n.message_id,
                    "actor_id": n.actor_id,
                },
            )
            for n in notifications
        ),
    )
    return NoteAdded(message, [n.user_id for n in notifications])


# Unread (0) before read (1); newest first within each.
_read_group = case((Notification.read_at.is_(None), 0), else_=1)


@dataclass(frozen=True, slots=True)
class NotificationPage:
    items: Sequence[Notification]
    # Where the next page starts: (read group, id) of the last item, or None on the last page.
    after: tuple[int, int] | None
    unread: int


async def list_notifications(
    session: AsyncSession,
    *,
    tenant_id: int,
    user_id: int,
    limit: int = 50,
    after: tuple[int, int] | None = None,
) -> NotificationPage:
    """The user's notifications, unread first, newest first within each; keyset-paginated."""
    mine = and_(Notification.tenant_id == tenant_id, Notification.user_id == user_id)
    stmt = select(Notification).where(mine)
    if after is not None:
        group, last_id = after
        stmt = stmt.where(or_(_read_group > group, and_(_read_group == group, Notification.id < last_id)))
    rows = (
        (await session.execute(stmt.order_by(_read_group, Notification.id.desc()).limit(limit + 1)))
        .scalars()
        .all()
    )
    unread = (
        await session.execute(select(func.count()).where(mine, Notification.read_at.is_(None)))
    ).scalar_one()
    if len(rows) <= limit:
        return NotificationPage(rows, None, unread)
    rows = rows[:limit]
    last = rows[-1]
    return NotificationPage(rows, (0 if last.read_at is None else 1, last.id), unread)


async def mark_read(
    session: AsyncSession, *, tenant_id: int, user_id: int, notification_id: int
) -> Notification:
    """Mark one of the user's notifications read; `NotFoundError` for anyone else's."""
    notification = (
        await session.execute(
            select(Notification).where(
                Notification.id == notification_id,
                Notification.tenant_id == tenant_id,
                Notification.user_id == user_id,
            )
        )
    ).scalar_one_or_none()
    if notification is None:
        raise NotFoundError("notification")
    if notification.read_at is None:
        notification.read_at = utcnow()
        await session.flush()
        await emit(
            session,
            tenant_id,
            (NOTIFICATIONS_READ_TOPIC, {"user_id": user_id, "notification_ids": [notification.id]}),
        )
    return notification


async def mark_all_read(session: AsyncSession, *, tenant_id: int, user_id: int) -> int:
    """Mark every unread notification of the user read; return how many."""
    ids = list(
        (
            await session.execute(
                update(Notification)
                .where(
                    Notification.tenant_id == tenant_id,
                    Notification.user_id == user_id,
                    Notification.read_at.is_(None),
                )
                .values(read_at=utcnow())
                .returning(Notification.id)
            )
        ).scalars()
    )
    if ids:
        await emit(
            session, tenant_id, (NOTIFICATIONS_READ_TOPIC, {"user_id": user_id, "notification_ids": ids})
        )
    return len(ids)
