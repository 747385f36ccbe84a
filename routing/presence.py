"""Agent presence: who can take a conversation right now (online, busy, away, offline)."""

from __future__ import annotations

from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from parley.db import utcnow
from parley.models import Presence, Role, User
from parley.outbox import emit

# The roles that answer customers; a marketer or bot designer being online helps no caller.
ANSWERING_ROLES = (Role.AGENT, Role.SUPERVISOR, Role.ADMIN)


async def agents_available(db: AsyncSession | AsyncConnection, tenant_id: int) -> bool:
    """True when at least one of the tenant's agents, supervisors or admins is online."""
    query = select(
        exists().where(
            User.tenant_id == tenant_id,
            User.presence == Presence.ONLINE,
            User.role.in_(ANSWERING_ROLES),
        )
    )
    return bool((await db.execute(query)).scalar())


async def set_presence(session: AsyncSession, tenant_id: int, user_id: int, presence: Presence) -> bool:
    """Set a user's presence; emits `agent.presence_changed` and returns True if it changed."""
    changed = await session.execute(
        update(User)
        .where(User.id == user_id, User.tenant_id == tenant_id, User.presence != presence)
        .values(presence=presence, presence_changed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
        return False
    await emit(
        session, tenant_id, ("agent.presence_changed", {"user_id": user_id, "presence": str(presence)})
    )
    return True
