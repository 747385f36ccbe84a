"""Two gateway instances on one PostgreSQL route a burst of 1,000 conversations while agents come and go.

Both apps run their own outbox dispatcher (in-process, as `parley serve` does) and their own
connection pool, so routing transactions of the two race for real. Agents change presence through
the API of either app, conversations open (as the pipeline opens them) and some get resolved while
the burst runs. Afterwards the invariants are read back from the database alone.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from gateway.app import create_app
from gateway.keys import NOTIFIER
from inbox.models import Conversation, ConversationStatus
from parley.auth import issue_token
from parley.db import Database
from parley.models import OutboxEvent, Presence, User
from parley.settings import Settings
from routing.models import Assignment, ConversationRouting
from tests.conftest import eventually, make_tenant
from tests.routing.world import add_agent, add_inbox, open_conversation, resolve

AGENTS = 40
CAPACITY = 10  # 400 slots for 1,000 conversations: a queue must form
CONVERSATIONS = 1000


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_gateways_keep_every_invariant_under_a_burst(db: Database, settings: Settings) -> None:
    rng = random.Random(5)
    tenant = await make_tenant(db, "acme")
    agents = [
        await add_agent(db, tenant.tenant_id, presence=Presence.OFFLINE, capacity={"chat": CAPACITY})
        for _ in range(AGENTS)
    ]
    tokens = {}
    async with db.transaction() as session:
        for user_id in agents:
            user = await session.get(User, user_id)
            assert user is not None
            tokens[user_id] = await issue_token(session, user)
    inbox = await add_inbox(db, tenant.tenant_id)

    apps = [create_app(settings), create_app(settings)]
    servers = [TestServer(app) for app in apps]
    for server in servers:
        await server.start_server()
    try:
        async with ClientSession() as http:

            async def presence(user_id: int, value: str) -> None:
                server = rng.choice(servers)
                async with http.put(
                    server.make_url("/api/v1/me/presence"),
                    data=json.dumps({"presence": value}),
                    headers={"Authorization": f"Bearer {tokens[user_id]}"},
                ) as response:
                    assert response.status == 200

            async def conversations(share: int) -> list[int]:
                opened = []
                for _ in range(share):
                    opened.append(await open_conversation(db, tenant.tenant_id, inbox))
                    rng.choice(apps)[NOTIFIER].notify()
                return opened

            async def agents_come_and_go() -> None:
                for _ in range(300):
                    await presence(rng.choice(agents), rng.choice(["online", "online", "away", "busy"]))
                    await asyncio.sleep(0)
                for user_id in agents:  # everyone ends online: the queue must drain into them
                    await presence(user_id, "online")

            async def resolutions() -> None:
                for _ in range(150):
                    async with db.sessionmaker() as session:
                        held = (
                            await session.scalars(
                                select(Conversation.id)
                                .where(
                                    Conversation.assignee_id.is_not(None),
                                    Conversation.status != ConversationStatus.RESOLVED,
                                )
                                .limit(20)
                            )
                        ).all()
                    if held:
                        await resolve(db, tenant.tenant_id, rng.choice(held))
                        rng.choice(apps)[NOTIFIER].notify()
                    await asyncio.sleep(0.01)

            results = await asyncio.gather(
                *(conversations(CONVERSATIONS // 8) for _ in range(8)), agents_come_and_go(), resolutions()
            )
            opened = [c for batch in results[:8] for c in batch]
            assert len(opened) == CONVERSATIONS

            async def settled() -> bool:
                async with db.sessionmaker() as session:
                    pending = (
                        await session.execute(select(func.count()).where(OutboxEvent.completed_at.is_(None)))
                    ).scalar_one()
                return pending == 0

            await eventually(settled, timeout=180)
    finally:
        for server in servers:
            await server.close()

    await _assert_invariants(db, tenant.tenant_id, agents)


async def _assert_invariants(db: Database, tenant_id: int, agents: list[int]) -> None:
    async with db.sessionmaker() as session:
        failed = (
            await session.scalars(select(OutboxEvent.last_error).where(OutboxEvent.last_error.is_not(None)))
        ).all()
        assert failed == [], failed[:3]
        conversations = (
            await session.execute(
                select(Conversation.id, Conversation.assignee_id, Conversation.status).where(
                    Conversation.tenant_id == tenant_id
                )
            )
        ).all()
        history = (
            await session.execute(
                select(Assignment.conversation_id, Assignment.user_id, Assignment.assigned_at)
            )
        ).all()
        routing = {
            row.conversation_id: row
            for row in (
                await session.scalars(
                    select(ConversationRouting).where(ConversationRouting.tenant_id == tenant_id)
                )
            ).all()
        }
        queued_events = {
            int(payload["conversation_id"]): created
            for payload, created in (
                await session.execute(
                    select(OutboxEvent.payload, OutboxEvent.created_at).where(
                        OutboxEvent.topic == "conversation.queued"
                    )
                )
            ).all()
        }
        presence = dict(
            (await session.execute(select(User.id, User.presence).where(User.id.in_(agents)))).all()
        )

    # Nobody above capacity.
    load = Counter(c.assignee_id for c in conversations if c.assignee_id and c.status != "resolved")
    assert max(load.values()) <= CAPACITY, load.most_common(3)

    # No conversation assigned twice (nothing unassigns here), and the history agrees with the rows.
    per_conversation = Counter(h.conversation_id for h in history)
    assert max(per_conversation.values()) == 1
    assignee = {c.id: c.assignee_id for c in conversations}
    assert all(assignee[h.conversation_id] == h.user_id for h in history)

    # Nobody eligible idle while a conversation waits: all agents ended online.
    waiting = [c.id for c in conversations if c.assignee_id is None and c.status != "resolved"]
    assert set(presence.values()) == {"online"}
    if waiting:
        assert all(load[user_id] == CAPACITY for user_id in agents), load
    # And with everyone full, something does wait: the burst was larger than the capacity.
    assert waiting and len(history) >= AGENTS * CAPACITY

    # First come, first served: once a conversation was queued, nothing that opened later was
    # assigned ahead of it while it still waits.
    for conversation_id in waiting:
        queued_at = routing[conversation_id].queued_at
        since = queued_events[conversation_id]
        later_served = [
            h.conversation_id
            for h in history
            if h.assigned_at > since and routing[h.conversation_id].queued_at > queued_at  # type: ignore[operator]
        ]
        assert later_served == [], (conversation_id, later_served[:5])
