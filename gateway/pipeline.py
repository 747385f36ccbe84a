"""The inbound pipeline: normalised events into contacts, conversations and messages, atomically.

One transaction per webhook: dedupe on the (inbox, provider message id) unique key, resolve the
sender's identity to a contact, find or open the conversation, append the message, write the
outbox events, commit. A race with a concurrent delivery of the same message (a provider retrying
while we were still answering) surfaces as an IntegrityError and the whole transaction is replayed,
at which point the message is found and reported as a duplicate.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeGuard, cast

import asyncpg
from sqlalchemy import Table, and_, bindparam, insert, literal, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from channels.base import ButtonReply, DeliveryStatus, InboundEvent, InboundMessage
from crm_core.consent import (
    ALL_PURPOSES,
    CONSENT_CHANGED_TOPIC,
    audit_consent,
    consent_event,
    record_consent,
)
from crm_core.models import ChannelIdentity, Contact
from inbox.media_fetch import MEDIA_PENDING_TOPIC
from inbox.models import Conversation, ConversationStatus, Message, MessageStatus
from inbox.runtime import InboxRuntime
from inbox.service import EARLY_STATUS_TOPIC, apply_delivery_status
from parley.audit import Actor
from parley.db import Database, utcnow
from parley.outbox import emit

logger = logging.getLogger(__name__)

MAX_REPLAYS = 5


@dataclass(slots=True)
class IngestResult:
    stored: list[int] = field(default_factory=list)
    duplicates: int = 0
    statuses_applied: int = 0
    statuses_unmatched: int = 0


async def ingest(db: Database, inbox: InboxRuntime, events: Sequence[InboundEvent]) -> IngestResult:
    """Store a webhook's events in one transaction; replay it if a concurrent delivery raced us."""
    if not db.is_sqlite and len(events) == 1 and _fits_fast_path(events[0], inbox):
        fast = await _ingest_in_one_statement(db, inbox, events[0])
        if fast is not None:
            return fast
    for attempt in range(1, MAX_REPLAYS + 1):
        result = IngestResult()
        try:
            async with db.transaction() as session:
                for event in events:
                    if isinstance(event, InboundMessage):
                        await _store_message(session, inbox, event, result)
                    else:
                        await _apply_status(session, inbox, event, result)
            return result
        except IntegrityError:
            if attempt == MAX_REPLAYS:
                raise
            logger.debug("inbox %s: concurrent delivery, replaying (attempt %s)", inbox.id, attempt)
    raise AssertionError("unreachable")


def _fits_fast_path(event: InboundEvent, inbox: InboxRuntime) -> TypeGuard[InboundMessage]:
    # Keywords change consent, a bare number may pick an option we offered as a numbered list,
    # and attachments the gateway must copy need one more event.
    return (
        isinstance(event, InboundMessage)
        and event.consent_change is None
        and event.thread_key is None
        and not event.thread_refs
        and event.conversation_id is None
        and event.part_of is None
        and _option_number(inbox, event) is None
        and not _fetches_media(inbox, event)
    )


def _fetches_media(inbox: InboxRuntime, event: InboundMessage) -> bool:
    return inbox.channel.fetches_media and any(a.url for a in event.attachments)


def _option_number(inbox: InboxRuntime, event: InboundMessage) -> int | None:
    """The option a bare number picks, on channels that showed our buttons as a numbered list."""
    if inbox.channel.capabilities.buttons:
        return None  # real buttons come back as button replies; a typed "2" is just text
    text = event.text.strip().rstrip(".)")
    return int(text) if event.button_reply is None and text.isdigit() and len(text) <= 2 else None


def _message_extra(event: InboundMessage, button_reply: ButtonReply | None = None) -> dict[str, Any]:
    """The provider's leftovers plus the typed content, as stored in `messages.extra`."""
    extra: dict[str, Any] = dict(event.extra)
    if event.location is not None:
        extra["location"] = asdict(event.location)
    if event.shared_contacts:
        extra["shared_contacts"] = [asdict(c) for c in event.shared_contacts]
    reply = button_reply or event.button_reply
    if reply is not None:
        extra["button_reply"] = asdict(reply)
    for key, value in (("call", event.call), ("recording", event.recording), ("voicemail", event.voicemail)):
        if value is not None:
            extra[key] = asdict(value)
    return extra


