"""CSAT: a tenant's survey settings and the surveys sent after conversations are resolved."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from parley.db import Base, BigId, utcnow

DEFAULT_QUESTION = "How would you rate the help you received?"


class CsatSettings(Base):
    """Whether the tenant asks for ratings, and how; a tenant without a row asks nothing."""

    __tablename__ = "csat_settings"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(default=False)
    question: Mapped[str] = mapped_column(Text, default=DEFAULT_QUESTION)
    # The approved WhatsApp template sent outside the 24-hour window: {name, language, variables},
    # where a variable's value may contain `{link}` (the rating page) and `{question}`.
    whatsapp_template: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # How long the rating page's link works (and a rating may still be changed).
    link_expiry_hours: Mapped[int] = mapped_column(default=168)
    # How long after the survey a customer's "4" is read as a rating.
    reply_window_hours: Mapped[int] = mapped_column(default=24)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CsatSurvey(Base):
    """One survey, for one resolution of one conversation, and the rating it got (if any)."""

    __tablename__ = "csat_surveys"
    __table_args__ = (
        # A resolution is surveyed once, however often its event is delivered.
        UniqueConstraint("conversation_id", "resolved_at"),
        Index("ix_csat_surveys_tenant_id_sent_at", "tenant_id", "sent_at"),
        Index("ix_csat_surveys_contact_id_sent_at", "contact_id", "sent_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(40))
    resolved_at: Mapped[datetime]
    # Who handled the conversation when it was resolved; the report groups by them.
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    sent_via: Mapped[str] = mapped_column(String(10))  # message or template
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    rating: Mapped[int | None]
    comment: Mapped[str | None] = mapped_column(Text)
    rated_at: Mapped[datetime | None]
    rated_via: Mapped[str | None] = mapped_column(String(10))  # reply or link
