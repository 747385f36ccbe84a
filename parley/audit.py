"""The audit log: who changed what, written in the same transaction as the change it records.

An entry names its actor (`user`: a signed-in user, `api_token`: a token of that user, `contact`:
the customer themselves, e.g. a STOP keyword or a one-click unsubscribe, `system`: a sweep), the
action (`consent.changed`, `contact.erased`, `retention.swept`…), the object it touched and a
small JSON of details. Details never carry the personal data an action removes: an erasure entry
says what was erased, not what it said.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from parley.db import Base, BigId, utcnow

ActorType = Literal["user", "api_token", "contact", "system"]


class AuditEntry(Base):
    """One audited change."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_tenant_id_id", "tenant_id", "id"),
        Index("ix_audit_log_tenant_id_object", "tenant_id", "object_type", "object_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    actor_type: Mapped[str] = mapped_column(String(20))
    # The user (for `user` and `api_token`) or contact id; None for the system.
    actor_id: Mapped[int | None] = mapped_column(BigId)
    action: Mapped[str] = mapped_column(String(60))
    object_type: Mapped[str] = mapped_column(String(40))
    object_id: Mapped[int | None] = mapped_column(BigId)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ip: Mapped[str | None] = mapped_column(String(45))
    at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who an audited change is made by, and from where."""

    type: ActorType
    id: int | None = None
    ip: str | None = None


SYSTEM = Actor("system")


async def audit(
    session: AsyncSession,
    *,
    tenant_id: int,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: int | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an entry to the session's transaction: it is kept only if the change commits."""
    session.add(
        AuditEntry(
            tenant_id=tenant_id,
            actor_type=actor.type,
            actor_id=actor.id,
            action=action,
            object_type=object_type,
            object_id=object_id,
            details=details or {},
            ip=actor.ip[:45] if actor.ip else None,
        )
    )
    await session.flush()