def _attachments(event: InboundMessage) -> list[dict[str, Any]]:
    return [
        {"url": a.url, "content_type": a.content_type, "filename": a.filename, "size": a.size}
        for a in event.attachments
    ]


def _received(message_id: int, conversation_id: int, inbox_id: int, contact_id: int) -> dict[str, int]:
    """The payload of `message.received`; `_RETURNING_SENDER` builds the same object in SQL."""
    return {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "inbox_id": inbox_id,
        "contact_id": contact_id,
    }


# PostgreSQL only: the commonest case, a known sender writing into their open conversation, as one
# statement. A single statement is atomic, so it needs no explicit transaction: six round trips
# (BEGIN, lookup, update, insert, insert, COMMIT) become one, which is most of the gateway's
# ingest cost (bench/ingest.py). It stores nothing, and `ingest` takes the general path, when the
# sender or the conversation is new, the message is a duplicate, or anything races it.
# tests/test_pipeline_paths.py keeps the two paths writing the same rows.
_RETURNING_SENDER = """
WITH found AS (
    SELECT
        (SELECT m.id FROM messages m WHERE m.inbox_id = :inbox_id AND m.provider_message_id = :pmid)
            AS duplicate_id,
        c.id AS conversation_id
    FROM channel_identities ci
    JOIN conversations c
        ON c.contact_id = ci.contact_id AND c.inbox_id = :inbox_id AND c.status <> 'resolved'
            AND c.thread_key IS NULL
    WHERE ci.tenant_id = :tenant_id AND ci.kind = :kind AND ci.address = :address
), touched AS (
    UPDATE conversations
    SET last_message_at = :now, last_inbound_at = :now, updated_at = :now, status = 'open'
    FROM found
    WHERE conversations.id = found.conversation_id AND found.duplicate_id IS NULL
        AND conversations.status <> 'resolved'
    RETURNING conversations.id, conversations.contact_id
), named AS (
    UPDATE contacts SET name = CAST(:name AS varchar), updated_at = :now
    FROM touched
    WHERE contacts.id = touched.contact_id AND contacts.name IS NULL AND CAST(:name AS varchar) IS NOT NULL
), message AS (
    INSERT INTO messages (tenant_id, inbox_id, conversation_id, direction, sender_type, sender_id,
        body, attachments, provider_message_id, status, attempts, extra, created_at, updated_at)
    SELECT :tenant_id, :inbox_id, touched.id, 'inbound', 'contact', touched.contact_id,
        :body, CAST(:attachments AS jsonb), :pmid, 'received', 0, CAST(:extra AS jsonb), :now, :now
    FROM touched
    RETURNING id, conversation_id, sender_id
), event AS (
    INSERT INTO outbox_events (tenant_id, topic, payload, created_at, available_at, attempts, handled)
    SELECT :tenant_id, 'message.received',
        jsonb_build_object('message_id', id, 'conversation_id', conversation_id,
                           'inbox_id', CAST(:inbox_id AS bigint), 'contact_id', sender_id),
        :now, :now, 0, CAST('[]' AS jsonb)
    FROM message
)
SELECT (SELECT duplicate_id FROM found) AS duplicate_id, (SELECT id FROM message) AS message_id
"""


