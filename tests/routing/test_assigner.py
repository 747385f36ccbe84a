"""The assigner on a real database (SQLite and PostgreSQL), driven by the outbox events that trigger it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest_asyncio
from sqlalchemy import select, update

from crm_core.models import Contact
from gateway.wiring import routing_subscribers
from parley.db import Database
from parley.models import OutboxEvent, Presence
from parley.outbox import Dispatcher
from routing.assigner import Assigner
from routing.match import WEEKDAYS
from routing.models import Assignment, ConversationRouting, RoutingState
from routing.presence import set_presence
from tests.conftest import make_tenant
from tests.routing.world import (
    add_agent,
    add_contact,
    add_inbox,
    add_team,
    assignees,
    load_of,
    open_conversation,
    resolve,
)


@pytest_asyncio.fixture
async def dispatcher(db: Database) -> AsyncIterator[Dispatcher]:
    yield Dispatcher(db, routing_subscribers(Assigner(db)))


async def _go_online(
    db: Database, tenant_id: int, user_id: int, presence: Presence = Presence.ONLINE
) -> None:
    async with db.transaction() as session:
        await set_presence(session, tenant_id, user_id, presence)


async def _topics(db: Database, topic: str) -> list[dict[str, object]]:
    async with db.sessionmaker() as session:
        return list(
            (
                await session.scalars(
                    select(OutboxEvent.payload).where(OutboxEvent.topic == topic).order_by(OutboxEvent.id)
                )
            ).all()
        )


async def test_a_conversation_waits_until_an_agent_comes_online_then_is_assigned(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, presence=Presence.OFFLINE)
    inbox = await add_inbox(db, tenant.tenant_id)

    conversation = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()
    assert await assignees(db, conversation) == [None]
    assert [e["conversation_id"] for e in await _topics(db, "conversation.queued")] == [conversation]

    await _go_online(db, tenant.tenant_id, agent)
    await dispatcher.drain()

    assert await assignees(db, conversation) == [agent]
    [assigned] = await _topics(db, "conversation.assigned")
    assert assigned["assignee_id"] == agent and assigned["conversation_id"] == conversation


async def test_capacity_is_never_exceeded_and_resolving_serves_the_next_in_line(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, capacity={"chat": 2})
    inbox = await add_inbox(db, tenant.tenant_id)

    opened = []
    for _ in range(3):
        opened.append(await open_conversation(db, tenant.tenant_id, inbox))
        await dispatcher.drain()
    first, second, third = opened
    assert await assignees(db, first, second, third) == [agent, agent, None]
    assert await load_of(db, agent) == 2

    await resolve(db, tenant.tenant_id, first)
    await dispatcher.drain()

    assert await assignees(db, third) == [agent]
    assert await load_of(db, agent) == 2
    async with db.sessionmaker() as session:
        state = await session.get(ConversationRouting, first)
    assert state is not None and state.state == RoutingState.CLOSED


async def test_capacity_is_per_channel_kind(db: Database, dispatcher: Dispatcher) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, capacity={"chat": 1, "voice": 0})
    chat = await add_inbox(db, tenant.tenant_id, channel="twilio_sms")
    voice = await add_inbox(db, tenant.tenant_id, channel="twilio_voice")

    call = await open_conversation(db, tenant.tenant_id, voice)
    text = await open_conversation(db, tenant.tenant_id, chat)
    await dispatcher.drain()

    assert await assignees(db, call, text) == [None, agent]


async def test_higher_priority_is_served_first_then_first_come(db: Database, dispatcher: Dispatcher) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, presence=Presence.OFFLINE, capacity={"chat": 2})
    normal = await add_inbox(db, tenant.tenant_id)
    vip = await add_inbox(db, tenant.tenant_id, priority=5)
    early = await open_conversation(db, tenant.tenant_id, normal)
    later = await open_conversation(db, tenant.tenant_id, normal)
    urgent = await open_conversation(db, tenant.tenant_id, vip)
    await dispatcher.drain()

    await _go_online(db, tenant.tenant_id, agent)
    await dispatcher.drain()

    assert await assignees(db, urgent, early, later) == [agent, agent, None]


async def test_skills_and_language_are_required_and_the_best_level_wins(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    novice = await add_agent(db, tenant.tenant_id, skills={"billing": 1}, languages=["es"])
    expert = await add_agent(db, tenant.tenant_id, skills={"billing": 3}, languages=["es"])
    await add_agent(db, tenant.tenant_id, skills={"billing": 5})  # no Spanish
    inbox = await add_inbox(
        db, tenant.tenant_id, required_skills={"billing": 1}, language="es", strategies=["skill"]
    )

    conversation = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()

    assert await assignees(db, conversation) == [expert]
    assert novice != expert


async def test_nobody_with_the_skill_means_waiting_until_a_profile_gains_it(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id)
    inbox = await add_inbox(db, tenant.tenant_id, required_skills={"tech": 2})
    conversation = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()
    assert await assignees(db, conversation) == [None]

    from parley.outbox import emit
    from routing.assigner import PROFILE_CHANGED_TOPIC
    from routing.models import AgentProfile

    async with db.transaction() as session:
        profile = await session.get(AgentProfile, agent)
        assert profile is not None
        profile.skills = {"tech": 2}
        await emit(session, tenant.tenant_id, (PROFILE_CHANGED_TOPIC, {"user_id": agent}))
    await dispatcher.drain()

    assert await assignees(db, conversation) == [agent]


async def test_a_returning_contact_goes_back_to_their_previous_agent(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    first_agent = await add_agent(db, tenant.tenant_id, capacity={"chat": 5})
    inbox = await add_inbox(db, tenant.tenant_id)
    contact = await add_contact(db, tenant.tenant_id)
    before = await open_conversation(db, tenant.tenant_id, inbox, contact)
    await dispatcher.drain()
    assert await assignees(db, before) == [first_agent]
    await resolve(db, tenant.tenant_id, before)
    # A second, idle agent appears; least-loaded alone would pick them.
    await add_agent(db, tenant.tenant_id, capacity={"chat": 5})
    await open_conversation(db, tenant.tenant_id, inbox)  # someone else's conversation loads the first agent
    await dispatcher.drain()

    again = await open_conversation(db, tenant.tenant_id, inbox, contact)
    await dispatcher.drain()

    assert await assignees(db, again) == [first_agent]
    async with db.sessionmaker() as session:
        reasons = (
            await session.scalars(select(Assignment.reason).where(Assignment.conversation_id == again))
        ).all()
    assert reasons == ["sticky"]


async def test_territory_from_the_contacts_country(db: Database, dispatcher: Dispatcher) -> None:
    tenant = await make_tenant(db, "acme")
    await add_agent(db, tenant.tenant_id, territories=["FR"])
    german = await add_agent(db, tenant.tenant_id, territories=["DE"])
    inbox = await add_inbox(db, tenant.tenant_id, strategies=["territory"])
    contact = await add_contact(db, tenant.tenant_id, country="de")

    conversation = await open_conversation(db, tenant.tenant_id, inbox, contact)
    await dispatcher.drain()

    assert await assignees(db, conversation) == [german]


async def test_without_a_country_the_territory_comes_from_the_phone_number(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    await add_agent(db, tenant.tenant_id, territories=["DE"])
    british = await add_agent(db, tenant.tenant_id, territories=["GB"])
    inbox = await add_inbox(db, tenant.tenant_id, strategies=["territory"])
    contact = await add_contact(db, tenant.tenant_id)
    async with db.transaction() as session:
        await session.execute(update(Contact).where(Contact.id == contact).values(phone="+442079460958"))

    conversation = await open_conversation(db, tenant.tenant_id, inbox, contact)
    await dispatcher.drain()

    assert await assignees(db, conversation) == [british]


async def test_a_team_inbox_overflows_to_another_team_after_the_wait(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    tier1 = await add_team(db, tenant.tenant_id, "tier 1")
    tier2 = await add_team(db, tenant.tenant_id, "tier 2")
    helper = await add_agent(db, tenant.tenant_id, teams=[tier2])
    inbox = await add_inbox(
        db, tenant.tenant_id, serving_team_id=tier1, overflow_team_id=tier2, overflow_after_seconds=0
    )
    patient = await add_inbox(
        db, tenant.tenant_id, serving_team_id=tier1, overflow_team_id=tier2, overflow_after_seconds=3600
    )

    overflowing = await open_conversation(db, tenant.tenant_id, inbox)
    waiting = await open_conversation(db, tenant.tenant_id, patient)
    await dispatcher.drain()

    assert await assignees(db, overflowing, waiting) == [helper, None]


async def test_outside_working_hours_an_online_agent_takes_nothing(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    # A shift that starts in two hours, local time in Tokyo.
    local = datetime.now(ZoneInfo("Asia/Tokyo"))
    start, end = (
        (local + timedelta(hours=2)).strftime("%H:00"),
        (local + timedelta(hours=3)).strftime("%H:00"),
    )
    later = {WEEKDAYS[local.weekday()]: [[start, end]]}
    await add_agent(db, tenant.tenant_id, working_hours=later, time_zone="Asia/Tokyo")
    inbox = await add_inbox(db, tenant.tenant_id)

    conversation = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()

    assert await assignees(db, conversation) == [None]


async def test_the_manual_strategy_leaves_it_to_a_person(db: Database, dispatcher: Dispatcher) -> None:
    tenant = await make_tenant(db, "acme")
    await add_agent(db, tenant.tenant_id)
    inbox = await add_inbox(db, tenant.tenant_id, strategies=["manual"])

    conversation = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()

    assert await assignees(db, conversation) == [None]
    async with db.sessionmaker() as session:
        state = await session.get(ConversationRouting, conversation)
    assert state is not None and state.state == RoutingState.MANUAL


async def test_an_agent_of_another_tenant_never_gets_the_conversation(
    db: Database, dispatcher: Dispatcher
) -> None:
    acme = await make_tenant(db, "acme")
    globex = await make_tenant(db, "globex")
    await add_agent(db, globex.tenant_id, capacity={"chat": 50})
    inbox = await add_inbox(db, acme.tenant_id)

    conversation = await open_conversation(db, acme.tenant_id, inbox)
    await dispatcher.drain()

    assert await assignees(db, conversation) == [None]


async def test_position_and_estimated_wait_follow_the_recent_serving_rate(
    db: Database, dispatcher: Dispatcher
) -> None:
    from routing.queue import RATE_WINDOW, queue_entry

    tenant = await make_tenant(db, "acme")
    await add_agent(db, tenant.tenant_id, capacity={"chat": 1})
    inbox = await add_inbox(db, tenant.tenant_id)
    served = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()
    second = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()
    third = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()

    async with db.sessionmaker() as session:
        entry = await queue_entry(session, tenant.tenant_id, third)
        done = await queue_entry(session, tenant.tenant_id, served)
    assert entry is not None and done is not None
    assert (entry.state, entry.position, entry.waiting) == ("waiting", 2, 2)
    # One conversation served in the window: two ahead-or-at take two windows' worth.
    assert entry.estimated_wait_seconds == 2 * RATE_WINDOW.total_seconds()
    assert (done.state, done.position) == ("assigned", None)
    assert second


async def test_a_sweep_serves_what_no_event_announces_such_as_an_overflow_wait_ending(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    tier1 = await add_team(db, tenant.tenant_id, "tier 1")
    tier2 = await add_team(db, tenant.tenant_id, "tier 2")
    helper = await add_agent(db, tenant.tenant_id, teams=[tier2])
    inbox = await add_inbox(
        db, tenant.tenant_id, serving_team_id=tier1, overflow_team_id=tier2, overflow_after_seconds=1
    )
    conversation = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()
    assert await assignees(db, conversation) == [None]
    assigner = Assigner(db)
    assert await assigner.sweep() == 0  # still within the wait

    await asyncio.sleep(1.1)

    assert await assigner.sweep() == 1
    assert await assignees(db, conversation) == [helper]
