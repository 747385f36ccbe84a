"""Moving contacts between lifecycle stages, with a history row and an event for each move."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.lifecycle_stages import STAGE_RANK, LifecycleStage
from crm_core.models import Contact, LifecycleChange
from parley.outbox import emit

LIFECYCLE_CHANGED_TOPIC = "contact.lifecycle_changed"


async def set_stage(
    session: AsyncSession,
    contact: Contact,
    stage: LifecycleStage,
    *,
    reason: str,
    user_id: int | None = None,
) -> bool:
    """Move the contact to `stage` (any direction); False if it already is there."""
    old = contact.lifecycle_stage
    if old == stage:
        return False
    contact.lifecycle_stage = stage
    session.add(
        LifecycleChange(
            tenant_id=contact.tenant_id,
            contact_id=contact.id,
            from_stage=old,
            to_stage=stage,
            reason=reason[:200],
            user_id=user_id,
        )
    )
    await session.flush()
    await emit(
        session,
        contact.tenant_id,
        (
            LIFECYCLE_CHANGED_TOPIC,
            {"contact_id": contact.id, "from": old, "to": stage.value, "reason": reason},
        ),
    )
    return True


async def advance_to(session: AsyncSession, contact: Contact, stage: LifecycleStage, *, reason: str) -> bool:
    """Move the contact forward to `stage`, never back (automatic moves only promote)."""
    current = LifecycleStage(contact.lifecycle_stage)
    if STAGE_RANK[stage] <= STAGE_RANK[current]:
        return False
    return await set_stage(session, contact, stage, reason=reason)
