"""Tickets' SLA: the linked policy's resolution target, counted on its business calendar, gives `due_at`.

The clock starts when the ticket is opened and pauses while it is `pending` (waiting on the
customer), `solved` or `closed`; the business time spent paused, read from the ticket's status
history, is added to the target. So `due_at = add_business_time(calendar, created_at, target + paused)`
is recomputed from scratch whenever the ticket's status or policy changes, and is right whatever
order events arrive in. A sweep marks running tickets past due and emits `ticket.sla_breached` once
per ticket (a conditional UPDATE … RETURNING, `SKIP LOCKED` on PostgreSQL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.ticket_models import SLA_RUNNING, Ticket, TicketStatus, TicketStatusChange
from parley.db import Database, utcnow
from parley.outbox import Event, emit
from parley.sweeping import sweep_forever
from routing.calendars import BusinessCalendar, add_business_time, business_time_between
from routing.models import SlaPolicy
from routing.sla import policy_calendar

logger = logging.getLogger(__name__)

BREACHED_TOPIC = "ticket.sla_breached"
PAUSED = (TicketStatus.PENDING, TicketStatus.SOLVED, TicketStatus.CLOSED)

Clock = Callable[[], datetime]


async def paused_time(
    session: AsyncSession, ticket: Ticket, calendar: BusinessCalendar, now: datetime
) -> timedelta:
    """Business time the ticket spent in a paused status, up to `now`."""
    changes = (
        await session.execute(
            select(TicketStatusChange.to_status, TicketStatusChange.changed_at)
            .where(TicketStatusChange.ticket_id == ticket.id)
            .order_by(TicketStatusChange.changed_at, TicketStatusChange.id)
        )
    ).all()
    total = timedelta()
    for (status, since), following in zip(changes, [*changes[1:], None], strict=True):
        if status in PAUSED:
            until = now if following is None else following.changed_at
            if until > since:
                total += business_time_between(calendar, since, until)
    return total


async def refresh_due(session: AsyncSession, ticket: Ticket, now: datetime | None = None) -> datetime | None:
    """Recompute the ticket's `due_at` from its policy, calendar and status history."""
    policy = None
    if ticket.sla_policy_id is not None:
        policy = (
            await session.execute(
                select(SlaPolicy).where(
                    SlaPolicy.id == ticket.sla_policy_id, SlaPolicy.tenant_id == ticket.tenant_id
                )
            )
        ).scalar_one_or_none()
    if policy is None or policy.resolution_minutes is None:
        ticket.due_at = None
    else:
        calendar = await policy_calendar(session, policy.calendar_id)
        paused = await paused_time(session, ticket, calendar, now or utcnow())
        ticket.due_at = add_business_time(
            calendar, ticket.created_at, timedelta(minutes=policy.resolution_minutes) + paused
        )
    await session.flush()
    return ticket.due_at


class TicketSla:
    """The handlers that keep tickets' due times and the sweep that finds breaches."""

    def __init__(self, db: Database, *, clock: Clock = utcnow, batch: int = 500) -> None:
        self.db = db
        self.now = clock
        self.batch = batch

    async def on_ticket_changed(self, event: Event) -> None:
        """`ticket.created`, `ticket.updated`, `ticket.status_changed`: recompute the due time."""
        if event.topic == "ticket.updated" and "sla_policy_id" not in event.payload.get("changes", {}):
            return
        async with self.db.transaction() as session:
            ticket = (
                await session.execute(
                    select(Ticket).where(
                        Ticket.id == int(event.payload["ticket_id"]), Ticket.tenant_id == event.tenant_id
                    )
                )
            ).scalar_one_or_none()
            if ticket is not None:
                await refresh_due(session, ticket, self.now())

    async def sweep(self) -> int:
        """Mark running tickets past due as breached and emit `ticket.sla_breached` for each, once."""
        total = 0
        while True:
            now = self.now()
            async with self.db.transaction() as session:
                due = (
                    select(Ticket.id)
                    .where(
                        Ticket.sla_breached_at.is_(None),
                        Ticket.status.in_([str(s) for s in SLA_RUNNING]),
                        Ticket.due_at <= now,
                    )
                    .order_by(Ticket.due_at)
                    .limit(self.batch)
                    .with_for_update(skip_locked=True)
                )
                rows = (
                    await session.execute(
                        update(Ticket)
                        .where(Ticket.id.in_(due.scalar_subquery()), Ticket.sla_breached_at.is_(None))
                        .values(sla_breached_at=now)
                        .returning(
                            Ticket.id,
                            Ticket.tenant_id,
                            Ticket.contact_id,
                            Ticket.sla_policy_id,
                            Ticket.team_id,
                            Ticket.assignee_id,
                            Ticket.due_at,
                        )
                    )
                ).all()
                by_tenant: dict[int, list[tuple[str, dict[str, Any]]]] = {}
                for row in rows:
                    by_tenant.setdefault(row.tenant_id, []).append(
                        (
                            BREACHED_TOPIC,
                            {
                                "ticket_id": row.id,
                                "contact_id": row.contact_id,
                                "sla_policy_id": row.sla_policy_id,
                                "team_id": row.team_id,
                                "assignee_id": row.assignee_id,
                                "due_at": row.due_at.isoformat(),
                            },
                        )
                    )
                for tenant_id, events in by_tenant.items():
                    await emit(session, tenant_id, *events)
            total += len(rows)
            if len(rows) < self.batch:
                return total

    async def run_sweeps(self, *, interval: float = 15.0, notify: Callable[[], None] | None = None) -> None:
        """Sweep every `interval` seconds until cancelled."""
        await sweep_forever(self.sweep, interval=interval, what="ticket SLA sweep", notify=notify)


def ticket_sla_subscribers(sla: TicketSla) -> dict[str, list[Callable[[Event], Any]]]:
    """The ticket topics that move a ticket's due time."""
    return {
        "ticket.created": [sla.on_ticket_changed],
        "ticket.updated": [sla.on_ticket_changed],
        "ticket.status_changed": [sla.on_ticket_changed],
    }
