"""Agent presence: who can take a conversation right now (online, busy, away, offline)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError
from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from parley.db import Database, utcnow
from parley.models import Presence, Role, User
from parley.outbox import emit

logger = logging.getLogger(__name__)

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


class RedisSocketCensus:
    """Which gateway processes hold a socket of each agent, kept in Redis (one sorted set per agent).

    Each process is a member of the set of every agent it holds a socket for, scored with an expiry
    it pushes forward on a heartbeat; a process that dies simply expires. An agent is connected
    somewhere while any member's expiry lies ahead.
    """

    def __init__(self, url: str, *, ttl: float = 60.0, prefix: str = "parley:sockets:") -> None:
        self.ttl = ttl
        self.prefix = prefix
        self.process = uuid.uuid4().hex
        self._redis = redis.from_url(url)

    def _key(self, user_id: int) -> str:
        return f"{self.prefix}{user_id}"

    async def hold(self, user_ids: list[int]) -> None:
        """This process holds sockets of these agents (for `ttl` seconds from now)."""
        if not user_ids:
            return
        expiry = time.time() + self.ttl
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.zadd(self._key(user_id), {self.process: expiry})
                pipe.expire(self._key(user_id), int(self.ttl * 2) + 1)
            await pipe.execute()

    async def release(self, user_id: int) -> None:
        """This process holds no socket of the agent any more."""
        await self._redis.zrem(self._key(user_id), self.process)

    async def held_elsewhere(self, user_id: int) -> bool:
        """True while another live process holds a socket of the agent."""
        members = await self._redis.zrangebyscore(self._key(user_id), time.time(), "+inf")
        return any(_text(m) != self.process for m in members)

    async def close(self) -> None:
        await self._redis.aclose()


def _text(member: object) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)


class SocketPresence:
    """Agents' open sockets: when the last one closes, the agent goes offline after a grace.

    The agents' UI calls `socket_opened` / `socket_closed` around each WebSocket; a reconnect within
    `grace` seconds (a page reload, a flaky network) keeps the agent's presence as it was. Opening a
    socket never sets anyone online: being available is the agent's choice (`PUT /me/presence`).
    Counts are per process; with several gateways (`PARLEY_REDIS_URL`), a `RedisSocketCensus` tells
    each process whether another still holds one of the agent's sockets, so closing a tab on one
    gateway does not set offline an agent still connected through another. (If a gateway dies, its
    agents stay as they were: nobody's socket closed there.)
    """

    def __init__(
        self,
        db: Database,
        *,
        grace: float = 30.0,
        notify: Callable[[], None] | None = None,
        census: RedisSocketCensus | None = None,
    ) -> None:
        self.db = db
        self.grace = grace
        self.notify = notify
        self.census = census
        self._open: dict[int, int] = {}
        self._timers: dict[int, asyncio.Task[None]] = {}
        # Census updates run one at a time in the order they were asked for; each one writes the
        # agent's current local state, so a late one can never undo a newer one.
        self._census_queue: asyncio.Queue[int | None] | None = None
        self._census_tasks: list[asyncio.Task[None]] = []

    def open_sockets(self, user_id: int) -> int:
        return self._open.get(user_id, 0)

    def socket_opened(self, tenant_id: int, user_id: int) -> None:
        """One more socket for the agent; a pending going-offline is called off."""
        self._open[user_id] = self._open.get(user_id, 0) + 1
        timer = self._timers.pop(user_id, None)
        if timer is not None:
            timer.cancel()
        if self._open[user_id] == 1:
            self._tell_census(user_id)

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

    def _tell_census(self, user_id: int | None) -> None:
        if self.census is None:
            return
        if self._census_queue is None:
            self._census_queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            self._census_tasks = [
                loop.create_task(self._census_writer()),
                loop.create_task(self._census_heartbeat()),
            ]
        self._census_queue.put_nowait(user_id)

    async def _census_writer(self) -> None:
        assert self.census is not None and self._census_queue is not None
        while True:
            user_id = await self._census_queue.get()
            held = list(self._open) if user_id is None else [user_id]
            try:
                if user_id is not None and user_id not in self._open:
                    await self.census.release(user_id)
                else:
                    await self.census.hold(held)
            except (RedisError, OSError) as e:  # the heartbeat writes it again
                logger.warning("socket census not updated: %r", e)
            finally:
                self._census_queue.task_done()

    async def _census_heartbeat(self) -> None:
        assert self.census is not None
        while True:
            await asyncio.sleep(self.census.ttl / 3)
            self._tell_census(None)

    async def _offline_later(self, tenant_id: int, user_id: int) -> None:
        try:
            await asyncio.sleep(self.grace)
            if self.census is not None:
                self._tell_census(user_id)  # released here (queued behind any hold)
                if await self._connected_elsewhere(user_id):
                    return
            async with self.db.transaction() as session:
                changed = await set_presence(session, tenant_id, user_id, Presence.OFFLINE)
            if changed and self.notify is not None:
                self.notify()
        finally:
            if self._timers.get(user_id) is asyncio.current_task():
                del self._timers[user_id]

    async def _connected_elsewhere(self, user_id: int) -> bool:
        assert self.census is not None and self._census_queue is not None
        await self._drained()
        try:
            return await self.census.held_elsewhere(user_id)
        except (RedisError, OSError) as e:  # cannot tell: keep the agent as they are
            logger.warning("socket census unreachable, presence of user %s kept: %r", user_id, e)
            return True

    async def _drained(self) -> None:
        assert self._census_queue is not None
        await self._census_queue.join()

    async def close(self) -> None:
        """Cancel pending timers (shutdown: the agents' sockets are going away with the process)."""
        pending = list(self._timers)
        timers = [*self._timers.values(), *self._census_tasks]
        for timer in timers:
            timer.cancel()
        await asyncio.gather(*timers, return_exceptions=True)
        self._timers.clear()
        self._census_tasks = []
        if self.census is not None:
            try:  # this process holds nothing any more
                for user_id in [*self._open, *pending]:
                    await self.census.release(user_id)
            except (RedisError, OSError) as e:  # the members expire by themselves
                logger.warning("socket census not cleared: %r", e)
            await self.census.close()
