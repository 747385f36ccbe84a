"""Outbound webhook subscriptions and their deliveries (migration 0016)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column

from parley.db import Base, BigId, utcnow


class WebhookSubscription(Base):
    """An integrator's endpoint and the public event types it receives."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(200), default="")
    event_types: Mapped[list[Any]] = mapped_column(default=list)
    # {"secret": "whsec_..."} sealed with parley.crypto.SecretBox; shown once, when created.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(default=True, server_default=true())
    # Failed attempts in a row (any delivery) and since when; a success resets both.
    consecutive_failures: Mapped[int] = mapped_column(default=0, server_default="0")
    failing_since: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeliveryStatus:
    PENDING = "pending"  # not yet attempted, or waiting for its next attempt
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # gave up: attempts exhausted, or the subscription was disabled


class WebhookDelivery(Base):
    """One event for one subscription: the payload as sent, and how its last attempt went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # Idempotency: an outbox event handled twice by the fan-out makes one delivery per subscription
        # and public type (one event can be two types: conversation.updated and .resolved).
        UniqueConstraint("subscription_id", "event_id", "event_type"),
        Index("ix_webhook_deliveries_tenant_id_subscription_id_id", "tenant_id", "subscription_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"))
    # The outbox event it came from; NULL for test events and redeliveries' copies.
    event_id: Mapped[int | None] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    response_status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
