"""The inbound pipeline: normalised events into contacts, conversations and messages, atomically.

One transaction per webhook: dedupe on the (inbox, provider message id) unique key, resolve the
sender's identity to a contact, find or open the conversation, append the message, write the
outbox events, commit. A race with a concurrent delivery of the same message (a provider retrying
while we were still answering) surfaces as an IntegrityError and the whole transaction is replayed,
at which point the message is found and reported as a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from channels.base import DeliveryStatus, InboundEvent, InboundMessage
from crm_core.consent import record_consent
from crm_core.models import ChannelIdentity, Contact
from inbox.models import Conversation, ConversationStatus, Message, MessageStatus
from inbox.runtime import InboxRuntime
from inbox.service import EARLY_STATUS_TOPIC, apply_delivery_status
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


async def _store_message(
    session: AsyncSession, inbox: InboxRuntime, event: InboundMessage, result: IngestResult
) -> None:
    tenant_id = inbox.tenant_id
    duplicate = (
        select(Message.id)
        .where(Message.inbox_id == inbox.id, Message.provider_message_id == event.provider_message_id)
        .scalar_subquery()
    )
    one = select(literal(1).label("one")).subquery()
    lookup = (
        select(
            duplicate.label("duplicate_id"), ChannelIdentity.id, ChannelIdentity.contact_id, Conversation.id
        )
        .select_from(one)
        .outerjoin(
            ChannelIdentity,
            and_(
                ChannelIdentity.tenant_id == tenant_id,
                ChannelIdentity.kind == event.sender.kind,
                ChannelIdentity.address == event.sender.value,
            ),
        )
        .outerjoin(
            Conversation,
            and_(
                Conversation.contact_id == ChannelIdentity.contact_id,
                Conversation.inbox_id == inbox.id,
                Conversation.status != ConversationStatus.RESOLVED,
            ),
        )
    )
    duplicate_id, identity_id, contact_id, conversation_id = (await session.execute(lookup)).one()
    if duplicate_id is not None:
        result.duplicates += 1
        return

    now = utcnow()
    events: list[tuple[str, dict[str, Any]]] = []
    if identity_id is None:
        contact_id = (
            await session.execute(
                insert(Contact)
                .values(
                    tenant_id=tenant_id,
                    name=event.sender_name,
                    phone=event.sender.value if event.sender.kind == "phone" else None,
                    email=event.sender.value if event.sender.kind == "email" else None,
                    attributes={},
                    created_at=now,
                    updated_at=now,
                )
                .returning(Contact.id)
            )
        ).scalar_one()
        identity_id = (
            await session.execute(
                insert(ChannelIdentity)
                .values(
                    tenant_id=tenant_id,
                    contact_id=contact_id,
                    kind=event.sender.kind,
                    address=event.sender.value,
                    created_at=now,
                )
                .returning(ChannelIdentity.id)
            )
        ).scalar_one()
        events.append(("contact.created", {"contact_id": contact_id}))

    if conversation_id is None:
        conversation_id = (
            await session.execute(
                insert(Conversation)
                .values(
                    tenant_id=tenant_id,
                    inbox_id=inbox.id,
                    contact_id=contact_id,
                    identity_id=identity_id,
                    status=ConversationStatus.OPEN,
                    last_message_at=now,
                    created_at=now,
                    updated_at=now,
                )
                .returning(Conversation.id)
            )
        ).scalar_one()
        events.append(
            (
                "conversation.opened",
                {"conversation_id": conversation_id, "inbox_id": inbox.id, "contact_id": contact_id},
            )
        )
    else:
        # A customer writing again wakes a snoozed or pending conversation.
        await session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(last_message_at=now, updated_at=now, status=ConversationStatus.OPEN)
        )

    message_id = (
        await session.execute(
            insert(Message)
            .values(
                tenant_id=tenant_id,
                inbox_id=inbox.id,
                conversation_id=conversation_id,
                direction="inbound",
                sender_type="contact",
                sender_id=contact_id,
                body=event.text,
                attachments=[
                    {"url": a.url, "content_type": a.content_type, "filename": a.filename, "size": a.size}
                    for a in event.attachments
                ],
                provider_message_id=event.provider_message_id,
                status=MessageStatus.RECEIVED,
                attempts=0,
                extra=dict(event.extra),
                created_at=now,
                updated_at=now,
            )
            .returning(Message.id)
        )
    ).scalar_one()
    events.append(
        (
            "message.received",
            {
                "message_id": message_id,
                "conversation_id": conversation_id,
                "inbox_id": inbox.id,
                "contact_id": contact_id,
            },
        )
    )

    if event.consent_change is not None:
        granted = event.consent_change == "opt_in"
        changed = await record_consent(
            session,
            tenant_id=tenant_id,
            contact_id=contact_id,
            channel=inbox.channel.consent_channel,
            granted=granted,
            source=f"keyword:{event.text.strip().upper()[:40]}",
        )
        if changed:
            events.append(
                (
                    "contact.consent_changed",
                    {"contact_id": contact_id, "channel": inbox.channel.consent_channel, "granted": granted},
                )
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
