"""Tickets' SLA on both databases: due times on a business calendar, pauses while pending, one breach each."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from crm_core.ticket_models import Ticket, TicketStatusChange
from crm_core.tickets import change_status, open_ticket
from parley.db import Database
from parley.models import OutboxEvent
from parley.outbox import Event
from parley.settings import Settings
from routing.models import BusinessCalendarRecord, SlaPolicy
from routing.ticket_sla import BREACHED_TOPIC, TicketSla, refresh_due
from tests.conftest import make_tenant

# Friday 2026-11-20 15:00 UTC; office hours 09:00-17:00 UTC on weekdays.
FRIDAY_15 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
OFFICE = {day: [["09:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def _policy(db: Database, tenant_id: int, minutes: int, *, hours: bool = True) -> int:
    async with db.transaction() as session:
        calendar_id = None
        if hours:
            calendar = BusinessCalendarRecord(
                tenant_id=tenant_id, name="Office", time_zone="UTC", hours=OFFICE
            )
            session.add(calendar)
            await session.flush()
            calendar_id = calendar.id
        policy = SlaPolicy(
            tenant_id=tenant_id, name="Tickets", resolution_minutes=minutes, calendar_id=calendar_id
        )
        session.add(policy)
        await session.flush()
        return policy.id


async def _ticket_opened_at(db: Database, tenant_id: int, policy_id: int, at: datetime) -> int:
    async with db.transaction() as session:
        ticket = await open_ticket(session, tenant_id=tenant_id, subject="Broken", sla_policy_id=policy_id)
        ticket.created_at = at
        await session.execute(
            TicketStatusChange.__table__.update()
            .where(TicketStatusChange.ticket_id == ticket.id)
            .values(changed_at=at)
        )
        await refresh_due(session, ticket, at)
        return ticket.id


async def _move(db: Database, ticket_id: int, status: str, at: datetime) -> Ticket:
    async with db.transaction() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        await change_status(session, ticket, status, now=at)
        await refresh_due(session, ticket, at)
        return ticket


async def test_due_time_counts_business_hours_and_pending_pauses_the_clock(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    policy_id = await _policy(db, tenant.tenant_id, 240)
    ticket_id = await _ticket_opened_at(db, tenant.tenant_id, policy_id, FRIDAY_15)
    async with db.sessionmaker() as session:
        ticket = await session.get(Ticket, ticket_id)
        # Friday 15:00-17:00 is two hours; the other two are Monday 09:00-11:00.
        assert ticket is not None and ticket.due_at == datetime(2026, 11, 23, 11, 0, tzinfo=UTC)

    # Pending (waiting on the customer) from Monday 10:00 to Tuesday 10:00: eight business hours.
    await _move(db, ticket_id, "pending", datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    ticket = await _move(db, ticket_id, "open", datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    assert ticket.due_at == datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    # On hold (a third party) does not pause it.
    await _move(db, ticket_id, "on_hold", datetime(2026, 11, 24, 10, 30, tzinfo=UTC))
    ticket = await _move(db, ticket_id, "open", datetime(2026, 11, 24, 10, 45, tzinfo=UTC))
    assert ticket.due_at == datetime(2026, 11, 24, 11, 0, tzinfo=UTC)


async def test_a_ticket_without_a_resolution_target_has_no_due_time(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    async with db.transaction() as session:
        policy = SlaPolicy(tenant_id=tenant.tenant_id, name="Replies only", first_response_minutes=30)
        session.add(policy)
        await session.flush()
        ticket = await open_ticket(session, tenant_id=tenant.tenant_id, subject="x", sla_policy_id=policy.id)
        assert await refresh_due(session, ticket) is None


async def test_the_sweep_breaches_each_running_ticket_once_and_skips_pending_ones(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    policy_id = await _policy(db, tenant.tenant_id, 60, hours=False)
    late = await _ticket_opened_at(db, tenant.tenant_id, policy_id, FRIDAY_15)
    waiting = await _ticket_opened_at(db, tenant.tenant_id, policy_id, FRIDAY_15)
    await _move(db, waiting, "pending", FRIDAY_15 + timedelta(minutes=30))
    on_time = await _ticket_opened_at(db, tenant.tenant_id, policy_id, FRIDAY_15 + timedelta(hours=5))

    clock = FakeClock(FRIDAY_15 + timedelta(hours=2))
    sla = TicketSla(db, clock=clock)
    assert await sla.sweep() == 1
    assert await TicketSla(db, clock=clock).sweep() == 0  # a second sweeper finds nothing left
    clock.now += timedelta(hours=1)
    assert await sla.sweep() == 0
    async with db.sessionmaker() as session:
        payloads = (
            await session.scalars(select(OutboxEvent.payload).where(OutboxEvent.topic == BREACHED_TOPIC))
        ).all()
        breached = {t.id: t.sla_breached_at for t in (await session.scalars(select(Ticket))).all()}
    assert [p["ticket_id"] for p in payloads] == [late]
    assert payloads[0]["due_at"] == (FRIDAY_15 + timedelta(hours=1)).isoformat()
    assert breached[late] is not None and breached[waiting] is None and breached[on_time] is None


async def test_the_handler_recomputes_due_when_the_policy_changes(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    policy_id = await _policy(db, tenant.tenant_id, 120, hours=False)
    async with db.transaction() as session:
        ticket = await open_ticket(session, tenant_id=tenant.tenant_id, subject="x")
        ticket_id, created = ticket.id, ticket.created_at
        ticket.sla_policy_id = policy_id
    sla = TicketSla(db, clock=lambda: created)
    event = Event(
        id=1,
        tenant_id=tenant.tenant_id,
        topic="ticket.updated",
        payload={"ticket_id": ticket_id, "changes": {"sla_policy_id": [None, policy_id]}},
        attempts=1,
        created_at=created,
    )
    await sla.on_ticket_changed(event)
    async with db.sessionmaker() as session:
        row = await session.get(Ticket, ticket_id)
        assert row is not None and row.due_at == created + timedelta(hours=2)


async def test_the_celery_beat_task_sweeps_tickets(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis, beat runs `parley.ticket_sla_sweep` in a worker; two runs breach a ticket once."""
    from parley import tasks

    schedule = tasks.celery_app("redis://127.0.0.1:1/0").conf.beat_schedule
    assert schedule["ticket-sla-sweep"]["task"] == tasks.TICKET_SLA_SWEEP_TASK
    tenant = await make_tenant(db, "acme")
    policy_id = await _policy(db, tenant.tenant_id, 60, hours=False)
    ticket_id = await _ticket_opened_at(db, tenant.tenant_id, policy_id, FRIDAY_15)  # long past
    monkeypatch.setenv("PARLEY_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PARLEY_SECRET_KEY", settings.secret_key)
    monkeypatch.setenv("PARLEY_DATA_DIR", str(settings.data_dir))

    def in_a_worker() -> tuple[int, int]:
        try:
            return tasks.ticket_sla_sweep(), tasks.ticket_sla_sweep()
        finally:
            tasks.shutdown_runtime()

    assert await asyncio.to_thread(in_a_worker) == (1, 0)
    async with db.sessionmaker() as session:
        payloads = (
            await session.scalars(select(OutboxEvent.payload).where(OutboxEvent.topic == BREACHED_TOPIC))
        ).all()
    assert [p["ticket_id"] for p in payloads] == [ticket_id]