# The other common case, a sender never seen before: contact, identity, conversation, message and
# their three events in one statement. A sender who is known after all, or a duplicate message,
# violates a unique key and aborts the whole statement, and `ingest` takes the general path.
_NEW_SENDER = """
WITH contact AS (
    INSERT INTO contacts (tenant_id, name, email, phone, attributes, created_at, updated_at)
    VALUES (:tenant_id, :name, :email, :phone, CAST('{}' AS jsonb), :now, :now)
    RETURNING id
), identity AS (
    INSERT INTO channel_identities (tenant_id, contact_id, kind, address, created_at)
    SELECT :tenant_id, contact.id, :kind, :address, :now FROM contact
    RETURNING id, contact_id
), conversation AS (
    INSERT INTO conversations (tenant_id, inbox_id, contact_id, identity_id, status, last_message_at,
        last_inbound_at, created_at, updated_at)
    SELECT :tenant_id, :inbox_id, identity.contact_id, identity.id, 'open', :now, :now, :now, :now
    FROM identity
    RETURNING id, contact_id
), message AS (
    INSERT INTO messages (tenant_id, inbox_id, conversation_id, direction, sender_type, sender_id,
        body, attachments, provider_message_id, status, attempts, extra, created_at, updated_at)
    SELECT :tenant_id, :inbox_id, conversation.id, 'inbound', 'contact', conversation.contact_id,
        :body, CAST(:attachments AS jsonb), :pmid, 'received', 0, CAST(:extra AS jsonb), :now, :now
    FROM conversation
    RETURNING id, conversation_id, sender_id
), events AS (
    INSERT INTO outbox_events (tenant_id, topic, payload, created_at, available_at, attempts, handled)
    SELECT :tenant_id, topic, payload, :now, :now, 0, CAST('[]' AS jsonb)
    FROM (
        SELECT 1, 'contact.created', jsonb_build_object('contact_id', sender_id) FROM message
        UNION ALL
        SELECT 2, 'conversation.opened', jsonb_build_object('conversation_id', conversation_id,
            'inbox_id', CAST(:inbox_id AS bigint), 'contact_id', sender_id) FROM message
        UNION ALL
        SELECT 3, 'message.received', jsonb_build_object('message_id', id, 'conversation_id',
            conversation_id, 'inbox_id', CAST(:inbox_id AS bigint), 'contact_id', sender_id) FROM message
    ) AS e (ord, topic, payload)
    ORDER BY ord
)
SELECT NULL AS duplicate_id, id AS message_id FROM message
"""


async def _ingest_in_one_statement(
    db: Database, inbox: InboxRuntime, event: InboundMessage
) -> IngestResult | None:
    """Store the message with one statement if it is a common case, or return None for the general path."""
    params = {
        "inbox_id": inbox.id,
        "pmid": event.provider_message_id,
        "tenant_id": inbox.tenant_id,
        "kind": event.sender.kind,
        "address": event.sender.value,
        "now": utcnow(),
        "name": event.sender_name,
        "body": event.text,
        "attachments": json.dumps(_attachments(event)),
        "extra": json.dumps(_message_extra(event)),
    }
    async with db.engine.connect() as conn:
        # The driver's own connection: outside a transaction asyncpg autocommits each statement,
        # and it skips SQLAlchemy's adaptation layer, the largest CPU cost left on this path.
        pg = (await conn.get_raw_connection()).driver_connection
        assert pg is not None
        try:
            row = await pg.fetchrow(_RETURNING_SENDER_SQL, *_RETURNING_SENDER_ARGS(params))
            if row["duplicate_id"] is None and row["message_id"] is None:
                contact = {
                    "phone": event.sender.value if event.sender.kind == "phone" else None,
                    "email": event.sender.value if event.sender.kind == "email" else None,
                }
                row = await pg.fetchrow(_NEW_SENDER_SQL, *_NEW_SENDER_ARGS(params | contact))
        except asyncpg.IntegrityConstraintViolationError:
            return None  # known sender without an open conversation, or a concurrent delivery
        except _BROKEN_CONNECTION as e:  # the connection itself broke: never hand it out again
            await conn.invalidate()
            raise OperationalError("one-statement ingest", None, e) from e
        except asyncpg.PostgresError as e:  # a failed statement: the same 503 (provider retries)
            raise OperationalError("one-statement ingest", None, e) from e
    if row["duplicate_id"] is not None:
        return IngestResult(duplicates=1)
    if row["message_id"] is not None:
        return IngestResult(stored=[row["message_id"]])
    return None


# What asyncpg raises when the connection, not the statement, is at fault: closed by the server,
# or left mid-operation by an interrupted call ("another operation is in progress").
_BROKEN_CONNECTION = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


