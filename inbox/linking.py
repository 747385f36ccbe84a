"""Identities a customer gives us outside a message: a chat visitor's name and email.

An email address given in web chat links the visitor to the contact that already owns that address
(its email conversations), moving the visitor's identity and conversations there in the caller's
transaction. This is deliberately not a contact merge: the old contact stays, with whatever else it
has; merging contacts is the CRM's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import ChannelIdentity, Contact
from inbox.models import Conversation, Message
from parley.db import utcnow
from parley.outbox import emit

EMAIL_KIND = "email"
IDENTITY_MOVED_TOPIC = "contact.identity_moved"
IDENTITY_ADDED_TOPIC = "contact.identity_added"


def normalised_email(value: str) -> str:
    """The address as email identities store it (lower case); ValueError if it is not an address."""
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as e:
        raise ValueError(f"{value!r} is not an email address: {e}") from None
    return checked.normalized.strip().lower()


@dataclass(slots=True)
class VisitorContact:
    """Where an identity stands after `ensure_identity` / `link_email`."""

    identity_id: int
    contact_id: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Contact fields set along the way, announced once as `contact.updated`.
    changed: list[str] = field(default_factory=list)


async def ensure_identity(session: AsyncSession, tenant_id: int, kind: str, address: str) -> VisitorContact:
    """The identity's contact, creating both if the address is new (as the inbound pipeline would)."""
    found = (
        await session.execute(
            select(ChannelIdentity.id, ChannelIdentity.contact_id).where(
                ChannelIdentity.tenant_id == tenant_id,
                ChannelIdentity.kind == kind,
                ChannelIdentity.address == address,
            )
        )
    ).one_or_none()
    if found is not None:
        return VisitorContact(found.id, found.contact_id)
    contact = Contact(tenant_id=tenant_id, attributes={})
    session.add(contact)
    await session.flush()
    identity = ChannelIdentity(tenant_id=tenant_id, contact_id=contact.id, kind=kind, address=address)
    session.add(identity)
    await session.flush()
    return VisitorContact(identity.id, contact.id, [("contact.created", {"contact_id": contact.id})])


async def set_name_if_unknown(session: AsyncSession, visitor: VisitorContact, name: str) -> None:
    """Give the contact a name unless it has one: a visitor must not rename someone else's contact."""
    result = await session.execute(
        update(Contact)
        .where(Contact.id == visitor.contact_id, Contact.name.is_(None))
        .values(name=name, updated_at=utcnow())
    )
    if result.rowcount:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
        visitor.changed.append("name")


async def link_email(
    session: AsyncSession, tenant_id: int, visitor: VisitorContact, email: str
) -> VisitorContact:
    """Attach `email` (already normalised) to the visitor's contact, or move the visitor to its owner.

    If another contact has the email identity, the visitor's identity, its conversations and the
    sender of their inbound messages move to that contact, announced as `contact.identity_moved`.
    Raises IntegrityError if a concurrent request added the same address: replay the transaction.
    """
    owner = (
        await session.execute(
            select(ChannelIdentity.contact_id).where(
                ChannelIdentity.tenant_id == tenant_id,
                ChannelIdentity.kind == EMAIL_KIND,
                ChannelIdentity.address == email,
            )
        )
    ).scalar_one_or_none()
    events = list(visitor.events)
    if owner is None:
        identity = ChannelIdentity(
            tenant_id=tenant_id, contact_id=visitor.contact_id, kind=EMAIL_KIND, address=email
        )
        session.add(identity)
        await session.flush()
        result = await session.execute(
            update(Contact)
            .where(Contact.id == visitor.contact_id, Contact.email.is_(None))
            .values(email=email, updated_at=utcnow())
        )
        changed = ["email"] if result.rowcount else []  # type: ignore[attr-defined]
        events.append(
            (
                IDENTITY_ADDED_TOPIC,
                {"contact_id": visitor.contact_id, "identity_id": identity.id, "kind": EMAIL_KIND},
            )
        )
        return VisitorContact(visitor.identity_id, visitor.contact_id, events, [*visitor.changed, *changed])
    if owner == visitor.contact_id:
        return VisitorContact(visitor.identity_id, visitor.contact_id, events)

    await session.execute(
        update(ChannelIdentity).where(ChannelIdentity.id == visitor.identity_id).values(contact_id=owner)
    )
    moved = list(
        (
            await session.execute(
                update(Conversation)
                .where(Conversation.identity_id == visitor.identity_id, Conversation.tenant_id == tenant_id)
                .values(contact_id=owner, updated_at=utcnow())
                .returning(Conversation.id)
            )
        ).scalars()
    )
    if moved:
        await session.execute(
            update(Message)
            .where(Message.conversation_id.in_(moved), Message.sender_type == "contact")
            .values(sender_id=owner)
        )
    events.append(
        (
            IDENTITY_MOVED_TOPIC,
            {
                "identity_id": visitor.identity_id,
                "from_contact_id": visitor.contact_id,
                "to_contact_id": owner,
                "conversation_ids": sorted(moved),
                "reason": "email_given",
            },
        )
    )
    return VisitorContact(visitor.identity_id, owner, events)


async def announce(session: AsyncSession, tenant_id: int, visitor: VisitorContact) -> None:
    """Write the events gathered along the way."""
    events = list(visitor.events)
    if visitor.changed:
        events.append(("contact.updated", {"contact_id": visitor.contact_id, "changed": visitor.changed}))
    await emit(session, tenant_id, *events)
