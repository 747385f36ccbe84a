"""Contacts, the channel identities that resolve to them, and consent per channel."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from crm_core.lifecycle_stages import LifecycleStage
from crm_core.ticket_models import Ticket as Ticket  # Alembic and merges see tickets
from parley.db import Base, BigId, utcnow


class Contact(Base):
    """One person, whatever channels they write on."""

    __tablename__ = "contacts"
    __table_args__ = (
        Index("ix_contacts_tenant_id_id", "tenant_id", "id"),
        # The search box's substring match (ILIKE '%ann%') on PostgreSQL: trigram indexes, without
        # which a million contacts are scanned per keystroke. (SQLite gets plain indexes.)
        *(
            Index(
                f"ix_contacts_{column}_trgm",
                column,
                postgresql_using="gin",
                postgresql_ops={column: "gin_trgm_ops"},
            )
            for column in ("name", "email", "phone")
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # CRM (migration 0006); server defaults, because the pipeline inserts contacts in raw SQL.
    company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL"), index=True
    )
    lifecycle_stage: Mapped[str] = mapped_column(
        String(20), default=LifecycleStage.LEAD, server_default=LifecycleStage.LEAD.value
    )
    # The score when it last changed; it decays between events, so read the live one via crm_core.scoring.
    score: Mapped[float] = mapped_column(default=0.0, server_default="0")


class ChannelIdentity(Base):
    """An address a contact is reachable at: `phone` (E.164), `email`, and per-provider ids."""

    __tablename__ = "channel_identities"
    __table_args__ = (
        UniqueConstraint("tenant_id", "kind", "address"),
        Index("ix_channel_identities_tenant_id_match_key", "tenant_id", "match_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    address: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The address with the differences people don't mean removed (crm_core.identities.match_key):
    # identities of different contacts sharing one are likely duplicates. Filled by crm_core.
    match_key: Mapped[str | None] = mapped_column(String(330))


class Consent(Base):
    """The latest consent decision of a contact for a channel and purpose, with its source."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("contact_id", "channel", "purpose"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(20))
    # "all" covers every message on the channel (a carrier STOP); "marketing" only campaigns.
    purpose: Mapped[str] = mapped_column(String(20))
    granted: Mapped[bool]
    source: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- CRM: settings, custom attributes, tags, companies ------------------------------------------


class CrmSettings(Base):
    """A tenant's CRM settings; a tenant without a row has the defaults of `crm_core.settings`."""

    __tablename__ = "crm_settings"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    # Where national phone numbers ("(415) 555-0100", "020 7946 0018") are read as being from.
    default_region: Mapped[str | None] = mapped_column(String(2))
    mql_threshold: Mapped[float] = mapped_column(default=50.0)
    score_half_life_days: Mapped[float] = mapped_column(default=30.0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AttributeDefinition(Base):
    """A typed custom attribute of the tenant's contacts (or companies)."""

    __tablename__ = "attribute_definitions"
    __table_args__ = (UniqueConstraint("tenant_id", "entity", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    entity: Mapped[str] = mapped_column(String(20), default="contact")
    key: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(200))
    # string, number, boolean, date or enum (one of `options`).
    type: Mapped[str] = mapped_column(String(10))
    options: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ContactTag(Base):
    """A tag on a contact; a table rather than an array so both databases filter on it by index."""

    __tablename__ = "contact_tags"
    __table_args__ = (Index("ix_contact_tags_tenant_id_tag", "tenant_id", "tag"),)

    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))


