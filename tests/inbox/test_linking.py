"""Linking a visitor's identity by the email they give, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from crm_core.models import ChannelIdentity, Contact
from inbox.linking import VisitorContact, announce, ensure_identity, link_email, normalised_email
from inbox.models import Conversation, Inbox, Message
from parley.db import Database
from parley.models import OutboxEvent
from tests.conftest import make_tenant


async def _email_contact(db: Database, tenant_id: int, address: str) -> int:
    async with db.transaction() as session:
        contact = Contact(tenant_id=tenant_id, name="Known", email=address, attributes={})
        session.add(contact)
        await session.flush()
        session.add(
            ChannelIdentity(tenant_id=tenant_id, contact_id=contact.id, kind="email", address=address)
        )
        return contact.id


async def _visitor_with_conversation(
    db: Database, tenant_id: int, address: str
) -> tuple[VisitorContact, int]:
    async with db.transaction() as session:
        visitor = await ensure_identity(session, tenant_id, "web_visitor", address)
        inbox = Inbox(tenant_id=tenant_id, name="chat", channel="webchat", settings={})
        session.add(inbox)
        await session.flush()
        conversation = Conversation(
            tenant_id=tenant_id,
            inbox_id=inbox.id,
            contact_id=visitor.contact_id,
            identity_id=visitor.identity_id,
            thread_key=address,
        )
        session.add(conversation)
        await session.flush()
        session.add(
            Message(
                tenant_id=tenant_id,
                inbox_id=inbox.id,
                conversation_id=conversation.id,
                direction="inbound",
                sender_type="contact",
                sender_id=visitor.contact_id,
                body="hi",
                status="received",
            )
        )
        await announce(session, tenant_id, visitor)
    return visitor, conversation.id


def test_emails_are_validated_and_lower_cased() -> None:
    assert normalised_email("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    with pytest.raises(ValueError, match="not an email address"):
        normalised_email("ann@")


async def test_ensure_identity_creates_once_and_then_finds(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    async with db.transaction() as session:
        first = await ensure_identity(session, tenant.tenant_id, "web_visitor", "1:v:abc")
    async with db.transaction() as session:
        again = await ensure_identity(session, tenant.tenant_id, "web_visitor", "1:v:abc")
    assert (again.identity_id, again.contact_id) == (first.identity_id, first.contact_id)
    assert first.events == [("contact.created", {"contact_id": first.contact_id})] and again.events == []


async def test_a_new_email_becomes_an_identity_of_the_visitors_contact(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    visitor, _ = await _visitor_with_conversation(db, tenant.tenant_id, "1:v:abc")
    async with db.transaction() as session:
        linked = await link_email(session, tenant.tenant_id, visitor, "ann@example.com")
        await announce(session, tenant.tenant_id, linked)
    assert linked.contact_id == visitor.contact_id and linked.changed == ["email"]
    async with db.sessionmaker() as session:
        contact = (
            await session.execute(select(Contact).where(Contact.id == visitor.contact_id))
        ).scalar_one()
        kinds = set((await session.execute(select(ChannelIdentity.kind, ChannelIdentity.contact_id))).all())
    assert contact.email == "ann@example.com"
    assert kinds == {("web_visitor", visitor.contact_id), ("email", visitor.contact_id)}


async def test_an_email_owned_by_another_contact_moves_identity_conversation_and_messages(
    db: Database,
) -> None:
    tenant = await make_tenant(db, "acme")
    owner = await _email_contact(db, tenant.tenant_id, "ann@example.com")
    visitor, conversation_id = await _visitor_with_conversation(db, tenant.tenant_id, "1:v:abc")
    async with db.transaction() as session:
        linked = await link_email(session, tenant.tenant_id, visitor, "ann@example.com")
        await announce(session, tenant.tenant_id, linked)
    assert linked.contact_id == owner
    async with db.sessionmaker() as session:
        identity_owner = (
            await session.execute(
                select(ChannelIdentity.contact_id).where(ChannelIdentity.id == visitor.identity_id)
            )
        ).scalar_one()
        conversation = (await session.execute(select(Conversation))).scalar_one()
        sender = (await session.execute(select(Message.sender_id))).scalar_one()
        old = (await session.execute(select(Contact).where(Contact.id == visitor.contact_id))).scalar_one()
        moved = (
            await session.execute(
                select(OutboxEvent.payload).where(OutboxEvent.topic == "contact.identity_moved")
            )
        ).scalar_one()
    assert identity_owner == owner and conversation.contact_id == owner and sender == owner
    assert old.tenant_id == tenant.tenant_id  # the old contact stays: merging is not this
    assert moved["conversation_ids"] == [conversation_id] and moved["from_contact_id"] == visitor.contact_id

    # Giving the same email again changes nothing.
    async with db.transaction() as session:
        again = await link_email(
            session, tenant.tenant_id, VisitorContact(visitor.identity_id, owner), "ann@example.com"
        )
    assert again.contact_id == owner and again.events == [] and again.changed == []
    async with db.sessionmaker() as session:
        assert len((await session.execute(select(ChannelIdentity.id))).all()) == 2


async def test_another_tenants_email_is_not_linked(db: Database) -> None:
    acme = await make_tenant(db, "acme")
    globex = await make_tenant(db, "globex")
    await _email_contact(db, globex.tenant_id, "ann@example.com")
    visitor, _ = await _visitor_with_conversation(db, acme.tenant_id, "1:v:abc")
    async with db.transaction() as session:
        linked = await link_email(session, acme.tenant_id, visitor, "ann@example.com")
    assert linked.contact_id == visitor.contact_id  # a new identity in acme, nothing of globex's moved


async def test_a_concurrent_claim_of_the_same_new_email_fails_the_second_transaction(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    first, _ = await _visitor_with_conversation(db, tenant.tenant_id, "1:v:abc")
    async with db.transaction() as session:
        second = await ensure_identity(session, tenant.tenant_id, "web_visitor", "1:v:def")
    async with db.transaction() as session:
        await link_email(session, tenant.tenant_id, first, "ann@example.com")
    # The second visitor read "nobody owns it" before the first committed: the unique key says no,
    # and the caller's replay then links to the first visitor's contact.
    with pytest.raises(IntegrityError):
        async with db.transaction() as session:
            session.add(
                ChannelIdentity(
                    tenant_id=tenant.tenant_id,
                    contact_id=second.contact_id,
                    kind="email",
                    address="ann@example.com",
                )
            )
            await session.flush()
    async with db.transaction() as session:
        replayed = await link_email(session, tenant.tenant_id, second, "ann@example.com")
    assert replayed.contact_id == first.contact_id