def _positional(statement: str) -> tuple[str, Callable[[Mapping[str, Any]], list[Any]]]:
    """asyncpg's $1, $2… for a statement written with :names, and the arguments in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    sql = re.sub(r"(?<!:):([a-z_]+)", number, statement)
    return sql, lambda params: [params[name] for name in names]


_RETURNING_SENDER_SQL, _RETURNING_SENDER_ARGS = _positional(_RETURNING_SENDER)
_NEW_SENDER_SQL, _NEW_SENDER_ARGS = _positional(_NEW_SENDER)


# Built once: constructing statements per request cost more than running them (bench/ingest.py).
_messages = cast(Table, Message.__table__)
_conversations = cast(Table, Conversation.__table__)
_identities = cast(Table, ChannelIdentity.__table__)
_contacts = cast(Table, Contact.__table__)

_LOOKUP = (
    select(
        select(_messages.c.id)
        .where(
            _messages.c.inbox_id == bindparam("inbox_id"),
            _messages.c.provider_message_id == bindparam("pmid"),
        )
        .scalar_subquery()
        .label("duplicate_id"),
        _identities.c.id.label("identity_id"),
        _identities.c.contact_id,
        _conversations.c.id.label("conversation_id"),
    )
    .select_from(select(literal(1).label("one")).subquery())
    .outerjoin(
        _identities,
        and_(
            _identities.c.tenant_id == bindparam("tenant_id"),
            _identities.c.kind == bindparam("kind"),
            _identities.c.address == bindparam("address"),
        ),
    )
    .outerjoin(
        _conversations,
        and_(
            _conversations.c.contact_id == _identities.c.contact_id,
            _conversations.c.inbox_id == bindparam("inbox_id"),
            _conversations.c.status != ConversationStatus.RESOLVED,
            _conversations.c.thread_key.is_(None),
        ),
    )
)
# A threaded channel's conversation is its thread's, whoever writes in it, resolved or not.
_THREAD = select(_conversations.c.id, _conversations.c.status).where(
    _conversations.c.inbox_id == bindparam("inbox_id"), _conversations.c.thread_key == bindparam("thread_key")
)
# A reply joins the conversation of a message it names (email's In-Reply-To / References)…
_REFERENCED = (
    select(_messages.c.provider_message_id, _conversations.c.id, _conversations.c.status)
    .join(_conversations, _conversations.c.id == _messages.c.conversation_id)
    .where(
        _messages.c.inbox_id == bindparam("inbox_id"),
        _messages.c.provider_message_id.in_(bindparam("refs", expanding=True)),
    )
)
# …or the one a channel proved it belongs to, if that is in this inbox.
_PROVEN = select(_conversations.c.id, _conversations.c.status).where(
    _conversations.c.id == bindparam("conversation_id"), _conversations.c.inbox_id == bindparam("inbox_id")
)
_INSERT_CONTACT = insert(_contacts).returning(_contacts.c.id)
_NAME_UNNAMED = (
    update(_contacts)
    .where(_contacts.c.id == bindparam("contact_id"), _contacts.c.name.is_(None))
    .values(name=bindparam("sender_name"), updated_at=bindparam("now"))
)
_INSERT_IDENTITY = insert(_identities).returning(_identities.c.id)
_INSERT_CONVERSATION = insert(_conversations).returning(_conversations.c.id)
# A customer writing again wakes a snoozed or pending conversation, or a resolved thread.
_TOUCH_CONVERSATION = (
    update(_conversations)
    .where(_conversations.c.id == bindparam("conversation_id"))
    .values(
        last_message_at=bindparam("now"),
        last_inbound_at=bindparam("now"),
        updated_at=bindparam("now"),
        status=ConversationStatus.OPEN,
        resolved_at=None,
    )
)
# A message that belongs to an earlier one (a call's later events) joins its conversation quietly:
# no reopening, and not the customer writing (`last_inbound_at` stays).
_PART_OF = (
    select(_conversations.c.id.label("conversation_id"), _conversations.c.contact_id)
    .join(_messages, _messages.c.conversation_id == _conversations.c.id)
    .where(
        _messages.c.inbox_id == bindparam("inbox_id"), _messages.c.provider_message_id == bindparam("pmid")
    )
)
_TOUCH_QUIETLY = (
    update(_conversations)
    .where(_conversations.c.id == bindparam("conversation_id"))
    .values(last_message_at=bindparam("now"), updated_at=bindparam("now"))
)
_INSERT_MESSAGE = insert(_messages).returning(_messages.c.id)


# The options of the last message we sent with buttons, for a channel that showed them as a list.
_LAST_OFFER = (
    select(_messages.c.extra)
    .where(
        _messages.c.conversation_id == bindparam("conversation_id"),
        _messages.c.direction == "outbound",
        _messages.c.private.is_(False),  # a note in between does not withdraw the options offered
    )
    .order_by(_messages.c.id.desc())
    .limit(1)
)


async def _picked_option(
    conn: AsyncConnection, inbox: InboxRuntime, conversation_id: int, event: InboundMessage
) -> ButtonReply | None:
    """A reply of "2" to a numbered list of options picks the second option."""
    number = _option_number(inbox, event)
    if number is None:
        return None
    extra = (await conn.execute(_LAST_OFFER, {"conversation_id": conversation_id})).scalar()
    buttons = (extra or {}).get("buttons") or []
    if not 1 <= number <= len(buttons):
        return None
    return ButtonReply(id=str(buttons[number - 1]["id"]), title=str(buttons[number - 1]["title"]))


async def _answered_conversation(conn: AsyncConnection, inbox: InboxRuntime, event: InboundMessage) -> Any:
    """The conversation a reply belongs to by proof or by the messages it names, else None."""
    if event.conversation_id is not None:
        proven = (
            await conn.execute(_PROVEN, {"conversation_id": event.conversation_id, "inbox_id": inbox.id})
        ).one_or_none()
        if proven is not None:
            return proven
    if not event.thread_refs:
        return None
    rows = (await conn.execute(_REFERENCED, {"inbox_id": inbox.id, "refs": list(event.thread_refs)})).all()
    by_ref = {row.provider_message_id: row for row in rows}
    # The nearest reference that is stored wins: a reply to the latest message of a thread.
    return next((by_ref[ref] for ref in event.thread_refs if ref in by_ref), None)


async def _store_message(
    session: AsyncSession, inbox: InboxRuntime, event: InboundMessage, result: IngestResult
) -> None:
    tenant_id = inbox.tenant_id
    conn = await session.connection()
    found = (
        await conn.execute(
            _LOOKUP,
            {
                "inbox_id": inbox.id,
                "pmid": event.provider_message_id,
                "tenant_id": tenant_id,
                "kind": event.sender.kind,
                "address": event.sender.value,
            },
        )
    ).one()
    if found.duplicate_id is not None:
        result.duplicates += 1
        return

    now = utcnow()
    contact_id, identity_id, conversation_id = found.contact_id, found.identity_id, found.conversation_id
    events: list[tuple[str, dict[str, Any]]] = []
    joined = None
    if event.part_of is not None:
        joined = (await conn.execute(_PART_OF, {"inbox_id": inbox.id, "pmid": event.part_of})).one_or_none()
    if joined is not None:
        contact_id, conversation_id = joined.contact_id, joined.conversation_id
    else:
        thread = await _answered_conversation(conn, inbox, event)
        if thread is None and event.thread_key is not None:
            thread = (
                await conn.execute(_THREAD, {"inbox_id": inbox.id, "thread_key": event.thread_key})
            ).one_or_none()
        if thread is not None or event.thread_key is not None:
            conversation_id = None if thread is None else thread.id
            if thread is not None and thread.status == ConversationStatus.RESOLVED:
                events.append(("conversation.reopened", {"conversation_id": thread.id, "inbox_id": inbox.id}))
    if identity_id is None and joined is None:
        contact_id = (
            await conn.execute(
                _INSERT_CONTACT,
                {
                    "tenant_id": tenant_id,
                    "name": event.sender_name,
                    "phone": event.sender.value if event.sender.kind == "phone" else None,
                    "email": event.sender.value if event.sender.kind == "email" else None,
                    "attributes": {},
                    "created_at": now,
                    "updated_at": now,
                },
            )
        ).scalar_one()
        identity_id = (
            await conn.execute(
                _INSERT_IDENTITY,
                {
                    "tenant_id": tenant_id,
                    "contact_id": contact_id,
                    "kind": event.sender.kind,
                    "address": event.sender.value,
                    "created_at": now,
                },
            )
        ).scalar_one()
        events.append(("contact.created", {"contact_id": contact_id}))
    elif event.sender_name:
        # A contact first seen without a name (an SMS) gets the one a later channel reports.
        await conn.execute(
            _NAME_UNNAMED, {"contact_id": contact_id, "sender_name": event.sender_name, "now": now}
        )

    if conversation_id is None:
        conversation_id = (
            await conn.execute(
                _INSERT_CONVERSATION,
                {
                    "tenant_id": tenant_id,
                    "inbox_id": inbox.id,
                    "contact_id": contact_id,
                    "identity_id": identity_id,
                    "status": ConversationStatus.OPEN,
                    "thread_key": event.thread_key,
                    "last_message_at": now,
                    "last_inbound_at": now,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        ).scalar_one()
        events.append(
            (
                "conversation.opened",
                {"conversation_id": conversation_id, "inbox_id": inbox.id, "contact_id": contact_id},
            )
        )
    else:
        touch = _TOUCH_CONVERSATION if joined is None else _TOUCH_QUIETLY
        await conn.execute(touch, {"conversation_id": conversation_id, "now": now})

    message_id = (
        await conn.execute(
            _INSERT_MESSAGE,
            {
                "tenant_id": tenant_id,
                "inbox_id": inbox.id,
                "conversation_id": conversation_id,
                "direction": "inbound",
                "sender_type": "contact",
                "sender_id": contact_id,
                "body": event.text,
                "attachments": _attachments(event),
                "provider_message_id": event.provider_message_id,
                "status": MessageStatus.RECEIVED,
                "attempts": 0,
                "extra": _message_extra(event, await _picked_option(conn, inbox, conversation_id, event)),
                "created_at": now,
                "updated_at": now,
            },
        )
    ).scalar_one()
    events.append(("message.received", _received(message_id, conversation_id, inbox.id, contact_id)))
    if _fetches_media(inbox, event):
        events.append((MEDIA_PENDING_TOPIC, {"message_id": message_id, "inbox_id": inbox.id}))

    if event.consent_change is not None:
        granted = event.consent_change == "opt_in"
        channel, source = inbox.channel.consent_channel, f"keyword:{event.text.strip().upper()[:40]}"
        changed = await record_consent(
            session,
            tenant_id=tenant_id,
            contact_id=contact_id,
            channel=channel,
            granted=granted,
            source=source,
        )
        if changed:
            events.append((CONSENT_CHANGED_TOPIC, consent_event(contact_id, channel, ALL_PURPOSES, granted)))
            await audit_consent(
                session,
                tenant_id=tenant_id,
                contact_id=contact_id,
                channel=channel,
                purpose=ALL_PURPOSES,
                granted=granted,
                source=source,
                actor=Actor("contact", contact_id),
            )

    await emit(session, tenant_id, *events)
    result.stored.append(message_id)


async def _apply_status(
    session: AsyncSession, inbox: InboxRuntime, event: DeliveryStatus, result: IngestResult
) -> None:
    outcome = await apply_delivery_status(session, tenant_id=inbox.tenant_id, inbox_id=inbox.id, status=event)
    if outcome == "applied":
        result.statuses_applied += 1
        return
    result.statuses_unmatched += 1
    if outcome == "unknown":
        # Most likely the callback overtook the worker that is about to store the provider's id.
        await emit(
            session,
            inbox.tenant_id,
            (
                EARLY_STATUS_TOPIC,
                {
                    "inbox_id": inbox.id,
                    "provider_message_id": event.provider_message_id,
                    "status": event.status,
                    "error_code": event.error_code,
                    "error_message": event.error_message,
                },
            ),
        )
