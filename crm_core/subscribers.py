"""How conversations move the CRM: outbox handlers for new contacts, addresses, messages and deals.

Each handler runs in its own transaction and is idempotent (the outbox delivers at least once):
score events are unique per rule and source, lifecycle moves are no-ops when already made, and a
company is found before it is created.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.companies import link_company_from_email
from crm_core.deals import DEAL_OPENED_TOPIC
from crm_core.duplicates import fill_match_keys
from crm_core.lifecycle import advance_to, set_stage
from crm_core.lifecycle_stages import LifecycleStage
from crm_core.models import ChannelIdentity, Contact, LifecycleChange, ScoringRule
from crm_core.scoring import record_event
from inbox.models import Message
from parley.db import Database
from parley.outbox import Event, Handler

logger = logging.getLogger(__name__)

IDENTITY_ADDED_TOPIC = "contact.identity_added"
CAMPAIGN_REPLIED_TOPIC = "campaign.replied"
# A contact known only by a browser is a visitor; any way to reach them back makes them a lead.
_VISITOR_KINDS = frozenset({"web_visitor"})


class CrmSubscribers:
    """The CRM's outbox handlers, sharing one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def topics(self) -> dict[str, list[Handler]]:
        return {
            "contact.created": [self.contact_created],
            IDENTITY_ADDED_TOPIC: [self.identity_added],
            "message.received": [self.message_received],
            DEAL_OPENED_TOPIC: [self.deal_opened],
            CAMPAIGN_REPLIED_TOPIC: [self.campaign_replied],
        }

    async def _contact(self, session: AsyncSession, event: Event) -> Contact | None:
        contact_id = event.payload.get("contact_id")
        if not isinstance(contact_id, int):
            return None
        return (
            await session.execute(
                select(Contact).where(Contact.id == contact_id, Contact.tenant_id == event.tenant_id)
            )
        ).scalar_one_or_none()

    async def contact_created(self, event: Event) -> None:
        """Record the first stage, fill match keys, and treat an email identity as captured."""
        async with self.db.transaction() as session:
            contact = await self._contact(session, event)
            if contact is None:
                return  # merged or deleted since
            await fill_match_keys(session, contact.tenant_id, contact.id)
            has_history = (
                await session.execute(select(exists().where(LifecycleChange.contact_id == contact.id)))
            ).scalar_one()
            if not has_history:
                session.add(
                    LifecycleChange(
                        tenant_id=contact.tenant_id,
                        contact_id=contact.id,
                        from_stage=None,
                        to_stage=contact.lifecycle_stage,
                        reason="contact created",
                    )
                )
            identities = (
                (
                    await session.execute(
                        select(ChannelIdentity).where(ChannelIdentity.contact_id == contact.id)
                    )
                )
                .scalars()
                .all()
            )
            kinds = {i.kind for i in identities}
            if kinds and kinds <= _VISITOR_KINDS and not has_history:
                await set_stage(
                    session, contact, LifecycleStage.VISITOR, reason="first seen as a web visitor"
                )
            for identity in identities:
                await self._identity(session, contact, identity)

    async def identity_added(self, event: Event) -> None:
        """A new address for a contact: match key, company, `email.captured`, visitor to lead."""
        async with self.db.transaction() as session:
            contact = await self._contact(session, event)
            if contact is None:
                return
            await fill_match_keys(session, contact.tenant_id, contact.id)
            identity = (
                await session.execute(
                    select(ChannelIdentity).where(
                        ChannelIdentity.id == event.payload.get("identity_id"),
                        ChannelIdentity.contact_id == contact.id,
                    )
                )
            ).scalar_one_or_none()
            if identity is not None:
                await self._identity(session, contact, identity)

    async def _identity(self, session: AsyncSession, contact: Contact, identity: ChannelIdentity) -> None:
        if identity.kind in _VISITOR_KINDS:
            return
        await advance_to(session, contact, LifecycleStage.LEAD, reason=f"{identity.kind} captured")
        if identity.kind == "email":
            await link_company_from_email(session, contact, identity.address)
            await record_event(
                session,
                contact,
                "email.captured",
                f"identity:{identity.id}",
                {"email": identity.address},
                occurred_at=identity.created_at,
            )

    async def message_received(self, event: Event) -> None:
        """Score the contact's message with the tenant's message rules (keywords, intent)."""
        # Most tenants score no messages: one read instead of a write transaction per message
        # keeps the dispatcher off the ingest path's back (bench/ingest.py).
        async with self.db.sessionmaker() as session:
            scored = await session.execute(
                select(
                    exists().where(
                        ScoringRule.tenant_id == event.tenant_id,
                        ScoringRule.trigger == "message.received",
                        ScoringRule.enabled.is_(True),
                    )
                )
            )
            if not scored.scalar_one():
                return
        async with self.db.transaction() as session:
            contact = await self._contact(session, event)
            message = await session.get(Message, event.payload.get("message_id"))
            if contact is None or message is None or message.tenant_id != contact.tenant_id:
                return
            context: Mapping[str, Any] = {"text": message.body, "intent": (message.extra or {}).get("intent")}
            await record_event(
                session,
                contact,
                "message.received",
                f"message:{message.id}",
                context,
                occurred_at=message.created_at,
            )

    async def deal_opened(self, event: Event) -> None:
        async with self.db.transaction() as session:
            contact = await self._contact(session, event)
            if contact is not None:
                await record_event(
                    session,
                    contact,
                    "deal.opened",
                    f"deal:{event.payload.get('deal_id')}",
                    {"source": event.payload.get("source")},
                    occurred_at=event.created_at,
                )

    async def campaign_replied(self, event: Event) -> None:
        """Campaigns (a later issue) emit `campaign.replied` {contact_id, campaign_id}."""
        async with self.db.transaction() as session:
            contact = await self._contact(session, event)
            if contact is not None:
                await record_event(
                    session,
                    contact,
                    "campaign.replied",
                    f"campaign:{event.payload.get('campaign_id')}",
                    dict(event.payload),
                    occurred_at=event.created_at,
                )


def crm_subscribers(db: Database) -> dict[str, list[Handler]]:
    """The CRM's topics and handlers, to add to `gateway.wiring.build_subscribers`."""
    return CrmSubscribers(db).topics()
