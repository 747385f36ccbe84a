"""Inboxes (configured channel instances), conversations and messages."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from crm_core.tasks import Task
from inbox.csat_models import CsatSurvey as CsatSurvey  # Alembic sees the CSAT tables
from parley.db import Base, BigId, utcnow


class ConversationStatus(StrEnum):
    OPEN = "open"
    PENDING = "pending"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class PrioritySource(StrEnum):
    """Who set a conversation's priority: the scorer (`routing.priority`), an agent, or an SLA escalation.

    A manual or escalated priority stands over the computed one until the conversation is resolved.
    """

    COMPUTED = "computed"
    MANUAL = "manual"
    ESCALATION = "escalation"


class ConversationPriority(StrEnum):
    """How urgent a conversation is, as an agent set it; `PRIORITY_RANK` orders them."""

    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    URGENT = "urgent"


PRIORITY_RANK = {priority: rank for rank, priority in enumerate(ConversationPriority)}


class MessageStatus(StrEnum):
    """Where a message is on its way; outbound ones only move forward (see `STATUS_RANK`)."""

    RECEIVED = "received"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


# A late "sent" callback must not undo "delivered"; "failed" is final except over "read".
STATUS_RANK = {
    MessageStatus.QUEUED: 0,
    MessageStatus.SENT: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.FAILED: 3,
    MessageStatus.READ: 4,
    MessageStatus.RECEIVED: 0,
}


# Keys of `messages.extra` that hold typed content rather than provider leftovers.
CONTENT_KEYS = (
    "location",
    "shared_contacts",
    "button_reply",
    "buttons",
    "template",
    "call",
    "recording",
    "voicemail",
    "mentions",
    # What the bot layer understood the customer wants (a name or {name, confidence}); scoring reads it.
    "intent",
)


class Inbox(Base):
    """One configured channel instance: a Twilio number, a mailbox, a chat widget…"""

    __tablename__ = "inboxes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(40))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Fernet token of a JSON object: auth tokens and API keys never sit in the clear.
    secrets_encrypted: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        # At most one unresolved conversation per contact and inbox; concurrent webhooks race here.
        # Threaded channels (Slack) have a conversation per thread instead.
        Index(
            "uq_conversations_active_contact",
            "inbox_id",
            "contact_id",
            unique=True,
            postgresql_where=text("status <> 'resolved' AND thread_key IS NULL"),
            sqlite_where=text("status <> 'resolved' AND thread_key IS NULL"),
        ),
        Index(
            "uq_conversations_thread",
            "inbox_id",
            "thread_key",
            unique=True,
            postgresql_where=text("thread_key IS NOT NULL"),
            sqlite_where=text("thread_key IS NOT NULL"),
        ),
        Index("ix_conversations_tenant_id_status_id", "tenant_id", "status", "id"),
        Index("ix_conversations_tenant_id_assignee_id", "tenant_id", "assignee_id"),
        # The agents' list: a status tab, newest activity first (`inbox.listing`'s `newest` sort key),
        # read in order and stopped after a page instead of sorting every open conversation.
        Index(
            "ix_conversations_list_newest",
            "tenant_id",
            "status",
            text("coalesce(last_message_at, created_at) DESC"),
            text("id DESC"),
        ),
        # The snooze sweep reads only what is snoozed with a time to wake.
        Index(
            "ix_conversations_snoozed_until",
            "snoozed_until",
            postgresql_where=text("status = 'snoozed' AND snoozed_until IS NOT NULL"),
            sqlite_where=text("status = 'snoozed' AND snoozed_until IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    # The address the customer wrote from; replies go back to it.
    identity_id: Mapped[int] = mapped_column(ForeignKey("channel_identities.id", ondelete="CASCADE"))
    # The channel's thread this conversation is (a Slack thread root), or None.
    thread_key: Mapped[str | None] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(20), default=ConversationStatus.OPEN)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    last_message_at: Mapped[datetime | None]
    # When the customer last wrote: opens WhatsApp's 24-hour window for free-form replies.
    last_inbound_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    resolved_at: Mapped[datetime | None]
    priority: Mapped[str] = mapped_column(
        String(10), default=ConversationPriority.NONE, server_default=ConversationPriority.NONE.value
    )
    # Priority scoring (migration 0013): who set `priority`, and the computed score with its reasons
    # ([{signal, label, points}], kept even while a manual priority stands). Server defaults, because the
    # pipeline inserts conversations in raw SQL.
    priority_source: Mapped[str] = mapped_column(
        String(12), default=PrioritySource.COMPUTED, server_default=PrioritySource.COMPUTED.value
    )
    priority_set_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    priority_score: Mapped[int | None]
    priority_reasons: Mapped[list[Any] | None]
    priority_scored_at: Mapped[datetime | None]
    # Status `snoozed` with no time: until the customer's next message.
    snoozed_until: Mapped[datetime | None]
    # When an agent last snoozed it. The inbound pipeline wakes a snoozed conversation in the same
    # statement that stores the message; this mark outlives that, so the `message.received` handler
    # can tell the wake-up happened and announce it (see `inbox.snooze`).
    snoozed_at: Mapped[datetime | None]
    # Set on the conversation merged away (it is resolved); its messages now live in this one.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"))


class Label(Base):
    """A tag agents put on conversations (billing, bug, vip…); names are unique per tenant in any case."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("tenant_id", "name_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    # `name` case-folded: the uniqueness key (portable, unlike an index on an expression).
    name_key: Mapped[str] = mapped_column(String(64))
    color: Mapped[str] = mapped_column(String(7), default="#6b7280")
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ConversationLabel(Base):
    __tablename__ = "conversation_labels"

    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    label_id: Mapped[int] = mapped_column(
        ForeignKey("labels.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


class ConversationRead(Base):
    """How far an agent has read a conversation: customer messages after the mark are unread for them."""

    __tablename__ = "conversation_reads"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # 0: nothing read (set by "mark unread" on a conversation's first customer message).
    last_read_message_id: Mapped[int] = mapped_column(BigId, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # The dedupe key: a provider that retries never creates a second message.
        UniqueConstraint("inbox_id", "provider_message_id"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(String(10))
    sender_type: Mapped[str] = mapped_column(String(10))
    sender_id: Mapped[int | None]
    body: Mapped[str] = mapped_column(Text, default="")
    attachments: Mapped[list[Any]] = mapped_column(default=list)
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # An agents' note (migration 0008): never sent, never shown to the customer. A server default,
    # because the pipeline inserts messages in raw SQL.
    private: Mapped[bool] = mapped_column(default=False, server_default=false())

    @property
    def content_attributes(self) -> dict[str, Any]:
        """The typed content kept in `extra` (the rest of `extra` is the provider's leftovers)."""
        return {key: self.extra[key] for key in CONTENT_KEYS if key in self.extra}


class NotificationKind(StrEnum):
    MENTION = "mention"
    TASK_REMINDER = "task_reminder"
    TASK_OVERDUE = "task_overdue"


class Notification(Base):
    """Something a user should look at: for now, being @mentioned in a note."""

    __tablename__ = "notifications"
    __table_args__ = (
        # "Mine, unread first, newest first": the bell's one query.
        Index("ix_notifications_user_id_read_at_id", "user_id", "read_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None]
    # Task reminders and overdue notices (migration 0012).
    task_id: Mapped[int | None] = mapped_column(ForeignKey(Task.id, ondelete="CASCADE"))


class CannedResponse(Base):
    """A saved reply agents insert with `/short_code`; its content is a sandboxed Jinja2 template."""

    __tablename__ = "canned_responses"
    __table_args__ = (UniqueConstraint("tenant_id", "short_code"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    short_code: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --- privacy: retention policies and the daily counts that outlive deleted conversations ---------


class RetentionPolicy(Base):
    """Delete a tenant's resolved conversations (of one inbox, or of any: `inbox_id` None) after `days`."""

    __tablename__ = "retention_policies"
    __table_args__ = (Index("ix_retention_policies_tenant_id", "tenant_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    inbox_id: Mapped[int | None] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"))
    resolved_after_days: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ConversationDailyStats(Base):
    """Per inbox and day a conversation was opened: what the retention sweep deleted, counted."""

    __tablename__ = "conversation_daily_stats"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    conversations: Mapped[int] = mapped_column(default=0)
    messages_in: Mapped[int] = mapped_column(default=0)
    messages_out: Mapped[int] = mapped_column(default=0)
