"""SLA clocks and escalations through real outbox events, on both databases, with time moved by hand."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from aiohttp import web
from sqlalchemy import func, select

from crm_core.tasks import Task
from inbox.models import Conversation, ConversationStatus, Message, MessageStatus
from inbox.service import queue_outbound
from parley.db import Database
from parley.mailer import Mailer
from parley.models import OutboxEvent, Presence, Role
from parley.outbox import Dispatcher, Event, emit
from parley.settings import Settings
from routing.assigner import Assigner
from routing.escalation import Escalator, escalation_subscribers
from routing.models import (
    Assignment,
    BusinessCalendarRecord,
    ConversationRouting,
    SlaClock,
    SlaEscalationRun,
    SlaPolicy,
)
from routing.sla import SlaClocks, conversation_clocks, next_due_subquery, next_sla_due, sla_subscribers
from tests.conftest import free_port, make_tenant
from tests.routing.world import add_agent, add_inbox, add_team, open_conversation
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, Smarthost

PARIS = ZoneInfo("Europe/Paris")
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=PARIS).astimezone(UTC)
OFFICE_HOURS = {day: [["09:00", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}


class FakeClock:
    """'Now' for the SLA code: moved forward by the test, never by sleeping."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class SlackWebhook:
    """A local Slack incoming webhook: records what it is posted, answers `statuses` in turn (then 200)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/XXXX"

    async def _post(self, request: web.Request) -> web.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.posts.append(await request.json())
            return web.Response(text="ok")
        return web.Response(status=status, text="service_unavailable")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/services/{a}/{b}/{c}", self._post)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclasses.dataclass
class World:
    db: Database
    clock: FakeClock
    clocks: SlaClocks
    escalator: Escalator
    dispatcher: Dispatcher
    tenant_id: int

    async def run(self) -> None:
        await self.dispatcher.drain(timeout=20)


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    host = Smarthost(free_port())
    host.start()
    yield host
    host.stop()


@pytest_asyncio.fixture
async def slack() -> AsyncIterator[SlackWebhook]:
    hook = SlackWebhook()
    await hook.start()
    yield hook
    await hook.stop()


@pytest_asyncio.fixture
async def world(db: Database, settings: Settings, smarthost: Smarthost) -> World:
    clock = FakeClock(MONDAY_10)
    clocks = SlaClocks(db, clock=clock)
    mail = dataclasses.replace(
        settings, smtp_url=f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{smarthost.port}"
    )
    escalator = Escalator(db, Mailer(mail), public_url=lambda: "https://parley.example.com")
    subscribers: dict[str, list[Any]] = {
        "conversation.opened": [Assigner(db).on_conversation_opened],
        "conversation.updated": [Assigner(db).on_conversation_updated],
    }
    for extra in (sla_subscribers(clocks), escalation_subscribers(escalator)):
        for topic, handlers in extra.items():
            subscribers.setdefault(topic, []).extend(handlers)
    tenant = await make_tenant(db, "acme")
    return World(db, clock, clocks, escalator, Dispatcher(db, subscribers), tenant.tenant_id)


async def add_policy(db: Database, tenant_id: int, **fields: Any) -> int:
    async with db.transaction() as session:
        policy = SlaPolicy(tenant_id=tenant_id, name=fields.pop("name", "Standard"), **fields)
        session.add(policy)
        await session.flush()
        return policy.id


async def add_calendar(db: Database, tenant_id: int, **fields: Any) -> int:
    async with db.transaction() as session:
        row = BusinessCalendarRecord(
            tenant_id=tenant_id,
            name=fields.pop("name", "Paris office"),
            time_zone=fields.pop("time_zone", "Europe/Paris"),
            hours=fields.pop("hours", OFFICE_HOURS),
            **fields,
        )
        session.add(row)
        await session.flush()
        return row.id


async def customer_writes(db: Database, tenant_id: int, conversation_id: int) -> None:
    """As the pipeline stores a customer message: reopen from pending, the row, `message.received`."""
    async with db.transaction() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        conversation.status = ConversationStatus.OPEN
        message = Message(
            tenant_id=tenant_id,
            inbox_id=conversation.inbox_id,
            conversation_id=conversation_id,
            direction="inbound",
            sender_type="contact",
            sender_id=conversation.contact_id,
            body="Any news?",
            status=MessageStatus.RECEIVED,
        )
        session.add(message)
        await session.flush()
        await emit(
            session,
            tenant_id,
            (
                "message.received",
                {
                    "message_id": message.id,
                    "conversation_id": conversation_id,
                    "inbox_id": conversation.inbox_id,
                },
            ),
        )


async def reply(db: Database, conversation_id: int, *, sender_type: str = "user") -> None:
    """A reply queued as the conversation API (an agent, `user`) or a bot queues it."""
    async with db.transaction() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        await queue_outbound(session, conversation, body="On it", sender_type=sender_type, sender_id=None)


async def set_status(db: Database, tenant_id: int, conversation_id: int, status: ConversationStatus) -> None:
    """As the conversation API changes a status: the row and its `conversation.updated` event."""
    async with db.transaction() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        old, conversation.status = conversation.status, status
        await emit(
            session,
            tenant_id,
            (
                "conversation.updated",
                {"conversation_id": conversation_id, "changes": {"status": {"old": old, "new": status}}},
            ),
        )


async def clocks_of(world: World, conversation_id: int) -> dict[str, Any]:
    async with world.db.sessionmaker() as session:
        views = await conversation_clocks(session, world.tenant_id, conversation_id, world.clock())
    return {(v.kind if v.kind != "next_response" else f"next_response#{v.id}"): v for v in views}


async def topics(db: Database, topic: str) -> list[dict[str, Any]]:
    async with db.sessionmaker() as session:
        rows = await session.scalars(select(OutboxEvent.payload).where(OutboxEvent.topic == topic))
        return [dict(p) for p in rows]


async def test_response_and_resolution_clocks_follow_the_conversation(world: World) -> None:
    inbox = await add_inbox(world.db, world.tenant_id)
    await add_policy(
        world.db,
        world.tenant_id,
        inbox_id=inbox,
        first_response_minutes=30,
        next_response_minutes=15,
        resolution_minutes=240,
    )
    conversation = await open_conversation(world.db, world.tenant_id, inbox)
    await world.run()
    clocks = await clocks_of(world, conversation)
    assert set(clocks) == {"first_response", "resolution"}
    first = clocks["first_response"]
    assert (first.state, first.started_at, first.due_at) == (
        "running",
        MONDAY_10,
        MONDAY_10 + timedelta(minutes=30),
    )
    assert first.warn_at == MONDAY_10 + timedelta(minutes=24)  # the default warning at 80 %

    world.clock.advance(minutes=5)
    await reply(world.db, conversation, sender_type="bot")  # a bot's answer is not a response
    await world.run()
    assert (await clocks_of(world, conversation))["first_response"].state == "running"

    world.clock.advance(minutes=5)
    await reply(world.db, conversation)
    await world.run()
    first = (await clocks_of(world, conversation))["first_response"]
    assert (first.state, first.stopped_at, first.remaining_seconds) == (
        "met",
        MONDAY_10 + timedelta(minutes=10),
        None,
    )

    world.clock.advance(minutes=20)
    await customer_writes(world.db, world.tenant_id, conversation)
    await customer_writes(world.db, world.tenant_id, conversation)  # a second message starts nothing new
    await world.run()
    clocks = await clocks_of(world, conversation)
    (following,) = [c for kind, c in clocks.items() if kind.startswith("next_response")]
    assert following.state == "running" and following.due_at == MONDAY_10 + timedelta(minutes=45)
    async with world.db.sessionmaker() as session:
        assert await next_sla_due(session, [conversation]) == {
            conversation: MONDAY_10 + timedelta(minutes=45)
        }

    await reply(world.db, conversation)
    world.clock.advance(minutes=1)
    await set_status(world.db, world.tenant_id, conversation, ConversationStatus.RESOLVED)
    await world.run()
    clocks = await clocks_of(world, conversation)
    assert {c.state for c in clocks.values()} == {"met"}
    assert clocks["resolution"].stopped_at == MONDAY_10 + timedelta(minutes=31)
    async with world.db.sessionmaker() as session:
        assert await next_sla_due(session, [conversation]) == {}

    # Reopened: a new resolution clock, the met one stays in the history.
    await set_status(world.db, world.tenant_id, conversation, ConversationStatus.OPEN)
    await world.run()
    async with world.db.sessionmaker() as session:
        kinds = (await session.scalars(select(SlaClock.kind).where(SlaClock.stopped_at.is_(None)))).all()
    assert kinds == ["resolution"]


async def test_waiting_on_the_customer_pauses_the_clock_for_business_time_only(world: World) -> None:
    inbox = await add_inbox(world.db, world.tenant_id)
    calendar = await add_calendar(world.db, world.tenant_id)
    await add_policy(
        world.db, world.tenant_id, first_response_minutes=120, warning_fraction=0.5, calendar_id=calendar
    )
    conversation = await open_conversation(world.db, world.tenant_id, inbox)
    await world.run()
    first = (await clocks_of(world, conversation))["first_response"]
    assert first.due_at == datetime(2026, 11, 23, 12, 0, tzinfo=PARIS)
    assert first.warn_at == datetime(2026, 11, 23, 11, 0, tzinfo=PARIS)

    world.clock.advance(minutes=30)  # 10:30: we asked the customer for their order number
    await set_status(world.db, world.tenant_id, conversation, ConversationStatus.PENDING)
    await world.run()
    paused = (await clocks_of(world, conversation))["first_response"]
    assert paused.state == "paused" and paused.remaining_seconds == 90 * 60
    async with world.db.sessionmaker() as session:
        assert await next_sla_due(session, [conversation]) == {}  # nothing falls due while paused

    world.clock.now = datetime(2026, 11, 24, 10, 0, tzinfo=PARIS).astimezone(UTC)  # Tuesday 10:00
    assert await world.clocks.sweep() == 0  # long past the old due time, but paused: no warning
    await customer_writes(world.db, world.tenant_id, conversation)
    await world.run()
    resumed = (await clocks_of(world, conversation))["first_response"]
    # Paused 10:30-18:00 Monday and 09:00-10:00 Tuesday: 8.5 business hours, not 23.5 hours.
    assert resumed.paused_seconds == 8.5 * 3600
    assert resumed.state == "running" and resumed.remaining_seconds == 90 * 60
    assert resumed.due_at == datetime(2026, 11, 24, 11, 30, tzinfo=PARIS)
    assert resumed.warn_at == datetime(2026, 11, 24, 10, 30, tzinfo=PARIS)


async def test_the_most_specific_policy_of_the_tenant_applies(world: World, db: Database) -> None:
    sales = await add_inbox(db, world.tenant_id)
    support = await add_inbox(db, world.tenant_id)
    other = await make_tenant(db, "globex")
    await add_policy(db, other.tenant_id, name="Theirs", first_response_minutes=1)
    await add_policy(db, world.tenant_id, name="Default", first_response_minutes=60)
    await add_policy(db, world.tenant_id, name="Support", inbox_id=support, first_response_minutes=20)
    await add_policy(
        db,
        world.tenant_id,
        name="Urgent support",
        inbox_id=support,
        priority="urgent",
        first_response_minutes=5,
    )
    await add_policy(db, world.tenant_id, name="Off", inbox_id=sales, enabled=False, first_response_minutes=2)
    in_sales = await open_conversation(db, world.tenant_id, sales)
    in_support = await open_conversation(db, world.tenant_id, support)
    await world.run()
    assert (await clocks_of(world, in_sales))["first_response"].target_minutes == 60
    assert (await clocks_of(world, in_support))["first_response"].target_minutes == 20

    # The conversation's own priority picks the policy (set by an agent, a rule or an escalation).
    async with db.transaction() as session:
        (await session.get_one(Conversation, in_support)).priority = "urgent"
    await set_status(db, world.tenant_id, in_support, ConversationStatus.RESOLVED)
    await set_status(db, world.tenant_id, in_support, ConversationStatus.OPEN)
    await world.run()
    async with db.sessionmaker() as session:
        reopened = (
            await session.execute(
                select(SlaClock.target_minutes).where(
                    SlaClock.conversation_id == in_support, SlaClock.stopped_at.is_(None)
                )
            )
        ).all()
    assert reopened == []  # no resolution target in these policies: nothing to time on reopening
    await customer_writes(db, world.tenant_id, in_support)
    await world.run()
    async with db.sessionmaker() as session:
        targets = (
            await session.scalars(
                select(SlaClock.target_minutes).where(
                    SlaClock.conversation_id == in_support, SlaClock.stopped_at.is_(None)
                )
            )
        ).all()
    assert targets == [5]


async def test_warnings_and_breaches_escalate_once_each(
    world: World, db: Database, smarthost: Smarthost, slack: SlackWebhook
) -> None:
    tenant = world.tenant_id
    supervisor = await add_agent(
        db, tenant, role=Role.SUPERVISOR, presence=Presence.ONLINE, capacity={"chat": 0}
    )
    agent = await add_agent(db, tenant, capacity={"chat": 5})
    inbox = await add_inbox(db, tenant)
    await add_policy(
        db,
        tenant,
        first_response_minutes=60,
        warning_fraction=0.5,
        escalations=[
            {"type": "notify_in_app", "on": ["warning"], "to_assignee": True, "to_supervisors": True},
            {
                "type": "notify_email",
                "on": ["warning"],
                "to_supervisors": True,
                "emails": ["lead@acme.example"],
            },
            {"type": "notify_slack", "on": ["warning", "breach"], "webhook_url": slack.url},
            {"type": "raise_priority", "on": ["breach"], "to": "urgent"},
            {"type": "reassign", "on": ["breach"], "to_supervisor": True},
            {
                "type": "create_task",
                "on": ["breach"],
                "title": "Call the customer back",
                "assignee": "supervisor",
            },
        ],
    )
    conversation = await open_conversation(db, tenant, inbox)
    await world.run()
    async with db.sessionmaker() as session:
        assert (await session.get(Conversation, conversation)).assignee_id == agent  # type: ignore[union-attr]

    world.clock.advance(minutes=29)
    assert await world.clocks.sweep() == 0
    world.clock.advance(minutes=1)
    slack.statuses = [503]  # Slack has a hiccup: the event is retried, the rest is not repeated
    assert await world.clocks.sweep() == 1
    assert await world.clocks.sweep() == 0
    await world.run()
    (notice,) = await topics(db, "escalation.notify")
    assert sorted(notice["recipient_ids"]) == sorted([agent, supervisor])
    assert notice["stage"] == "warning" and "first response" in notice["text"]
    mailed = sorted(rcpt for m in smarthost.received for rcpt in m.rcpt_tos)
    assert len(mailed) == 2 and "lead@acme.example" in mailed
    mail = smarthost.received[0].message
    assert "SLA warning" in mail["Subject"]
    assert f"https://parley.example.com/api/v1/conversations/{conversation}/sla" in mail.get_content()
    assert len(slack.posts) == 1 and f"Conversation {conversation} is about to miss" in slack.posts[0]["text"]

    world.clock.advance(minutes=30)
    assert await world.clocks.sweep() == 1
    assert await world.clocks.sweep() == 0
    await world.run()
    async with db.sessionmaker() as session:
        routing = await session.get(ConversationRouting, conversation)
        current = await session.get(Conversation, conversation)
        assert routing is not None and current is not None
        assert routing.priority == 40 and current.assignee_id == supervisor
        reasons = (
            await session.scalars(select(Assignment.reason).where(Assignment.conversation_id == conversation))
        ).all()
    assert list(reasons)[-1] == "escalation"
    async with db.sessionmaker() as session:
        (task,) = (await session.scalars(select(Task))).all()
    assert (task.title, task.assignee_id, task.type, task.source) == (
        "Call the customer back",
        supervisor,
        "escalation",
        "escalation",
    )
    assert task.conversation_id == conversation and task.due_at is not None
    assert len(await topics(db, "task.created")) == 1
    assert len(slack.posts) == 2 and "missed" in slack.posts[1]["text"]

    # The breach delivered again (at least once): nothing is done twice.
    (breach,) = await topics(db, "sla.breached")
    again = Event(0, tenant, "sla.breached", breach, 1, world.clock())
    await world.escalator.on_sla_event(again)
    await world.run()
    assert len(slack.posts) == 2 and len(smarthost.received) == 2
    assert len(await topics(db, "task.created")) == 1
    async with db.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Task)) == 1
    async with db.sessionmaker() as session:
        runs = (await session.execute(select(SlaEscalationRun.stage, SlaEscalationRun.outcome))).all()
        assignments = await session.scalar(
            select(func.count()).select_from(Assignment).where(Assignment.conversation_id == conversation)
        )
    assert sorted(runs) == sorted([("warning", "done")] * 3 + [("breach", "done")] * 4)
    assert assignments == 2


async def test_a_breach_sends_the_conversation_back_to_another_team(world: World, db: Database) -> None:
    tenant = world.tenant_id
    tier2 = await add_team(db, tenant, "Tier 2")
    first_line = await add_agent(db, tenant, capacity={"chat": 5})
    expert = await add_agent(db, tenant, capacity={"chat": 0}, teams=[tier2])
    inbox = await add_inbox(db, tenant)
    await add_policy(
        db,
        tenant,
        resolution_minutes=10,
        escalations=[
            {"type": "reassign", "on": ["breach"], "team_id": tier2},
            {"type": "reassign", "on": ["breach"], "team_id": 10**9},  # a deleted team: recorded as failed
        ],
    )
    conversation = await open_conversation(db, tenant, inbox)
    await world.run()
    world.clock.advance(minutes=11)
    assert await world.clocks.sweep() == 2  # the warning and the breach, both due
    async with db.transaction() as session:
        # The expert frees up: the queue is served with the new team's agents.
        from routing.models import AgentProfile

        profile = await session.get(AgentProfile, expert)
        assert profile is not None
        profile.capacity = {"chat": 3}
    await world.run()
    async with db.sessionmaker() as session:
        routing = await session.get(ConversationRouting, conversation)
        current = await session.get(Conversation, conversation)
        runs = (await session.execute(select(SlaEscalationRun.action_index, SlaEscalationRun.outcome))).all()
    assert routing is not None and routing.team_id == tier2
    assert current is not None and current.assignee_id == expert != first_line
    assert sorted(runs) == [(0, "done"), (1, "failed")]


async def _due_clocks(world: World, db: Database, count: int) -> list[int]:
    inbox = await add_inbox(db, world.tenant_id)
    await add_policy(db, world.tenant_id, first_response_minutes=5)
    conversations = [await open_conversation(db, world.tenant_id, inbox) for _ in range(count)]
    await world.run()
    world.clock.advance(minutes=6)
    return conversations


async def test_concurrent_sweeps_emit_each_warning_and_breach_exactly_once(
    world: World, db: Database, settings: Settings
) -> None:
    conversations = await _due_clocks(world, db, 40)
    # Four "processes": their own engines, small batches so their claims interleave.
    databases = [Database(settings.database_url) for _ in range(4)]
    try:
        sweepers = [SlaClocks(d, clock=world.clock, batch=3) for d in databases]
        counts = await asyncio.gather(*(s.sweep() for s in sweepers for _ in range(2)))
    finally:
        for d in databases:
            await d.dispose()
    assert sum(counts) == 80
    warnings = await topics(db, "sla.warning")
    breaches = await topics(db, "sla.breached")
    assert sorted(w["conversation_id"] for w in warnings) == sorted(conversations)
    assert sorted(b["conversation_id"] for b in breaches) == sorted(conversations)
    assert len({w["clock_id"] for w in warnings}) == 40


async def test_the_conversation_list_sorts_by_next_sla_due(world: World, db: Database) -> None:
    inbox = await add_inbox(db, world.tenant_id)
    await add_policy(db, world.tenant_id, inbox_id=inbox, first_response_minutes=30, resolution_minutes=600)
    untimed = await open_conversation(db, world.tenant_id, await add_inbox(db, world.tenant_id))
    late = await open_conversation(db, world.tenant_id, inbox)
    await world.run()
    world.clock.advance(minutes=-10)
    early = await open_conversation(db, world.tenant_id, inbox)
    await world.run()
    world.clock.advance(minutes=10)
    paused = await open_conversation(db, world.tenant_id, inbox)
    await world.run()
    await set_status(db, world.tenant_id, paused, ConversationStatus.PENDING)
    await world.run()
    async with db.sessionmaker() as session:
        order: Sequence[int] = (
            await session.scalars(
                select(Conversation.id)
                .where(Conversation.tenant_id == world.tenant_id)
                .order_by(next_due_subquery().asc().nulls_last(), Conversation.id)
            )
        ).all()
    assert list(order) == [early, late, untimed, paused]


async def test_the_celery_beat_task_sweeps(
    world: World, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis, beat runs `parley.sla_sweep` in a worker: the same sweep, on the worker's runtime."""
    from parley import tasks

    schedule = tasks.celery_app("redis://127.0.0.1:1/0").conf.beat_schedule
    assert schedule["sla-sweep"]["task"] == tasks.SLA_SWEEP_TASK
    conversations = await _due_clocks(world, db, 3)  # due on 23 November 2026: long past in real time
    monkeypatch.setenv("PARLEY_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PARLEY_SECRET_KEY", settings.secret_key)
    monkeypatch.setenv("PARLEY_DATA_DIR", str(settings.data_dir))

    def in_a_worker() -> tuple[int, int]:
        try:
            return tasks.sla_sweep(), tasks.sla_sweep()
        finally:
            tasks.shutdown_runtime()

    assert await asyncio.to_thread(in_a_worker) == (6, 0)
    breaches = await topics(db, "sla.breached")
    assert sorted(b["conversation_id"] for b in breaches) == sorted(conversations)
