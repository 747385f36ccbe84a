"""Conversations to look at: inboxes, contacts and messages written straight into the test database."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from crm_core.models import ChannelIdentity, Contact
from inbox.models import Conversation, ConversationStatus, Inbox, Message
from parley.db import Database, utcnow

_numbers = itertools.count(100)


async def make_inbox(
    db: Database, tenant_id: int, *, channel: str = "twilio_sms", name: str = "Support"
) -> int:
    async with db.transaction() as session:
        inbox = Inbox(tenant_id=tenant_id, name=name, channel=channel, settings={})
        session.add(inbox)
        await session.flush()
        return inbox.id


async def make_contact(
    db: Database, tenant_id: int, *, name: str | None = "Ann Customer", email: str | None = None
) -> tuple[int, int]:
    """A contact and their address: a phone number, or `email` when given."""
    phone = f"+1415555{next(_numbers):04d}"
    async with db.transaction() as session:
        contact = Contact(tenant_id=tenant_id, name=name, phone=phone, email=email, attributes={})
        session.add(contact)
        await session.flush()
        identity = ChannelIdentity(
            tenant_id=tenant_id,
            contact_id=contact.id,
            kind="email" if email else "phone",
            address=email or phone,
        )
        session.add(identity)
        await session.flush()
        return contact.id, identity.id


async def make_conversation(
    db: Database,
    tenant_id: int,
    inbox_id: int,
    contact: tuple[int, int],
    *,
    status: ConversationStatus = ConversationStatus.OPEN,
    assignee_id: int | None = None,
) -> int:
    contact_id, identity_id = contact
    async with db.transaction() as session:
        conversation = Conversation(
            tenant_id=tenant_id,
            inbox_id=inbox_id,
            contact_id=contact_id,
            identity_id=identity_id,
            status=status,
            assignee_id=assignee_id,
            resolved_at=utcnow() if status == ConversationStatus.RESOLVED else None,
        )
        session.add(conversation)
        await session.flush()
        return conversation.id


async def add_message(
    db: Database,
    conversation_id: int,
    body: str = "hello",
    *,
    inbound: bool = True,
    sender_type: str | None = None,
    sender_id: int | None = None,
    status: str | None = None,
    ago: float = 0,
    **fields: Any,
) -> int:
    """A message `ago` minutes in the past, from the customer (`inbound`) or an agent."""
    at = utcnow() - timedelta(minutes=ago)
    async with db.transaction() as session:
        conversation = await session.get_one(Conversation, conversation_id)
        message = Message(
            tenant_id=conversation.tenant_id,
            inbox_id=conversation.inbox_id,
            conversation_id=conversation_id,
            direction="inbound" if inbound else "outbound",
            sender_type=sender_type or ("contact" if inbound else "user"),
            sender_id=sender_id if sender_id is not None else (conversation.contact_id if inbound else None),
            body=body,
            status=status or ("received" if inbound else "sent"),
            created_at=at,
            **fields,
        )
        session.add(message)
        conversation.last_message_at = max(conversation.last_message_at or at, at)
        if inbound:
            conversation.last_inbound_at = max(conversation.last_inbound_at or at, at)
        await session.flush()
        return message.id
