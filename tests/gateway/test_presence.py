"""Agent presence: set through the API, per tenant, and asked by the channels that offer a human."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from parley.db import Database
from parley.models import OutboxEvent, Role
from parley.settings import Settings
from routing.presence import agents_available
from tests.conftest import TenantAccess, make_tenant

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def _put(client: TestClient[Any, Any], who: TenantAccess, presence: str) -> tuple[int, Any]:
    response = await client.put(
        "/api/v1/me/presence", data=json.dumps({"presence": presence}), headers=who.headers
    )
    return response.status, await response.json()


async def _available(db: Database, tenant_id: int) -> bool:
    async with db.sessionmaker() as session:
        return await agents_available(session, tenant_id)


async def test_an_agent_going_online_makes_the_tenant_available_and_nobody_else(
    aiohttp_client: ClientFactory, db: Database, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings))
    agent = await make_tenant(db, "acme", role=Role.AGENT)
    other = await make_tenant(db, "globex", role=Role.AGENT)
    assert not await _available(db, agent.tenant_id)

    status, me = await _put(client, agent, "online")

    assert status == 200 and me["presence"] == "online"
    assert (await (await client.get("/api/v1/me", headers=agent.headers)).json())["presence"] == "online"
    assert await _available(db, agent.tenant_id)
    assert not await _available(db, other.tenant_id)

    assert (await _put(client, agent, "away"))[1]["presence"] == "away"
    assert not await _available(db, agent.tenant_id)


async def test_a_marketer_online_is_no_one_to_talk_to(
    aiohttp_client: ClientFactory, db: Database, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings))
    marketer = await make_tenant(db, "acme", role=Role.MARKETER)

    assert (await _put(client, marketer, "online"))[0] == 200
    assert not await _available(db, marketer.tenant_id)


async def test_each_change_is_an_event_and_a_repeat_is_not(
    aiohttp_client: ClientFactory, db: Database, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings))
    agent = await make_tenant(db, "acme", role=Role.AGENT)

    for presence in ("online", "online", "busy"):
        assert (await _put(client, agent, presence))[0] == 200

    async with db.sessionmaker() as session:
        payloads = (
            await session.scalars(
                select(OutboxEvent.payload)
                .where(OutboxEvent.topic == "agent.presence_changed")
                .order_by(OutboxEvent.id)
            )
        ).all()
    assert [p["presence"] for p in payloads] == ["online", "busy"]
    assert {p["user_id"] for p in payloads} == {agent.user_id}


async def test_an_unknown_presence_is_refused(
    aiohttp_client: ClientFactory, db: Database, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings))
    agent = await make_tenant(db, "acme", role=Role.AGENT)

    status, body = await _put(client, agent, "napping")

    assert status == 422 and body["error"]["details"][0]["field"] == "body.presence"
    assert not await _available(db, agent.tenant_id)
