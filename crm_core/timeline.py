"""The CRM timeline's stored half: one entry per deal, ticket, campaign, consent, lifecycle or merge event.

Outbox handlers write `timeline_entries`; each entry remembers the outbox event that caused it
(`source_event_id`, unique), so a handler delivered twice writes once. Messages and calls are read
from `messages` when the feed is shown (`inbox.timeline_feed`) instead of being copied here: a copy
would be a second row and a second transaction for every message on the ingest path, for a feed
that is read far less often than messages arrive.

An event about a contact merged away since it was written lands on the survivor (followed through
`contact_merges`); the merge itself moves the merged contact's entries (`crm_core.merge` re-points
every table that refers to contacts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.deals import DEAL_OPENED_TOPIC, DEAL_STAGE_CHANGED_TOPIC
from crm_core.lifecycle import LIFECYCLE_CHANGED_TOPIC
from crm_core.merge import MERGED_TOPIC
from crm_core.models import (
    Contact,
    ContactMerge,
    Deal,
    Pipeline,
    PipelineStage,
    TimelineEntry,
)
from parley.db import Database
from parley.outbox import Event, Handler

logger = logging.getLogger(__name__)

CONSENT_CHANGED_TOPIC = "contact.consent_changed"
# Topics of packages being built alongside (tickets, campaigns): subscribed by name.
TICKET_TOPICS = ("ticket.created", "ticket.updated", "ticket.status_changed", "csat.rated")
CAMPAIGN_TOPICS = ("campaign.sent", "campaign.replied")

# Every kind an entry of the feed can have; messages and calls come from `messages`.
MESSAGE_KINDS = ("message.in", "message.out", "call", "voicemail")
STORED_KINDS = (
    "conversation.opened",
    "conversation.resolved",
    "conversation.reopened",
    "deal.opened",
    "deal.stage_changed",
    "deal.won",
    "deal.lost",
    *TICKET_TOPICS,
    *CAMPAIGN_TOPICS,
    "consent.changed",
    "lifecycle.changed",
    "contact.merged",
)
KINDS = (*MESSAGE_KINDS, *STORED_KINDS)

_MAX_MERGE_HOPS = 20
_MAX_TEXT = 500
_MAX_ITEMS = 50


def _value(value: Any, depth: int) -> tuple[bool, Any]:
    """A JSON value kept for an entry: scalars (text shortened), and small lists and maps of them."""
    if isinstance(value, str):
        return True, value[:_MAX_TEXT]
    if value is None or isinstance(value, bool | int | float):
        return True, value
    if depth > 0 and isinstance(value, list):
        kept = [v for ok, v in (_value(item, depth - 1) for item in value[:_MAX_ITEMS]) if ok]
        return True, kept
    if depth > 0 and isinstance(value, dict):
        return True, plain(value, depth=depth - 1)
    return False, None


def plain(payload: Mapping[str, Any], *skip: str, depth: int = 2) -> dict[str, Any]:
    """The payload's values for an entry's `data`: scalars and small nested lists and maps of them
    (a ticket's `changes`), text shortened, nothing deeper or larger."""
    data: dict[str, Any] = {}
    for key, value in list(payload.items())[:_MAX_ITEMS]:
        if key in skip or not isinstance(key, str):
            continue
        ok, kept = _value(value, depth)
        if ok:
            data[key] = kept
    return data


async def live_contact(session: AsyncSession, tenant_id: int | None, contact_id: Any) -> int | None:
    """The tenant's contact with this id, or the one it was merged into (however many merges ago)."""
    if not isinstance(contact_id, int) or isinstance(contact_id, bool) or tenant_id is None:
        return None
    for _ in range(_MAX_MERGE_HOPS):
        found = (
            await session.execute(
                select(Contact.id).where(Contact.id == contact_id, Contact.tenant_id == tenant_id)
            )
        ).scalar_one_or_none()
        if found is not None:
            return int(found)
        survivor = (
            await session.execute(
                select(ContactMerge.survivor_id)
                .where(ContactMerge.merged_id == contact_id, ContactMerge.tenant_id == tenant_id)
                .order_by(ContactMerge.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if survivor is None:
            return None
        contact_id = int(survivor)
    return None


async def record_entry(
    session: AsyncSession,
    event: Event,
    *,
    kind: str,
    contact_id: int | None,
    company_id: int | None = None,
    data: Mapping[str, Any] | None = None,
    occurred_at: datetime | None = None,
    **links: int | None,
) -> bool:
    """Write the entry `event` causes, unless it already is written; True if written now."""
    if event.tenant_id is None or (contact_id is None and company_id is None):
        return False
    values: dict[str, Any] = {
        "tenant_id": event.tenant_id,
        "contact_id": contact_id,
        "company_id": company_id,
        "occurred_at": occurred_at or event.created_at,
        "kind": kind,
        "data": dict(data or {}),
        "source_event_id": event.id,
        "created_at": event.created_at,
        **{name: value for name, value in links.items() if isinstance(value, int)},
    }
    table = cast(Table, TimelineEntry.__table__)
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(table).values(values)
    result = await session.execute(stmt.on_conflict_do_nothing(index_elements=["source_event_id"]))
    return bool(getattr(result, "rowcount", 0))


class TimelineWriter:
    """The CRM's timeline handlers: deals, tickets, campaigns, consent, lifecycle and merges."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def topics(self) -> dict[str, list[Handler]]:
        topics: dict[str, list[Handler]] = {
            DEAL_OPENED_TOPIC: [self.deal_opened],
            DEAL_STAGE_CHANGED_TOPIC: [self.deal_stage_changed],
            CONSENT_CHANGED_TOPIC: [self.consent_changed],
            LIFECYCLE_CHANGED_TOPIC: [self.lifecycle_changed],
            MERGED_TOPIC: [self.contact_merged],
        }
        for topic in (*TICKET_TOPICS, *CAMPAIGN_TOPICS):
            topics[topic] = [self.contact_event]
        return topics

    async def _deal(self, session: AsyncSession, event: Event) -> tuple[Deal, dict[str, Any]] | None:
        deal = (
            await session.execute(
                select(Deal).where(Deal.id == event.payload.get("deal_id"), Deal.tenant_id == event.tenant_id)
            )
        ).scalar_one_or_none()
        if deal is None:
            return None  # deleted since
        pipeline = await session.get(Pipeline, deal.pipeline_id)
        data = {
            "title": deal.title,
            "amount_minor": deal.amount_minor,
            "currency": deal.currency,
            "pipeline": pipeline.name if pipeline else None,
        }
        return deal, data

    async def _stage_name(self, session: AsyncSession, tenant_id: int | None, stage_id: Any) -> str | None:
        if not isinstance(stage_id, int):
            return None
        return (
            await session.execute(
                select(PipelineStage.name).where(
                    PipelineStage.id == stage_id, PipelineStage.tenant_id == tenant_id
                )
            )
        ).scalar_one_or_none()

    async def deal_opened(self, event: Event) -> None:
        async with self.db.transaction() as session:
            found = await self._deal(session, event)
            if found is None:
                return
            deal, data = found
            data["stage"] = await self._stage_name(session, event.tenant_id, deal.stage_id)
            data["source"] = deal.source
            await record_entry(
                session,
                event,
                kind="deal.opened",
                contact_id=await live_contact(session, event.tenant_id, deal.contact_id),
                company_id=deal.company_id,
                data=data,
                deal_id=deal.id,
            )

    async def deal_stage_changed(self, event: Event) -> None:
        outcome = event.payload.get("outcome")
        kind = {"won": "deal.won", "lost": "deal.lost"}.get(str(outcome), "deal.stage_changed")
        async with self.db.transaction() as session:
            found = await self._deal(session, event)
            if found is None:
                return
            deal, data = found
            data["from_stage"] = await self._stage_name(
                session, event.tenant_id, event.payload.get("from_stage_id")
            )
            data["to_stage"] = await self._stage_name(
                session, event.tenant_id, event.payload.get("to_stage_id")
            )
            await record_entry(
                session,
                event,
                kind=kind,
                contact_id=await live_contact(session, event.tenant_id, deal.contact_id),
                company_id=deal.company_id,
                data=data,
                deal_id=deal.id,
            )

    async def contact_event(self, event: Event) -> None:
        """Tickets' and campaigns' events: `{"contact_id", "ticket_id" | "campaign_id", …}`."""
        payload = event.payload
        async with self.db.transaction() as session:
            await record_entry(
                session,
                event,
                kind=event.topic,
                contact_id=await live_contact(session, event.tenant_id, payload.get("contact_id")),
                data=plain(payload, "contact_id"),
                ticket_id=payload.get("ticket_id"),
                campaign_id=payload.get("campaign_id"),
                message_id=payload.get("message_id"),
                conversation_id=payload.get("conversation_id"),
            )

    async def consent_changed(self, event: Event) -> None:
        async with self.db.transaction() as session:
            await record_entry(
                session,
                event,
                kind="consent.changed",
                contact_id=await live_contact(session, event.tenant_id, event.payload.get("contact_id")),
                data=plain(event.payload, "contact_id"),
            )

    async def lifecycle_changed(self, event: Event) -> None:
        async with self.db.transaction() as session:
            await record_entry(
                session,
                event,
                kind="lifecycle.changed",
                contact_id=await live_contact(session, event.tenant_id, event.payload.get("contact_id")),
                data=plain(event.payload, "contact_id"),
            )

    async def contact_merged(self, event: Event) -> None:
        """The survivor's entry: who was merged into it (the merged contact's own entries moved already)."""
        async with self.db.transaction() as session:
            audit = (
                await session.execute(
                    select(ContactMerge).where(
                        ContactMerge.id == event.payload.get("merge_id"),
                        ContactMerge.tenant_id == event.tenant_id,
                    )
                )
            ).scalar_one_or_none()
            snapshot = audit.merged_snapshot if audit is not None else {}
            await record_entry(
                session,
                event,
                kind="contact.merged",
                contact_id=await live_contact(session, event.tenant_id, event.payload.get("survivor_id")),
                data={
                    "merged_id": event.payload.get("merged_id"),
                    "merged_name": snapshot.get("name") or snapshot.get("email") or snapshot.get("phone"),
                    "reason": (audit.reason if audit is not None else "")[:_MAX_TEXT],
                },
            )


def timeline_subscribers(db: Database) -> dict[str, list[Handler]]:
    """The CRM timeline's topics and handlers, to add to `gateway.wiring.build_subscribers`."""
    return TimelineWriter(db).topics()
