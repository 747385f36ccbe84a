"""An agent whose last socket closes goes offline after the grace period, unless they reconnect."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from parley.db import Database
from parley.models import OutboxEvent, Presence, User
from routing.presence import SocketPresence
from tests.conftest import eventually, make_tenant
from tests.routing.world import add_agent


async def _presence(db: Database, user_id: int) -> str:
    async with db.sessionmaker() as session:
        return (await session.execute(select(User.presence).where(User.id == user_id))).scalar_one()


async def test_the_last_socket_closing_sets_offline_after_the_grace(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, presence=Presence.ONLINE)
    woken = []
    sockets = SocketPresence(db, grace=0.3, notify=lambda: woken.append(True))

    sockets.socket_opened(tenant.tenant_id, agent)
    sockets.socket_opened(tenant.tenant_id, agent)
    sockets.socket_closed(tenant.tenant_id, agent)
    await asyncio.sleep(0.5)
    assert await _presence(db, agent) == "online"  # a second tab is still open

    sockets.socket_closed(tenant.tenant_id, agent)
    await asyncio.sleep(0.1)
    assert await _presence(db, agent) == "online"  # within the grace

    async def offline() -> bool:
        return await _presence(db, agent) == "offline"

    await eventually(offline, timeout=5)
    assert woken == [True]
    async with db.sessionmaker() as session:
        events = (
            await session.scalars(
                select(OutboxEvent.payload).where(OutboxEvent.topic == "agent.presence_changed")
            )
        ).all()
    assert [e["presence"] for e in events] == ["offline"]
    await sockets.close()


async def test_reconnecting_within_the_grace_keeps_the_agent_online(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, presence=Presence.ONLINE)
    sockets = SocketPresence(db, grace=0.3)

    sockets.socket_opened(tenant.tenant_id, agent)
    sockets.socket_closed(tenant.tenant_id, agent)
    await asyncio.sleep(0.1)
    sockets.socket_opened(tenant.tenant_id, agent)  # the page reloaded
    await asyncio.sleep(0.5)

    assert await _presence(db, agent) == "online"
    assert sockets.open_sockets(agent) == 1
    await sockets.close()
