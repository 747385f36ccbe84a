"""Tickets: a piece of work for a customer, opened from conversations or by hand, with its status history."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from parley.db import Base, BigId, utcnow


class TicketStatus(StrEnum):
    OPEN = "open"
    PENDING = "pending"  # waiting on the customer: the SLA clock pauses
    ON_HOLD = "on_hold"  # waiting on a third party: the clock keeps running
    SOLVED = "solved"
    CLOSED = "closed"


class TicketSource(StrEnum):
    AGENT = "agent"
    BOT = "bot"
    RULE = "rule"
    API = "api"
    EMAIL = "email"


# The built-in types; a tenant may use any other slug of its own (`^[a-z][a-z0-9_]{0,39}$`).
BUILTIN_TYPES = ("question", "incident", "problem", "task")
# The conversations' priority levels (`inbox.models.ConversationPriority`; crm_core sits below inbox,
# so the values are repeated here and a test keeps the two equal).
PRIORITIES = ("none", "low", "medium", "high", "urgent")
# Statuses in which the resolution clock runs; the sweep looks only at these.
SLA_RUNNING = (TicketStatus.OPEN, TicketStatus.ON_HOLD)
UNRESOLVED = (TicketStatus.OPEN, TicketStatus.PENDING, TicketStatus.ON_HOLD)


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "number"),
        Index("ix_tickets_tenant_id_status_id", "tenant_id", "status", "id"),
        # The breach sweep reads only running, unbreached clocks.
        Index(
            "ix_tickets_sla_breach_sweep",
            "due_at",
            postgresql_where=text("sla_breached_at IS NULL AND status IN ('open', 'on_hold')"),
            sqlite_where=text("sla_breached_at IS NULL AND status IN ('open', 'on_hold')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # What people call it ("#42"): counted per tenant (`ticket_counters`).
    number: Mapped[int]
    subject: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(40), default="question")
    status: Mapped[str] = mapped_column(String(20), default=TicketStatus.OPEN)
    priority: Mapped[str] = mapped_column(String(10), default="none")
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"), index=True)
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id", ondelete="SET NULL"))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    # routing's SLA policy: its resolution target on its calendar gives `due_at` (routing.ticket_sla).
    sla_policy_id: Mapped[int | None] = mapped_column(ForeignKey("sla_policies.id", ondelete="SET NULL"))
    due_at: Mapped[datetime | None]
    sla_breached_at: Mapped[datetime | None]
    solved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    reopen_count: Mapped[int] = mapped_column(default=0)
    source: Mapped[str] = mapped_column(String(20), default=TicketSource.AGENT)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TicketConversation(Base):
    __tablename__ = "ticket_conversations"

    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    linked_at: Mapped[datetime] = mapped_column(default=utcnow)


class TicketStatusChange(Base):
    """One move of a ticket between statuses; the SLA clock's pauses are read from these."""

    __tablename__ = "ticket_status_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class TicketCounter(Base):
    """The last ticket number given in a tenant (an upsert hands out the next one without gaps)."""

    __tablename__ = "ticket_counters"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    last_number: Mapped[int] = mapped_column(default=0)
