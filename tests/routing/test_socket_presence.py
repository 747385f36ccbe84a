"""An agent whose last socket closes goes offline after the grace period, unless they reconnect."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from parley.db import Database
from parley.models import OutboxEvent, Presence, User
from routing.presence import RedisSocketCensus, SocketPresence
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


async def test_an_agent_connected_through_another_gateway_stays_online(db: Database, redis_url: str) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, presence=Presence.ONLINE)
    first = SocketPresence(db, grace=0.3, census=RedisSocketCensus(redis_url))
    second = SocketPresence(db, grace=0.3, census=RedisSocketCensus(redis_url))

    first.socket_opened(tenant.tenant_id, agent)  # a tab on one gateway
    second.socket_opened(tenant.tenant_id, agent)  # another tab, through the other gateway
    await asyncio.sleep(0.2)
    first.socket_closed(tenant.tenant_id, agent)
    await asyncio.sleep(0.8)  # well past the grace
    assert await _presence(db, agent) == "online"

    second.socket_closed(tenant.tenant_id, agent)  # the last socket anywhere

    async def offline() -> bool:
        return await _presence(db, agent) == "offline"

    await eventually(offline, timeout=5)
    await first.close()
    await second.close()


async def test_a_gateway_that_stops_holds_nothing_in_the_census(db: Database, redis_url: str) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, presence=Presence.ONLINE)
    going = SocketPresence(db, grace=30, census=RedisSocketCensus(redis_url))
    staying = RedisSocketCensus(redis_url)

    going.socket_opened(tenant.tenant_id, agent)
    await eventually(lambda: staying.held_elsewhere(agent), timeout=5)
    await going.close()
    assert not await staying.held_elsewhere(agent)
    await staying.close()
