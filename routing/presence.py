"""Agent presence: who can take a conversation right now (online, busy, away, offline)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from parley.db import Database, utcnow
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


class SocketPresence:
    """Agents' open sockets in this process: when the last one closes, the agent goes offline after a grace.

    The agents' UI calls `socket_opened` / `socket_closed` around each WebSocket; a reconnect within
    `grace` seconds (a page reload, a flaky network) keeps the agent's presence as it was. Opening a
    socket never sets anyone online: being available is the agent's choice (`PUT /me/presence`).
    Counts are per process, so a deployment with several gateways should pin an agent's sockets to
    one of them (sticky sessions) until the counts move to the database.
    """

    def __init__(
        self, db: Database, *, grace: float = 30.0, notify: Callable[[], None] | None = None
    ) -> None:
        self.db = db
        self.grace = grace
        self.notify = notify
        self._open: dict[int, int] = {}
        self._timers: dict[int, asyncio.Task[None]] = {}

    def open_sockets(self, user_id: int) -> int:
        return self._open.get(user_id, 0)

    def socket_opened(self, tenant_id: int, user_id: int) -> None:
        """One more socket for the agent; a pending going-offline is called off."""
        self._open[user_id] = self._open.get(user_id, 0) + 1
        timer = self._timers.pop(user_id, None)
        if timer is not None:
            timer.cancel()

    def socket_closed(self, tenant_id: int, user_id: int) -> None:
        """One socket fewer; the last one starts the grace period."""
        left = self._open.get(user_id, 0) - 1
        if left > 0:
            self._open[user_id] = left
            return
        self._open.pop(user_id, None)
        if user_id not in self._timers:
            self._timers[user_id] = asyncio.get_running_loop().create_task(
                self._offline_later(tenant_id, user_id)
            )

    async def _offline_later(self, tenant_id: int, user_id: int) -> None:
        try:
            await asyncio.sleep(self.grace)
            async with self.db.transaction() as session:
                changed = await set_presence(session, tenant_id, user_id, Presence.OFFLINE)
            if changed and self.notify is not None:
                self.notify()
        finally:
            if self._timers.get(user_id) is asyncio.current_task():
                del self._timers[user_id]

    async def close(self) -> None:
        """Cancel pending timers (shutdown: the agents' sockets are going away with the process)."""
        timers = list(self._timers.values())
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)
        self._timers.clear()
