"""The task engine on both databases: rules, assignment, idle deals, reminders and overdue, merges."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select, update

from crm_core.merge import merge_contacts
from crm_core.models import Contact, Deal, Pipeline, PipelineStage
from crm_core.tasks import Task, TaskRule, TaskStatus, change_task, create_task
from crm_core.tickets import open_ticket
from inbox.models import Notification
from parley.db import Database
from parley.mailer import Mailer
from parley.models import OutboxEvent, Presence, Role
from parley.outbox import Dispatcher, emit
from parley.settings import Settings
from routing.models import BusinessCalendarRecord
from routing.task_engine import TaskEngine, task_rule_subscribers
from routing.task_timers import TaskMailer, TaskTimers, task_timer_subscribers
from tests.conftest import free_port, make_tenant
from tests.routing.test_sla import FakeClock
from tests.routing.world import add_agent, add_contact, add_team
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, Smarthost

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@dataclasses.dataclass
class World:
    db: Database
    clock: FakeClock
    engine: TaskEngine
    timers: TaskTimers
    dispatcher: Dispatcher
    tenant_id: int

    async def run(self) -> None:
        await self.dispatcher.drain(timeout=20)

    async def emit(self, topic: str, payload: dict[str, Any]) -> None:
        async with self.db.transaction() as session:
            await emit(session, self.tenant_id, (topic, payload))
        await self.run()


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    host = Smarthost(free_port())
    host.start()
    yield host
    host.stop()


@pytest_asyncio.fixture
async def world(db: Database, settings: Settings, smarthost: Smarthost) -> World:
    clock = FakeClock(NOW)
    engine = TaskEngine(db, clock=clock)
    mail = dataclasses.replace(
        settings, smtp_url=f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{smarthost.port}"
    )
    mailer = TaskMailer(db, Mailer(mail), public_url=lambda: "https://parley.example.com")
    subscribers: dict[str, list[Any]] = {}
    for extra in (task_rule_subscribers(engine), task_timer_subscribers(mailer)):
        for topic, handlers in extra.items():
            subscribers.setdefault(topic, []).extend(handlers)
    tenant = await make_tenant(db, "acme")
    return World(
        db, clock, engine, TaskTimers(db, clock=clock), Dispatcher(db, subscribers), tenant.tenant_id
    )


async def add_rule(db: Database, tenant_id: int, **fields: Any) -> int:
    async with db.transaction() as session:
        rule = TaskRule(tenant_id=tenant_id, name=fields.pop("name", "Rule"), **fields)
        session.add(rule)
        await session.flush()
        return rule.id


async def tasks_of(db: Database, tenant_id: int) -> list[Task]:
    async with db.sessionmaker() as session:
        return list(
            (await session.scalars(select(Task).where(Task.tenant_id == tenant_id).order_by(Task.id))).all()
        )


async def topics(db: Database, topic: str) -> list[dict[str, Any]]:
    async with db.sessionmaker() as session:
        rows = await session.scalars(
            select(OutboxEvent.payload).where(OutboxEvent.topic == topic).order_by(OutboxEvent.id)
        )
        return [dict(p) for p in rows]


async def add_deal(db: Database, tenant_id: int, *, owner_id: int | None, contact_id: int | None) -> int:
    async with db.transaction() as session:
        pipeline = Pipeline(tenant_id=tenant_id, name="Sales")
        session.add(pipeline)
        await session.flush()
        stage = PipelineStage(tenant_id=tenant_id, pipeline_id=pipeline.id, name="New", position=0)
        session.add(stage)
        await session.flush()
        deal = Deal(
            tenant_id=tenant_id,
            pipeline_id=pipeline.id,
            stage_id=stage.id,
            title="Fleet renewal",
            currency="EUR",
            owner_id=owner_id,
            contact_id=contact_id,
        )
        session.add(deal)
        await session.flush()
        return deal.id


async def _ticket(world: World, contact_id: int) -> int:
    async with world.db.transaction() as session:
        ticket = await open_ticket(
            session, tenant_id=world.tenant_id, subject="Printer", contact_id=contact_id
        )
        return ticket.id


def _ticket_event(ticket_id: int, contact_id: int, team_id: int | None, reopen_count: int) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "contact_id": contact_id,
        "conversation_id": None,
        "team_id": team_id,
        "assignee_id": None,
        "from": "solved",
        "to": "open",
        "reopen_count": reopen_count,
    }


async def test_a_ticket_reopened_twice_makes_one_task_for_the_team_lead(world: World) -> None:
    tenant = world.tenant_id
    tier2 = await add_team(world.db, tenant, "Tier 2")
    await add_agent(world.db, tenant, role=Role.SUPERVISOR, presence=Presence.ONLINE)  # another team's
    lead = await add_agent(world.db, tenant, role=Role.SUPERVISOR, presence=Presence.ONLINE, teams=[tier2])
    contact = await add_contact(world.db, tenant)
    await add_rule(
        world.db,
        tenant,
        name="Reopened twice",
        trigger="ticket.status_changed",
        conditions=[
            {"field": "to", "op": "==", "value": "open"},
            {"field": "reopen_count", "op": ">=", "value": 2},
        ],
        template={
            "type": "review",
            "title": "Review ticket #{{ ticket_id }} for {{ contact.name }} ({{ reopen_count }} reopens)",
            "priority": "high",
            "due_in_hours": 4,
            "suggested_action": {"kind": "review_ticket", "label": "Read the ticket's history"},
        },
        assignee={"rule": "supervisor"},
    )
    ticket, other_ticket = [await _ticket(world, contact) for _ in range(2)]
    await world.emit("ticket.status_changed", _ticket_event(ticket, contact, tier2, 1))
    assert await tasks_of(world.db, tenant) == []

    await world.emit("ticket.status_changed", _ticket_event(ticket, contact, tier2, 2))
    await world.emit(
        "ticket.status_changed", _ticket_event(ticket, contact, tier2, 3)
    )  # same ticket: no second
    (task,) = await tasks_of(world.db, tenant)
    assert task.title == f"Review ticket #{ticket} for Ada (2 reopens)"
    assert (task.type, task.priority, task.assignee_id, task.team_id) == ("review", "high", lead, tier2)
    assert (task.ticket_id, task.contact_id, task.source) == (ticket, contact, "rule")
    assert task.due_at == NOW + timedelta(hours=4)
    assert task.remind_at == NOW + timedelta(hours=3, minutes=30)
    assert task.suggested_action["kind"] == "review_ticket"
    (created,) = await topics(world.db, "task.created")
    (assigned,) = await topics(world.db, "task.assigned")
    assert created["task_id"] == assigned["task_id"] == task.id and assigned["assignee_id"] == lead

    # Another ticket of the same contact is another subject.
    await world.emit("ticket.status_changed", _ticket_event(other_ticket, contact, tier2, 2))
    assert len(await tasks_of(world.db, tenant)) == 2


async def test_rule_titles_render_in_the_sandbox(world: World) -> None:
    tenant = world.tenant_id
    contact = await add_contact(world.db, tenant)
    await add_rule(
        world.db,
        tenant,
        trigger="contact.lifecycle_changed",
        template={"title": "{{ ''.__class__.__mro__[1].__subclasses__() }}"},
    )
    await world.emit("contact.lifecycle_changed", {"contact_id": contact, "to": "customer"})
    (task,) = await tasks_of(world.db, tenant)
    assert task.title == "{{ ''.__class__.__mro__[1].__subclasses__() }}"  # refused, shown as written


async def test_tasks_go_to_the_deal_owner_or_by_the_teams_strategy(world: World) -> None:
    tenant = world.tenant_id
    sales = await add_team(world.db, tenant, "Sales")
    ann = await add_agent(world.db, tenant, teams=[sales])
    bob = await add_agent(world.db, tenant, teams=[sales])
    await add_agent(world.db, tenant, teams=[sales], presence=Presence.OFFLINE)  # online members first
    owner = await add_agent(world.db, tenant)
    contact = await add_contact(world.db, tenant)
    owned = await add_deal(world.db, tenant, owner_id=owner, contact_id=contact)
    orphan = await add_deal(world.db, tenant, owner_id=None, contact_id=contact)
    await add_rule(
        world.db,
        tenant,
        trigger="deal.stage_changed",
        template={"title": "Follow up on {{ deal.title }}"},
        assignee={"rule": "deal_owner", "fallback": {"rule": "team", "team_id": sales}},
    )
    await world.emit("deal.stage_changed", {"deal_id": owned, "outcome": "open"})
    await world.emit("deal.stage_changed", {"deal_id": orphan, "outcome": "open"})
    first, second = await tasks_of(world.db, tenant)
    assert (first.assignee_id, first.deal_id, first.title) == (owner, owned, "Follow up on Fleet renewal")
    assert second.assignee_id in (ann, bob) and second.team_id == sales

    # Round robin: the member given a task of the team longest ago takes the next.
    await add_rule(
        world.db,
        tenant,
        trigger="conversation.reopened",
        assignee={"rule": "team", "team_id": sales, "strategy": "round_robin"},
    )
    contacts = [await add_contact(world.db, tenant) for _ in range(4)]
    for c in contacts:
        await world.emit("conversation.reopened", {"contact_id": c})
    robin = [t.assignee_id for t in (await tasks_of(world.db, tenant))[2:]]
    other = bob if second.assignee_id == ann else ann
    assert robin == [other, second.assignee_id, other, second.assignee_id]

    # Least loaded: whoever holds the fewest open tasks (done ones do not count).
    async with world.db.transaction() as session:
        for task in await session.scalars(select(Task).where(Task.assignee_id == ann)):
            await change_task(session, task, {"status": TaskStatus.DONE}, changed_by={"type": "test"})
    await add_rule(
        world.db,
        tenant,
        trigger="contact.lifecycle_changed",
        assignee={"rule": "team", "team_id": sales, "strategy": "least_loaded"},
    )
    for c in contacts[:2]:
        await world.emit("contact.lifecycle_changed", {"contact_id": c})
    least = [t.assignee_id for t in (await tasks_of(world.db, tenant))[6:]]
    assert least[0] == ann


async def test_an_idle_deal_gets_one_follow_up_per_idle_spell(world: World, db: Database) -> None:
    tenant = world.tenant_id
    owner = await add_agent(db, tenant)
    deal = await add_deal(db, tenant, owner_id=owner, contact_id=await add_contact(db, tenant))
    fresh = await add_deal(db, tenant, owner_id=owner, contact_id=None)
    await add_rule(
        db,
        tenant,
        trigger="deal.idle",
        idle_days=3,
        template={"title": "{{ deal.title }} idle for {{ idle_days }} days", "due_in_hours": 24},
        assignee={"rule": "deal_owner"},
    )
    async with db.transaction() as session:
        await session.execute(
            update(Deal).where(Deal.id == deal).values(updated_at=NOW - timedelta(days=3, hours=1))
        )
        await session.execute(update(Deal).where(Deal.id == fresh).values(updated_at=NOW - timedelta(days=2)))
    assert await world.engine.sweep_idle_deals() == 1
    assert await world.engine.sweep_idle_deals() == 0
    (task,) = await tasks_of(db, tenant)
    assert (task.deal_id, task.assignee_id, task.title) == (deal, owner, "Fleet renewal idle for 3 days")

    # Worked on, then idle again: a new spell, a new task.
    async with db.transaction() as session:
        await session.execute(update(Deal).where(Deal.id == deal).values(updated_at=NOW - timedelta(days=1)))
    world.clock.advance(days=3)
    assert await world.engine.sweep_idle_deals() == 2  # and `fresh` has now been idle long enough
    assert sorted(t.deal_id for t in await tasks_of(db, tenant)) == sorted([deal, deal, fresh])


async def test_reminders_and_overdue_notices_fire_once_each(
    world: World, db: Database, settings: Settings, smarthost: Smarthost
) -> None:
    tenant = world.tenant_id
    team = await add_team(db, tenant, "Support")
    lead = await add_agent(db, tenant, role=Role.SUPERVISOR, teams=[team])
    agent = await add_agent(db, tenant, teams=[team])
    ids = []
    async with db.transaction() as session:
        for n in range(30):
            task = await create_task(
                session,
                tenant,
                {
                    "title": f"Call back #{n}",
                    "priority": "medium",
                    "due_at": NOW + timedelta(hours=1),
                    "remind_at": NOW + timedelta(minutes=30),
                    "assignee_id": agent,
                    "team_id": team,
                },
            )
            assert task is not None
            ids.append(task.id)
        done = await create_task(
            session, tenant, {"title": "Done already", "due_at": NOW, "remind_at": NOW, "assignee_id": agent}
        )
        assert done is not None
        await change_task(session, done, {"status": TaskStatus.DONE}, changed_by={"type": "test"})
    world.clock.advance(minutes=29)
    assert await world.timers.sweep() == 0

    async def sweep_concurrently() -> int:
        # Four "processes": their own engines, small batches so that their claims interleave.
        databases = [Database(settings.database_url) for _ in range(4)]
        try:
            sweepers = [TaskTimers(d, clock=world.clock, batch=4) for d in databases]
            return sum(await asyncio.gather(*(s.sweep() for s in sweepers for _ in range(2))))
        finally:
            for d in databases:
                await d.dispose()

    world.clock.advance(minutes=1)
    assert await sweep_concurrently() == 30
    reminders = await topics(db, "task.reminder")
    assert sorted(r["task_id"] for r in reminders) == ids
    async with db.sessionmaker() as session:
        notices = (
            await session.execute(select(Notification.user_id, Notification.kind, Notification.task_id))
        ).all()
    assert sorted(notices) == sorted((agent, "task_reminder", i) for i in ids)

    world.clock.advance(minutes=30)
    assert await sweep_concurrently() == 30
    assert await world.timers.sweep() == 0
    overdue = await topics(db, "task.overdue")
    assert sorted(o["task_id"] for o in overdue) == ids
    assert {o["supervisor_id"] for o in overdue} == {lead}
    async with db.sessionmaker() as session:
        kinds = (
            await session.execute(
                select(Notification.user_id, func.count())
                .where(Notification.kind == "task_overdue")
                .group_by(Notification.user_id)
            )
        ).all()
        priorities = set((await session.scalars(select(Task.priority).where(Task.id.in_(ids)))).all())
    assert sorted(kinds) == sorted([(agent, 30), (lead, 30)])
    assert priorities == {"high"}  # raised one level, once

    # Mail: one reminder per task to the agent, one overdue notice per task to agent and lead.
    await world.run()
    subjects = [m.message["Subject"] for m in smarthost.received]
    assert sum(s.startswith("Task due soon") for s in subjects) == 30
    assert sum(s.startswith("Overdue task") for s in subjects) == 60
    assert all(len(m.rcpt_tos) == 1 for m in smarthost.received)
    assert len(smarthost.received) == 90


async def test_moving_the_due_date_rearms_the_timers(world: World, db: Database) -> None:
    tenant = world.tenant_id
    agent = await add_agent(db, tenant)
    async with db.transaction() as session:
        task = await create_task(
            session,
            tenant,
            {
                "title": "Send the quote",
                "due_at": NOW,
                "remind_at": NOW - timedelta(minutes=15),
                "assignee_id": agent,
            },
        )
        assert task is not None
    assert await world.timers.sweep() == 2
    async with db.transaction() as session:
        task = await session.get(Task, task.id)
        assert task is not None and task.breached_at is not None
        await change_task(session, task, {"due_at": NOW + timedelta(days=1)}, changed_by={"type": "test"})
        assert task.remind_at == NOW + timedelta(days=1, minutes=-15)
    assert await world.timers.sweep() == 0
    world.clock.advance(days=1)
    assert await world.timers.sweep() == 2


async def test_merging_contacts_moves_their_tasks(world: World, db: Database) -> None:
    tenant = world.tenant_id
    survivor, merged = await add_contact(db, tenant), await add_contact(db, tenant)
    async with db.transaction() as session:
        task = await create_task(session, tenant, {"title": "Call Ada", "contact_id": merged})
        assert task is not None
    async with db.transaction() as session:
        a, b = await session.get(Contact, survivor), await session.get(Contact, merged)
        assert a is not None and b is not None
        report = await merge_contacts(session, a, b)
    assert report.other_references.get("tasks.contact_id") == 1
    (moved,) = await tasks_of(db, tenant)
    assert moved.contact_id == survivor


async def test_the_celery_beat_tasks_sweep(
    world: World, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis, beat runs the timers, idle deals and routing sweeps in a worker."""
    from parley import tasks

    schedule = tasks.celery_app("redis://127.0.0.1:1/0").conf.beat_schedule
    assert schedule["task-timers"]["task"] == tasks.TASK_TIMERS_TASK
    assert schedule["idle-deal-sweep"]["task"] == tasks.IDLE_DEALS_TASK
    assert schedule["routing-sweep"]["task"] == tasks.ROUTING_SWEEP_TASK
    agent = await add_agent(db, world.tenant_id)
    async with db.transaction() as session:  # due on 23 November 2026: long past in real time
        await create_task(session, world.tenant_id, {"title": "Old", "due_at": NOW, "assignee_id": agent})
    monkeypatch.setenv("PARLEY_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PARLEY_SECRET_KEY", settings.secret_key)
    monkeypatch.setenv("PARLEY_DATA_DIR", str(settings.data_dir))

    def in_a_worker() -> tuple[int, int, int, int]:
        try:
            return tasks.task_timers(), tasks.task_timers(), tasks.idle_deal_sweep(), tasks.routing_sweep()
        finally:
            tasks.shutdown_runtime()

    assert await asyncio.to_thread(in_a_worker) == (1, 0, 0, 0)
    assert len(await topics(db, "task.overdue")) == 1


async def test_a_rule_counts_its_due_time_in_business_hours(world: World, db: Database) -> None:
    tenant = world.tenant_id
    async with db.transaction() as session:
        calendar = BusinessCalendarRecord(
            tenant_id=tenant,
            name="Office",
            time_zone="UTC",
            hours={day: [["09:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")},
        )
        session.add(calendar)
        await session.flush()
        calendar_id = calendar.id
    await add_rule(
        db,
        tenant,
        trigger="contact.lifecycle_changed",
        template={"title": "Qualify", "due_in_hours": 10, "business_hours": True, "calendar_id": calendar_id},
    )
    await world.emit("contact.lifecycle_changed", {"contact_id": await add_contact(db, tenant)})
    (task,) = await tasks_of(db, tenant)
    # Monday 09:00 + 10 business hours: Monday's 8, then 2 on Tuesday.
    assert task.due_at == datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    assert task.assignee_id is None  # no assignee rule: the task waits for someone to take it