class Company(Base):
    """An organisation contacts work at; made from business email domains or by hand."""

    __tablename__ = "companies"
    __table_args__ = (
        UniqueConstraint("tenant_id", "domain"),
        Index("ix_companies_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    domain: Mapped[str | None] = mapped_column(String(253))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --- lifecycle and scoring ----------------------------------------------------------------------


class LifecycleChange(Base):
    """One move of a contact between lifecycle stages, and why."""

    __tablename__ = "lifecycle_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    from_stage: Mapped[str | None] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScoringRule(Base):
    """Points for a contact's attribute or for something the contact did (see crm_core.scoring)."""

    __tablename__ = "scoring_rules"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # "attribute" (holds while the condition does) or an event type (decays from when it happened).
    trigger: Mapped[str] = mapped_column(String(40))
    condition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    points: Mapped[float]
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScoreEvent(Base):
    """Points a rule gave a contact for one event; the score is their decayed sum."""

    __tablename__ = "score_events"
    # A handler delivered twice scores once.
    __table_args__ = (UniqueConstraint("contact_id", "rule_id", "source"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_rules.id", ondelete="SET NULL"))
    rule_name: Mapped[str] = mapped_column(String(200))
    trigger: Mapped[str] = mapped_column(String(40))
    # What happened, e.g. "message:42", "deal:7": with the rule, the idempotency key.
    source: Mapped[str] = mapped_column(String(100))
    points: Mapped[float]
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- deals --------------------------------------------------------------------------------------


class Pipeline(Base):
    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PipelineStage(Base):
    """A column of a pipeline's board: its order, the chance a deal in it closes, and open/won/lost."""

    __tablename__ = "pipeline_stages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int]
    probability: Mapped[int] = mapped_column(default=0)  # percent, 0-100
    outcome: Mapped[str] = mapped_column(String(10), default="open")  # open, won or lost


class Deal(Base):
    __tablename__ = "deals"
    __table_args__ = (
        Index("ix_deals_stage_id_position", "stage_id", "position"),
        Index("ix_deals_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    # RESTRICT: a stage with deals on it cannot be deleted out from under them.
    stage_id: Mapped[int] = mapped_column(ForeignKey("pipeline_stages.id", ondelete="RESTRICT"))
    position: Mapped[int] = mapped_column(default=0)
    title: Mapped[str] = mapped_column(String(200))
    # Integer minor units (cents) of an ISO 4217 currency: exact sums, no float rounding.
    amount_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    expected_close: Mapped[date | None]
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"), index=True)
    company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL"), index=True
    )
    source: Mapped[str] = mapped_column(String(40), default="api")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    closed_at: Mapped[datetime | None]


class DealConversation(Base):
    __tablename__ = "deal_conversations"

    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id", ondelete="CASCADE"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True, index=True
    )


# --- merges -------------------------------------------------------------------------------------


class ContactMerge(Base):
    """The audit of one merge: who merged which contact into which, what moved, what was dropped."""

    __tablename__ = "contact_merges"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    survivor_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    # The merged contact is deleted; its id and a snapshot of it stay here.
    merged_id: Mapped[int] = mapped_column(BigInteger)
    merged_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- timeline (migration 0015) ------------------------------------------------------------------


class TimelineEntry(Base):
    """One thing that happened to a contact (or a company), written by an outbox handler.

    Messages and calls are not copied here: the feed reads them from `messages` (see
    `inbox.timeline_feed`), so the ingest path writes nothing more per message.
    """

    __tablename__ = "timeline_entries"
    __table_args__ = (
        # A handler delivered twice writes one entry: the event that caused it is unique.
        UniqueConstraint("source_event_id"),
        # The feed: a contact's (or a company's) entries, newest first.
        Index("ix_timeline_entries_contact_id_occurred_at", "tenant_id", "contact_id", "occurred_at", "id"),
        Index("ix_timeline_entries_company_id_occurred_at", "tenant_id", "company_id", "occurred_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # Null for a company's own events (a deal of the company without a contact).
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id", ondelete="SET NULL"))
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))
    # What the entry shows, as plain values (the UI escapes every one of them).
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"))
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    deal_id: Mapped[int | None] = mapped_column(ForeignKey("deals.id", ondelete="SET NULL"))
    # History outlives what it is about: a deleted ticket's entries keep its id (no foreign key).
    ticket_id: Mapped[int | None] = mapped_column(BigInteger)
    # Campaigns are not built yet: a plain id until they land.
    campaign_id: Mapped[int | None] = mapped_column(BigInteger)
    source_event_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
