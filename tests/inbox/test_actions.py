"""Conversation actions and the agents' list, as service functions, on both databases."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from channels.base import Address, InboundMessage
from crm_core.models import ChannelIdentity, Contact
from gateway import pipeline
from inbox import actions
from inbox.actions import ActionError, ConflictError, NotFoundError
from inbox.listing import (
    ConversationFilters,
    InvalidCursor,
    list_conversations,
    preview,
    unread_counts,
    view_counts,
)
from inbox.models import Conversation, ConversationRead, ConversationStatus, Inbox, Label, Message
from inbox.runtime import InboxDirectory
from inbox.snooze import CUSTOMER_REPLIED, SNOOZE_EXPIRED, SnoozeWaker, wake_due_snoozes
from parley.crypto import SecretBox
from parley.db import Database, utcnow
from parley.models import OutboxEvent, Role
from parley.outbox import Dispatcher
from routing.filters import team_conversations
from routing.models import ConversationRouting, Team
from tests.conftest import SECRET_KEY, TenantAccess, make_tenant, make_twilio_inbox

_phones = itertools.count(100)


@dataclass
class World:
    db: Database
    admin: TenantAccess

    @property
    def tenant_id(self) -> int:
        return self.admin.tenant_id

    async def inbox(
        self, *, channel: str = "twilio_sms", name: str = "Support", tenant_id: int | None = None
    ) -> int:
        async with self.db.transaction() as session:
            inbox = Inbox(tenant_id=tenant_id or self.tenant_id, name=name, channel=channel, settings={})
            session.add(inbox)
            await session.flush()
            return inbox.id

    async def contact(self, *, name: str | None = "Ann", tenant_id: int | None = None) -> tuple[int, int]:
        tenant_id = tenant_id or self.tenant_id
        phone = f"+1415555{next(_phones):04d}"
        async with self.db.transaction() as session:
            contact = Contact(tenant_id=tenant_id, name=name, phone=phone, attributes={})
            session.add(contact)
            await session.flush()
            identity = ChannelIdentity(
                tenant_id=tenant_id, contact_id=contact.id, kind="phone", address=phone
            )
            session.add(identity)
            await session.flush()
            return contact.id, identity.id

    async def conversation(
        self,
        inbox_id: int,
        contact: tuple[int, int] | None = None,
        *,
        status: ConversationStatus = ConversationStatus.OPEN,
        assignee_id: int | None = None,
        tenant_id: int | None = None,
    ) -> int:
        tenant_id = tenant_id or self.tenant_id
        contact_id, identity_id = contact or await self.contact(tenant_id=tenant_id)
        async with self.db.transaction() as session:
            conversation = Conversation(
                tenant_id=tenant_id,
                inbox_id=inbox_id,
                contact_id=contact_id,
                identity_id=identity_id,
                status=status,
                assignee_id=assignee_id,
                resolved_at=utcnow() if status == ConversationStatus.RESOLVED else None,
            )
            session.add(conversation)
            await session.flush()
            return conversation.id

    async def message(
        self, conversation_id: int, body: str = "hello", *, inbound: bool = True, ago: float = 0
    ) -> int:
        """A message `ago` minutes in the past, from the customer (`inbound`) or an agent."""
        at = utcnow() - timedelta(minutes=ago)
        async with self.db.transaction() as session:
            conversation = await session.get_one(Conversation, conversation_id)
            message = Message(
                tenant_id=conversation.tenant_id,
                inbox_id=conversation.inbox_id,
                conversation_id=conversation_id,
                direction="inbound" if inbound else "outbound",
                sender_type="contact" if inbound else "user",
                sender_id=conversation.contact_id if inbound else None,
                body=body,
                status="received" if inbound else "sent",
                created_at=at,
            )
            session.add(message)
            conversation.last_message_at = max(conversation.last_message_at or at, at)
            if inbound:
                conversation.last_inbound_at = max(conversation.last_inbound_at or at, at)
            await session.flush()
            return message.id

    async def get(self, conversation_id: int) -> Conversation:
        async with self.db.sessionmaker() as session:
            return await session.get_one(Conversation, conversation_id)

    async def events(self, topic: str = actions.UPDATED_TOPIC) -> list[dict[str, Any]]:
        async with self.db.sessionmaker() as session:
            rows = await session.execute(
                select(OutboxEvent.payload).where(OutboxEvent.topic == topic).order_by(OutboxEvent.id)
            )
            return [dict(p) for p in rows.scalars()]


@pytest.fixture
async def world(db: Database) -> World:
    return World(db, await make_tenant(db, "acme"))


# --- priority and status --------------------------------------------------------------------------


async def test_priority_is_set_announced_and_validated(world: World) -> None:
    conversation_id = await world.conversation(await world.inbox())
    async with world.db.transaction() as session:
        await actions.set_priority(session, world.tenant_id, world.admin.user_id, conversation_id, "urgent")
    assert (await world.get(conversation_id)).priority == "urgent"
    [event] = await world.events()
    assert event["changes"] == {"priority": {"old": "none", "new": "urgent"}}
    assert event["changed_by"] == {"type": "user", "id": world.admin.user_id}

    async with world.db.transaction() as session:  # the same again: nothing to announce
        await actions.set_priority(session, world.tenant_id, world.admin.user_id, conversation_id, "urgent")
    with pytest.raises(ActionError) as raised:
        async with world.db.transaction() as session:
            await actions.set_priority(session, world.tenant_id, world.admin.user_id, conversation_id, "asap")
    assert raised.value.code == "invalid_priority"
    assert len(await world.events()) == 1


async def test_another_tenants_conversation_is_not_found(world: World) -> None:
    other = await make_tenant(world.db, "globex")
    theirs = await world.conversation(await world.inbox(tenant_id=other.tenant_id), tenant_id=other.tenant_id)
    for act in (
        lambda s: actions.set_priority(s, world.tenant_id, world.admin.user_id, theirs, "high"),
        lambda s: actions.snooze(s, world.tenant_id, world.admin.user_id, theirs),
        lambda s: actions.set_labels(s, world.tenant_id, world.admin.user_id, theirs, ["x"], may_create=True),
        lambda s: actions.mark_read(s, world.tenant_id, world.admin.user_id, theirs),
        lambda s: actions.mark_unread(s, world.tenant_id, world.admin.user_id, theirs),
    ):
        with pytest.raises(NotFoundError):
            async with world.db.transaction() as session:
                await act(session)
    assert (await world.get(theirs)).priority == "none"
    assert await world.events() == []


async def test_snoozing_needs_a_future_time_or_none(world: World) -> None:
    conversation_id = await world.conversation(await world.inbox())
    for bad in (utcnow() - timedelta(minutes=1), utcnow().replace(tzinfo=None) + timedelta(hours=1)):
        with pytest.raises(ActionError) as raised:
            async with world.db.transaction() as session:
                await actions.snooze(
                    session, world.tenant_id, world.admin.user_id, conversation_id, until=bad
                )
        assert raised.value.code == "invalid_snooze"
    with pytest.raises(ActionError):  # a wake-up time only goes with snoozing
        async with world.db.transaction() as session:
            await actions.set_status(
                session,
                world.tenant_id,
                world.admin.user_id,
                conversation_id,
                ConversationStatus.PENDING,
                snoozed_until=utcnow() + timedelta(hours=1),
            )
    until = utcnow() + timedelta(hours=2)
    async with world.db.transaction() as session:
        await actions.snooze(session, world.tenant_id, world.admin.user_id, conversation_id, until=until)
    conversation = await world.get(conversation_id)
    assert (conversation.status, conversation.snoozed_until) == ("snoozed", until)
    [event] = await world.events()
    assert event["changes"] == {
        "status": {"old": "open", "new": "snoozed"},
        "snoozed_until": {"old": None, "new": until.isoformat()},
    }
    async with world.db.transaction() as session:  # reopening by hand clears the snooze
        await actions.set_status(
            session, world.tenant_id, world.admin.user_id, conversation_id, ConversationStatus.OPEN
        )
    conversation = await world.get(conversation_id)
    assert (conversation.status, conversation.snoozed_until, conversation.snoozed_at) == ("open", None, None)


async def test_a_due_snooze_is_woken_by_the_sweep_and_a_later_one_is_not(world: World) -> None:
    inbox_id = await world.inbox()
    due, later, forever = [await world.conversation(inbox_id) for _ in range(3)]
    async with world.db.transaction() as session:
        for conversation_id, hours in ((due, 1), (later, 5)):
            await actions.snooze(
                session,
                world.tenant_id,
                world.admin.user_id,
                conversation_id,
                until=utcnow() + timedelta(hours=hours),
            )
        await actions.snooze(session, world.tenant_id, world.admin.user_id, forever)
    assert await wake_due_snoozes(world.db, now=utcnow() + timedelta(hours=2)) == 1
    assert [(await world.get(c)).status for c in (due, later, forever)] == ["open", "snoozed", "snoozed"]
    woken = [e for e in await world.events() if e.get("reason") == SNOOZE_EXPIRED]
    assert [e["conversation_id"] for e in woken] == [due]
    assert woken[0]["changes"]["status"] == {"old": "snoozed", "new": "open"}
    assert woken[0]["changed_by"] == {"type": "system", "id": None}
    assert await wake_due_snoozes(world.db, now=utcnow() + timedelta(hours=2)) == 0  # once only


@pytest.mark.parametrize("with_time", [False, True])
async def test_the_customers_next_message_wakes_a_snoozed_conversation(world: World, with_time: bool) -> None:
    inbox_id = await make_twilio_inbox(world.db, world.tenant_id, "http://127.0.0.1:9", "AC" + "0" * 32, "t")
    directory = InboxDirectory(world.db, SecretBox(SECRET_KEY))
    inbox = await directory.get(inbox_id)
    assert inbox is not None
    sender = Address("phone", "+14155550100")

    def sms(n: int) -> InboundMessage:
        return InboundMessage(
            provider_message_id=f"SM{n:032d}",
            sender=sender,
            recipient=Address("phone", "+15017122661"),
            text=f"message {n}",
        )

    waker = SnoozeWaker(world.db)
    dispatcher = Dispatcher(world.db, {"message.received": [waker.on_message_received]})
    await pipeline.ingest(world.db, inbox, [sms(1)])
    await dispatcher.run_until_idle()  # a message to a conversation never snoozed: nothing happens
    assert await world.events() == []
    async with world.db.sessionmaker() as session:
        conversation_id = (
            await session.execute(select(Conversation.id).where(Conversation.inbox_id == inbox_id))
        ).scalar_one()
    until = utcnow() + timedelta(days=1) if with_time else None
    async with world.db.transaction() as session:
        await actions.snooze(session, world.tenant_id, world.admin.user_id, conversation_id, until=until)

    await pipeline.ingest(world.db, inbox, [sms(2)])
    assert (await world.get(conversation_id)).status == "open"  # at once, before any handler runs
    await dispatcher.run_until_idle()
    conversation = await world.get(conversation_id)
    assert (conversation.status, conversation.snoozed_until, conversation.snoozed_at) == ("open", None, None)
    woken = [e for e in await world.events() if e.get("reason") == CUSTOMER_REPLIED]
    assert len(woken) == 1
    assert woken[0]["conversation_id"] == conversation_id
    assert woken[0]["changes"]["status"] == {"old": "snoozed", "new": "open"}
    assert woken[0]["changes"]["snoozed_until"]["old"] == (until.isoformat() if until else None)

    await pipeline.ingest(world.db, inbox, [sms(3)])
    await dispatcher.run_until_idle()  # awake already: no second announcement
    assert len([e for e in await world.events() if e.get("reason") == CUSTOMER_REPLIED]) == 1
    await directory.close()


# --- labels ---------------------------------------------------------------------------------------


async def test_labels_are_set_by_name_in_any_case_and_unknown_ones_need_a_manager(world: World) -> None:
    other = await make_tenant(world.db, "globex")
    async with world.db.transaction() as session:
        await actions.create_label(session, world.tenant_id, name="Billing", color="#ff0000")
        await actions.create_label(session, other.tenant_id, name="VIP")  # not acme's
    conversation_id = await world.conversation(await world.inbox())
    with pytest.raises(ActionError) as raised:
        async with world.db.transaction() as session:
            await actions.set_labels(
                session,
                world.tenant_id,
                world.admin.user_id,
                conversation_id,
                ["billing", "vip"],
                may_create=False,
            )
    assert raised.value.code == "unknown_labels" and "'vip'" in raised.value.message
    async with world.db.transaction() as session:
        labels = await actions.set_labels(
            session,
            world.tenant_id,
            world.admin.user_id,
            conversation_id,
            ["BILLING", "vip", "Vip"],
            may_create=True,
        )
    assert [label.name for label in labels] == ["Billing", "vip"]
    async with world.db.sessionmaker() as session:
        acme_labels = await actions.list_labels(session, world.tenant_id)
    assert [label.name for label in acme_labels] == ["Billing", "vip"]
    [event] = await world.events()
    assert event["changes"] == {"labels": {"old": [], "new": ["Billing", "vip"]}}

    async with world.db.transaction() as session:
        await actions.set_labels(
            session, world.tenant_id, world.admin.user_id, conversation_id, ["vip"], may_create=False
        )
    assert (await world.events())[-1]["changes"] == {"labels": {"old": ["Billing", "vip"], "new": ["vip"]}}

    with pytest.raises(ConflictError):
        async with world.db.transaction() as session:
            await actions.create_label(session, world.tenant_id, name="  BILLING ")
    with pytest.raises(NotFoundError):
        async with world.db.transaction() as session:
            await actions.get_label(session, world.tenant_id, acme_labels[0].id + 100)


async def test_deleting_a_label_takes_it_off_conversations(world: World) -> None:
    conversation_id = await world.conversation(await world.inbox())
    async with world.db.transaction() as session:
        [label] = await actions.set_labels(
            session, world.tenant_id, world.admin.user_id, conversation_id, ["bug"], may_create=True
        )
    async with world.db.transaction() as session:
        await actions.delete_label(session, world.tenant_id, label.id)
    async with world.db.sessionmaker() as session:
        assert (await actions.labels_of(session, [conversation_id])) == {conversation_id: []}
        assert (await session.execute(select(Label))).first() is None


# --- read marks -----------------------------------------------------------------------------------


async def test_unread_counts_customer_messages_after_the_agents_mark(world: World) -> None:
    agent = await make_tenant(world.db, "acme", role=Role.AGENT)
    conversation_id = await world.conversation(await world.inbox())
    await world.message(conversation_id, "hi", ago=10)
    await world.message(conversation_id, "anyone?", ago=9)
    await world.message(conversation_id, "Hello!", inbound=False, ago=8)  # agents' replies never count

    async def unread(user_id: int) -> int:
        async with world.db.sessionmaker() as session:
            return (await unread_counts(session, user_id, [conversation_id]))[conversation_id]

    assert (await unread(world.admin.user_id), await unread(agent.user_id)) == (2, 2)
    async with world.db.transaction() as session:
        await actions.mark_read(session, world.tenant_id, world.admin.user_id, conversation_id)
    assert (await unread(world.admin.user_id), await unread(agent.user_id)) == (0, 2)  # per agent
    await world.message(conversation_id, "still there?", ago=1)
    await world.message(conversation_id, "hello??", ago=0)
    assert await unread(world.admin.user_id) == 2
    async with world.db.transaction() as session:
        await actions.mark_read(session, world.tenant_id, world.admin.user_id, conversation_id)
    async with world.db.transaction() as session:
        await actions.mark_unread(session, world.tenant_id, world.admin.user_id, conversation_id)
    assert await unread(world.admin.user_id) == 1  # only the newest customer message
    async with world.db.transaction() as session:  # an agent with nothing read: all stays unread
        assert await actions.mark_unread(session, world.tenant_id, agent.user_id, conversation_id) is None
    assert await unread(agent.user_id) == 4
    [*_, last] = await world.events(actions.READ_TOPIC)
    assert last["user_id"] == world.admin.user_id and last["conversation_id"] == conversation_id


# --- merge ----------------------------------------------------------------------------------------


async def test_merging_moves_messages_labels_and_reads_and_resolves_the_source(world: World) -> None:
    contact = await world.contact()
    sms, email = await world.inbox(), await world.inbox(channel="email", name="Mail")
    target = await world.conversation(sms, contact, status=ConversationStatus.RESOLVED)
    source = await world.conversation(email, contact)
    t1 = await world.message(target, "old question", ago=60)
    s1 = await world.message(source, "by mail", ago=5)
    async with world.db.transaction() as session:
        await actions.set_labels(
            session, world.tenant_id, world.admin.user_id, source, ["refund"], may_create=True
        )
        await actions.set_labels(
            session, world.tenant_id, world.admin.user_id, target, ["vip"], may_create=True
        )
        await actions.set_priority(session, world.tenant_id, world.admin.user_id, source, "high")
        await actions.mark_read(session, world.tenant_id, world.admin.user_id, target)
    before = len(await world.events())

    async with world.db.transaction() as session:
        result = await actions.merge_conversations(
            session, world.tenant_id, world.admin.user_id, source, target
        )
    assert (result.messages_moved, result.labels_added, result.already_merged) == (1, ["refund"], False)
    merged_source, merged_target = await world.get(source), await world.get(target)
    assert (merged_source.status, merged_source.merged_into_id) == ("resolved", target)
    assert merged_target.status == "open"  # the customer's active conversation lives on in the target
    assert merged_target.priority == "high"
    async with world.db.sessionmaker() as session:
        ids = (await session.execute(select(Message.id).where(Message.conversation_id == target))).scalars()
        assert sorted(ids) == [t1, s1]
        assert (await actions.labels_of(session, [source, target])) == {
            source: [],
            target: [label for label in (await actions.list_labels(session, world.tenant_id))],
        }
        reads = (await session.execute(select(ConversationRead))).scalars().all()
        assert [(r.conversation_id, r.last_read_message_id) for r in reads] == [(target, s1 - 1)]
        assert (await unread_counts(session, world.admin.user_id, [target]))[
            target
        ] == 1  # the mail is unread
    source_event, target_event = (await world.events())[before:]
    assert source_event["conversation_id"] == source and source_event["reason"] == "merged"
    assert source_event["changes"]["merged_into_id"] == {"old": None, "new": target}
    assert source_event["changes"]["status"] == {"old": "open", "new": "resolved"}
    assert target_event["conversation_id"] == target
    assert target_event["changes"]["merged_from"] == {"old": None, "new": source}
    assert target_event["changes"]["status"] == {"old": "resolved", "new": "open"}

    async with world.db.transaction() as session:  # a retry: the same answer, nothing done twice
        again = await actions.merge_conversations(
            session, world.tenant_id, world.admin.user_id, source, target
        )
    assert (again.already_merged, again.source.id, again.target.id) == (True, source, target)
    assert len(await world.events()) == before + 2


async def test_merge_rules(world: World) -> None:
    inbox_id = await world.inbox()
    contact = await world.contact()
    first = await world.conversation(inbox_id, contact, status=ConversationStatus.RESOLVED)
    second = await world.conversation(inbox_id, contact)
    stranger = await world.conversation(inbox_id)
    other = await make_tenant(world.db, "globex")
    theirs = await world.conversation(await world.inbox(tenant_id=other.tenant_id), tenant_id=other.tenant_id)

    async def merge(source: int, target: int) -> actions.MergeResult:
        async with world.db.transaction() as session:
            return await actions.merge_conversations(
                session, world.tenant_id, world.admin.user_id, source, target
            )

    with pytest.raises(ActionError, match="itself"):
        await merge(first, first)
    with pytest.raises(ActionError, match="different contacts") as raised:
        await merge(first, stranger)
    assert raised.value.code == "different_contacts"
    for pair in ((first, theirs), (theirs, first)):
        with pytest.raises(NotFoundError):
            await merge(*pair)
    await merge(first, second)
    with pytest.raises(ConflictError):  # merged into `second` already: not into another one
        await merge(first, stranger)
    with pytest.raises(ActionError) as raised:
        await merge(second, first)  # into a conversation that was merged away
    assert raised.value.code == "target_merged"
    assert (await world.get(second)).status == "open"


# --- the list -------------------------------------------------------------------------------------


async def test_views_filters_and_counts(world: World) -> None:
    agent = await make_tenant(world.db, "acme", role=Role.AGENT)
    sms, mail = await world.inbox(), await world.inbox(channel="email", name="Mail")
    mine = await world.conversation(sms, assignee_id=agent.user_id)
    unassigned = await world.conversation(mail)
    others = await world.conversation(sms, assignee_id=world.admin.user_id)
    closed = await world.conversation(mail, status=ConversationStatus.RESOLVED, assignee_id=agent.user_id)
    for conversation_id in (mine, unassigned, others, closed):
        await world.message(conversation_id, f"about {conversation_id}")
    async with world.db.transaction() as session:
        await actions.mark_read(session, world.tenant_id, agent.user_id, others)
        await actions.set_labels(
            session, world.tenant_id, world.admin.user_id, mine, ["VIP"], may_create=True
        )
        await actions.set_priority(session, world.tenant_id, world.admin.user_id, unassigned, "high")
        team = Team(tenant_id=world.tenant_id, name="Billing")
        session.add(team)
        await session.flush()
        contact_id = (await session.get_one(Conversation, others)).contact_id
        session.add(
            ConversationRouting(
                conversation_id=others,
                tenant_id=world.tenant_id,
                contact_id=contact_id,
                channel_kind="chat",
                state="assigned",
                team_id=team.id,
            )
        )
    other = await make_tenant(world.db, "globex")
    await world.conversation(await world.inbox(tenant_id=other.tenant_id), tenant_id=other.tenant_id)

    async def ids(view: Any = "all", **filters: Any) -> list[int]:
        async with world.db.sessionmaker() as session:
            page = await list_conversations(
                session,
                tenant_id=world.tenant_id,
                user_id=agent.user_id,
                view=view,
                filters=ConversationFilters(**filters),
            )
        return sorted(row.conversation.id for row in page.rows)

    assert await ids() == sorted([mine, unassigned, others, closed])  # globex's is not there
    assert await ids("mine") == sorted([mine, closed])
    assert await ids("mine", status="open") == [mine]
    assert await ids("unassigned") == [unassigned]
    assert await ids(status="resolved") == [closed]
    assert await ids(inbox_id=sms) == sorted([mine, others])
    assert await ids(channel="email") == sorted([unassigned, closed])
    assert await ids(label="vip") == [mine]
    assert await ids(label="nope") == []
    assert await ids(priority="high") == [unassigned]
    assert await ids(within=team_conversations(world.tenant_id, team.id)) == [others]
    assert await ids(within=team_conversations(other.tenant_id, team.id)) == []

    async with world.db.sessionmaker() as session:
        page = await list_conversations(
            session, tenant_id=world.tenant_id, user_id=agent.user_id, view="mine"
        )
        counts = await view_counts(session, tenant_id=world.tenant_id, user_id=agent.user_id)
        open_counts = await view_counts(
            session,
            tenant_id=world.tenant_id,
            user_id=agent.user_id,
            filters=ConversationFilters(status="open"),
        )
    row = next(r for r in page.rows if r.conversation.id == mine)
    assert (row.contact_name, row.inbox_name, row.channel) == ("Ann", "Support", "twilio_sms")
    assert (row.last_message_preview, row.unread_count, [t.name for t in row.labels]) == (
        f"about {mine}",
        1,
        ["VIP"],
    )
    assert row.assignee_name == "agent@acme.example.com"  # no name: the address
    assert {view: (c.total, c.unread) for view, c in counts.items()} == {
        "mine": (2, 2),
        "unassigned": (1, 1),
        "all": (4, 3),  # the agent read `others`
    }
    assert {view: (c.total, c.unread) for view, c in open_counts.items()} == {
        "mine": (1, 1),
        "unassigned": (1, 1),
        "all": (3, 2),
    }


async def test_sorts_and_keyset_pages(world: World) -> None:
    inbox_id = await world.inbox()
    quiet = await world.conversation(inbox_id)  # no messages at all
    answered = await world.conversation(inbox_id)
    await world.message(answered, "help", ago=120)
    await world.message(answered, "done", inbound=False, ago=100)
    long_wait = await world.conversation(inbox_id)
    await world.message(long_wait, "first", ago=90)
    await world.message(long_wait, "second", ago=3)
    short_wait = await world.conversation(inbox_id)
    await world.message(short_wait, "older question", ago=200)
    await world.message(short_wait, "reply", inbound=False, ago=150)
    await world.message(short_wait, "new question", ago=30)
    urgent = await world.conversation(inbox_id)
    await world.message(urgent, "fire", ago=1)
    async with world.db.transaction() as session:
        await actions.set_priority(session, world.tenant_id, world.admin.user_id, urgent, "urgent")
        await actions.set_priority(session, world.tenant_id, world.admin.user_id, answered, "low")

    async def order(sort: Any, limit: int = 2) -> list[int]:
        seen: list[int] = []
        cursor = None
        while True:
            async with world.db.sessionmaker() as session:
                page = await list_conversations(
                    session,
                    tenant_id=world.tenant_id,
                    user_id=world.admin.user_id,
                    sort=sort,
                    limit=limit,
                    cursor=cursor,
                )
            assert len(page.rows) <= limit
            seen += [row.conversation.id for row in page.rows]
            cursor = page.next_cursor
            if cursor is None:
                return seen

    # A conversation without messages counts from its creation: here, the newest.
    assert await order("newest") == [quiet, urgent, long_wait, short_wait, answered]
    assert await order("newest", limit=50) == await order("newest", limit=1)
    assert await order("waiting") == [long_wait, short_wait, urgent, quiet, answered]
    assert await order("priority") == [urgent, answered, quiet, long_wait, short_wait]

    async with world.db.sessionmaker() as session:
        page = await list_conversations(
            session, tenant_id=world.tenant_id, user_id=world.admin.user_id, limit=1
        )
        assert page.next_cursor is not None
        for bad in ("garbage", "e30", page.next_cursor[:-3]):
            with pytest.raises(InvalidCursor):
                await list_conversations(
                    session, tenant_id=world.tenant_id, user_id=world.admin.user_id, cursor=bad
                )
        with pytest.raises(InvalidCursor):  # a cursor of another sort
            await list_conversations(
                session,
                tenant_id=world.tenant_id,
                user_id=world.admin.user_id,
                sort="waiting",
                cursor=page.next_cursor,
            )


def test_previews_are_one_line_and_short() -> None:
    assert preview("Hello\n\n  there\t!", [], {}) == "Hello there !"
    long = preview("word " * 100, [], {})
    assert len(long) == 140 and long.endswith("…")
    assert preview("", [{"url": "u"}], {}) == "[Attachment]"
    assert preview("", [], {"location": {"lat": 1}}) == "[Location]"
    assert (
        preview("<script>alert(1)</script>", [], {}) == "<script>alert(1)</script>"
    )  # text, escaped by the UI
