"""Computed priorities on a real database (SQLite and PostgreSQL), driven by the events that move them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest_asyncio
from sqlalchemy import select

from crm_core.deals import move_deal, open_deal
from crm_core.lifecycle import set_stage
from crm_core.lifecycle_stages import LifecycleStage
from crm_core.models import Contact, ContactTag, Deal, Pipeline, PipelineStage
from gateway.wiring import routing_subscribers
from inbox.actions import Actor, announce, apply_status, set_labels, set_priority
from inbox.models import Conversation, ConversationStatus, Message, PrioritySource
from parley.db import Database, utcnow
from parley.models import OutboxEvent, Presence
from parley.outbox import Dispatcher, emit
from routing.assigner import Assigner
from routing.escalation import Incident, _raise_priority
from routing.models import ConversationRouting
from routing.presence import set_presence
from routing.prioritizer import Prioritizer, recompute, save_config, subscribe, sweep
from routing.priority import ScoringConfig
from tests.conftest import make_tenant
from tests.routing.world import add_agent, add_contact, add_inbox, assignees, open_conversation


@pytest_asyncio.fixture
async def dispatcher(db: Database) -> AsyncIterator[Dispatcher]:
    subscribers = routing_subscribers(Assigner(db))
    subscribe(subscribers, Prioritizer(db))
    yield Dispatcher(db, subscribers)


async def customer_writes(
    db: Database, conversation_id: int, body: str, *, at: datetime | None = None, **extra: Any
) -> int:
    """A customer message as the pipeline stores it, with its `message.received` event."""
    async with db.transaction() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        message = Message(
            tenant_id=conversation.tenant_id,
            inbox_id=conversation.inbox_id,
            conversation_id=conversation.id,
            direction="inbound",
            sender_type="contact",
            sender_id=conversation.contact_id,
            body=body,
            status="received",
            extra=extra,
            created_at=at or utcnow(),
        )
        session.add(message)
        await session.flush()
        await emit(
            session,
            conversation.tenant_id,
            (
                "message.received",
                {
                    "message_id": message.id,
                    "conversation_id": conversation.id,
                    "inbox_id": conversation.inbox_id,
                    "contact_id": conversation.contact_id,
                },
            ),
        )
        return message.id


async def agent_replies(db: Database, conversation_id: int) -> None:
    async with db.transaction() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        session.add(
            Message(
                tenant_id=conversation.tenant_id,
                inbox_id=conversation.inbox_id,
                conversation_id=conversation.id,
                direction="outbound",
                sender_type="user",
                body="On it!",
                status="sent",
            )
        )


async def conversation(db: Database, conversation_id: int) -> Conversation:
    async with db.sessionmaker() as session:
        found = await session.get(Conversation, conversation_id)
        assert found is not None
        return found


def why(c: Conversation) -> list[str]:
    return [r["label"] for r in c.priority_reasons or []]


async def priority_events(db: Database, conversation_id: int) -> list[dict[str, Any]]:
    async with db.sessionmaker() as session:
        payloads = (
            await session.scalars(
                select(OutboxEvent.payload)
                .where(OutboxEvent.topic == "conversation.updated")
                .order_by(OutboxEvent.id)
            )
        ).all()
    return [
        p for p in payloads if p["conversation_id"] == conversation_id and "priority" in p.get("changes", {})
    ]


async def test_a_customers_urgent_words_and_intent_raise_the_priority_and_say_why(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    inbox = await add_inbox(db, tenant.tenant_id)
    cid = await open_conversation(db, tenant.tenant_id, inbox)
    await customer_writes(db, cid, "Hello, a question about my invoice")
    await dispatcher.drain()
    assert (await conversation(db, cid)).priority == "none"

    await customer_writes(db, cid, "It is URGENT, the app is not working!", intent={"name": "report_outage"})
    await dispatcher.drain()
    c = await conversation(db, cid)
    assert c.priority == "high" and c.priority_source == PrioritySource.COMPUTED
    assert why(c) == ["intent: report_outage", "said 'urgent'", "said 'not working'"]
    assert c.priority_score == 30 + 20 + 15
    [event] = await priority_events(db, cid)
    assert event["changes"]["priority"] == {"old": "none", "new": "high"}
    assert event["reason"] == "priority_scored"

    # Answered: the words were heard, nothing is waiting any more.
    await agent_replies(db, cid)
    async with db.transaction() as session:
        await recompute(session, tenant.tenant_id, [cid])
    assert (await conversation(db, cid)).priority == "none"


async def test_vip_tag_lifecycle_and_open_deals_rescore_the_contacts_conversations(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    inbox = await add_inbox(db, tenant.tenant_id)
    contact = await add_contact(db, tenant.tenant_id)
    cid = await open_conversation(db, tenant.tenant_id, inbox, contact)
    await dispatcher.drain()

    async with db.transaction() as session:  # as PATCH /contacts does
        session.add(ContactTag(contact_id=contact, tag="VIP", tenant_id=tenant.tenant_id))
        updated = {"contact_id": contact, "changed": ["tags"]}
        await emit(session, tenant.tenant_id, ("contact.updated", updated))
    await dispatcher.drain()
    c = await conversation(db, cid)
    assert (c.priority, why(c)) == ("high", ["VIP"])

    async with db.transaction() as session:
        pipeline = Pipeline(tenant_id=tenant.tenant_id, name="Sales")
        session.add(pipeline)
        await session.flush()
        stages = [
            PipelineStage(tenant_id=tenant.tenant_id, pipeline_id=pipeline.id, name=n, position=i, outcome=o)
            for i, (n, o) in enumerate([("Talking", "open"), ("Won", "won")])
        ]
        session.add_all(stages)
        await session.flush()
        deal = Deal(
            tenant_id=tenant.tenant_id,
            pipeline_id=pipeline.id,
            stage_id=stages[0].id,
            title="Fleet",
            amount_minor=1_200_000,
            currency="EUR",
            contact_id=contact,
        )
        await open_deal(session, deal, stages[0])  # also makes the contact an opportunity
        deal_id, won_id = deal.id, stages[1].id
    await dispatcher.drain()
    c = await conversation(db, cid)
    assert why(c) == ["VIP", "open deal €12,000", "lifecycle: opportunity"]
    assert c.priority == "urgent"  # 40 + 30 + 15

    async with db.transaction() as session:
        deal_row = await session.get(Deal, deal_id)
        won = await session.get(PipelineStage, won_id)
        assert deal_row is not None and won is not None
        deal_row.closed_at = utcnow()
        await move_deal(session, deal_row, won, None)  # won: no longer open, the contact a customer
    await dispatcher.drain()
    c = await conversation(db, cid)
    assert (c.priority, why(c)) == ("high", ["VIP", "lifecycle: customer"])

    async with db.transaction() as session:
        contact_row = await session.get(Contact, contact)
        assert contact_row is not None
        await set_stage(session, contact_row, LifecycleStage.CHURNED, reason="test")
    await dispatcher.drain()
    assert why(await conversation(db, cid)) == ["VIP", "lifecycle: churned"]

    # Merging another contact into this one: the merged contact's conversations take its signals.
    other_contact = await add_contact(db, tenant.tenant_id)
    moved = await open_conversation(
        db, tenant.tenant_id, await add_inbox(db, tenant.tenant_id), other_contact
    )
    await dispatcher.drain()
    assert why(await conversation(db, moved)) == []
    async with db.transaction() as session:  # as crm_core.merge does, in short
        row = await session.get(Conversation, moved)
        assert row is not None
        row.contact_id = contact
        await emit(
            session,
            tenant.tenant_id,
            ("contact.merged", {"survivor_id": contact, "merged_id": other_contact}),
        )
    await dispatcher.drain()
    assert why(await conversation(db, moved)) == ["VIP", "lifecycle: churned"]

    # A label on the conversation counts as the VIP tag too, and changing labels rescores.
    other = await open_conversation(db, tenant.tenant_id, await add_inbox(db, tenant.tenant_id))
    await dispatcher.drain()
    async with db.transaction() as session:
        await set_labels(session, tenant.tenant_id, tenant.user_id, other, ["vip"], may_create=True)
    await dispatcher.drain()
    assert why(await conversation(db, other)) == ["VIP"]


async def test_a_manual_priority_wins_until_resolved_then_scoring_resumes_on_reopen(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    inbox = await add_inbox(db, tenant.tenant_id)
    cid = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()
    async with db.transaction() as session:
        await set_priority(session, tenant.tenant_id, tenant.user_id, cid, "low")
    await dispatcher.drain()

    await customer_writes(db, cid, "emergency! urgent!")
    await dispatcher.drain()
    c = await conversation(db, cid)
    assert (c.priority, c.priority_source, c.priority_set_by_id) == ("low", "manual", tenant.user_id)
    assert why(c) == ["said 'emergency'", "said 'urgent'"]  # what scoring would say is still kept

    for status in (ConversationStatus.RESOLVED, ConversationStatus.OPEN):
        async with db.transaction() as session:
            row = await session.get(Conversation, cid)
            assert row is not None
            changes = await apply_status(session, row, status)
            await announce(session, row, changes, actor=Actor.user(tenant.user_id))
        await dispatcher.drain()
        if status == ConversationStatus.RESOLVED:
            assert (await conversation(db, cid)).priority == "low"  # still the agent's
    c = await conversation(db, cid)
    assert (c.priority, c.priority_source, c.priority_set_by_id) == ("high", "computed", None)


async def test_an_escalated_priority_is_not_lowered_by_scoring(db: Database, dispatcher: Dispatcher) -> None:
    tenant = await make_tenant(db, "acme")
    inbox = await add_inbox(db, tenant.tenant_id)
    cid = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()
    incident = Incident(tenant.tenant_id, 1, cid, "breach", "first_response", utcnow(), 1, "Gold")
    async with db.transaction() as session:
        row = await session.get(Conversation, cid)
        assert row is not None
        await _raise_priority(session, incident, row, {"to": "urgent"})
    await dispatcher.drain()
    async with db.transaction() as session:
        await recompute(session, tenant.tenant_id, [cid])
    c = await conversation(db, cid)
    assert (c.priority, c.priority_source) == ("urgent", "escalation")


async def test_a_waiting_conversation_that_becomes_urgent_is_served_before_older_ones(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, presence=Presence.OFFLINE, capacity={"chat": 1})
    inbox = await add_inbox(db, tenant.tenant_id)
    older = await open_conversation(db, tenant.tenant_id, inbox)
    await customer_writes(db, older, "hi, a question")
    newer = await open_conversation(db, tenant.tenant_id, inbox)
    await customer_writes(db, newer, "hello")
    await dispatcher.drain()
    assert await assignees(db, older, newer) == [None, None]

    await customer_writes(db, newer, "This is an emergency, it is urgent")
    await dispatcher.drain()
    async with db.sessionmaker() as session:
        queue = {
            r.conversation_id: r.priority for r in (await session.scalars(select(ConversationRouting))).all()
        }
    assert queue[newer] > queue[older]

    async with db.transaction() as session:
        await set_presence(session, tenant.tenant_id, agent, Presence.ONLINE)
    await dispatcher.drain()
    assert await assignees(db, older, newer) == [None, agent]


async def test_a_priority_set_by_hand_moves_the_conversation_in_the_queue(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    agent = await add_agent(db, tenant.tenant_id, presence=Presence.OFFLINE, capacity={"chat": 1})
    inbox = await add_inbox(db, tenant.tenant_id)
    older = await open_conversation(db, tenant.tenant_id, inbox)
    newer = await open_conversation(db, tenant.tenant_id, inbox)
    await dispatcher.drain()
    async with db.transaction() as session:
        await set_priority(session, tenant.tenant_id, tenant.user_id, newer, "high")
    await dispatcher.drain()
    async with db.transaction() as session:
        await set_presence(session, tenant.tenant_id, agent, Presence.ONLINE)
    await dispatcher.drain()
    assert await assignees(db, older, newer) == [None, agent]


async def test_the_sweep_raises_waiting_conversations_once_and_leaves_answered_ones(
    db: Database, dispatcher: Dispatcher
) -> None:
    tenant = await make_tenant(db, "acme")
    inbox = await add_inbox(db, tenant.tenant_id)
    start = utcnow()
    waiting = await open_conversation(db, tenant.tenant_id, inbox)
    await customer_writes(db, waiting, "hello", at=start)
    answered = await open_conversation(db, tenant.tenant_id, inbox)
    await customer_writes(db, answered, "hello", at=start)
    await agent_replies(db, answered)
    await dispatcher.drain()
    assert (await conversation(db, waiting)).priority == "none"

    later = start + timedelta(minutes=25)
    assert await sweep(db, now=later) == 1
    c = await conversation(db, waiting)
    assert (c.priority, why(c)) == ("medium", ["waiting 25 min"])
    assert (await conversation(db, answered)).priority_reasons == []
    assert await sweep(db, now=later) == 0  # idempotent: nothing moves, nothing is announced again
    assert len(await priority_events(db, waiting)) == 1
    assert await sweep(db, now=later + timedelta(minutes=2)) == 0  # a longer wait, the same level
    assert why(await conversation(db, waiting)) == ["waiting 27 min"]


async def test_saving_a_config_rescores_the_tenants_conversations_only(
    db: Database, dispatcher: Dispatcher
) -> None:
    acme = await make_tenant(db, "acme")
    globex = await make_tenant(db, "globex")
    mine = await open_conversation(db, acme.tenant_id, await add_inbox(db, acme.tenant_id))
    theirs = await open_conversation(db, globex.tenant_id, await add_inbox(db, globex.tenant_id))
    for cid in (mine, theirs):
        await customer_writes(db, cid, "please send a refund")
    await dispatcher.drain()
    assert [(await conversation(db, c)).priority for c in (mine, theirs)] == ["low", "low"]

    stricter = ScoringConfig.from_dict({"urgency_phrases": {"en": {"refund": 45}}})
    async with db.transaction() as session:
        await save_config(session, acme.tenant_id, stricter, acme.user_id)
    await dispatcher.drain()
    assert [(await conversation(db, c)).priority for c in (mine, theirs)] == ["high", "low"]
    async with db.transaction() as session:  # another tenant's conversation is out of reach
        assert await recompute(session, globex.tenant_id, [mine], config=stricter) == []
