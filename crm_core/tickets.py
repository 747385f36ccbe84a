"""Tickets: opening them (by hand or from a conversation), changing them, moving them through statuses.

Every change writes its event in the caller's transaction:

- `ticket.created` {ticket_id, contact_id, conversation_id}
- `ticket.updated` {ticket_id, contact_id, changes: {field: [old, new]}}
- `ticket.status_changed` {ticket_id, contact_id, conversation_id (the first linked, or null),
  team_id, assignee_id, from, to, reopen_count}

The SLA due time is routing's business (`routing.ticket_sla`), which reacts to these events and is
also called directly by the API so an answer already shows it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import Contact
from crm_core.ticket_models import (
    PRIORITIES,
    Ticket,
    TicketConversation,
    TicketCounter,
    TicketSource,
    TicketStatus,
    TicketStatusChange,
)
from parley.db import utcnow
from parley.outbox import emit

CREATED_TOPIC = "ticket.created"
UPDATED_TOPIC = "ticket.updated"
STATUS_CHANGED_TOPIC = "ticket.status_changed"

TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
SUBJECT_LENGTH = 300
# Fields `update_ticket` changes (status has its own function: it has transitions and history).
EDITABLE = (
    "subject",
    "description",
    "type",
    "priority",
    "contact_id",
    "company_id",
    "assignee_id",
    "team_id",
    "sla_policy_id",
)

# Which status may follow which. Solved reopens to any working status; closed is final.
TRANSITIONS: Mapping[str, frozenset[str]] = {
    TicketStatus.OPEN: frozenset({TicketStatus.PENDING, TicketStatus.ON_HOLD, TicketStatus.SOLVED}),
    TicketStatus.PENDING: frozenset({TicketStatus.OPEN, TicketStatus.ON_HOLD, TicketStatus.SOLVED}),
    TicketStatus.ON_HOLD: frozenset({TicketStatus.OPEN, TicketStatus.PENDING, TicketStatus.SOLVED}),
    TicketStatus.SOLVED: frozenset(
        {TicketStatus.OPEN, TicketStatus.PENDING, TicketStatus.ON_HOLD, TicketStatus.CLOSED}
    ),
    TicketStatus.CLOSED: frozenset(),
}


class TicketError(ValueError):
    """A change a ticket cannot take; `code` is stable, the message is for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_type(value: str) -> str:
    if not TYPE_PATTERN.match(value):
        raise TicketError(
            "invalid_type", f"type: {value!r} must be a lowercase slug (e.g. question, incident)."
        )
    return value


def check_priority(value: str) -> str:
    if value not in PRIORITIES:
        raise TicketError("invalid_priority", f"priority: {value!r} is not one of {', '.join(PRIORITIES)}.")
    return value


async def next_number(session: AsyncSession, tenant_id: int) -> int:
    """The tenant's next ticket number: one upsert, so concurrent openings never share a number."""
    conn = await session.connection()
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    table = cast(Table, TicketCounter.__table__)
    stmt = (
        dialect_insert(table)
        .values(tenant_id=tenant_id, last_number=1)
        .on_conflict_do_update(
            index_elements=[table.c.tenant_id], set_={"last_number": table.c.last_number + 1}
        )
        .returning(table.c.last_number)
    )
    return int((await conn.execute(stmt)).scalar_one())


async def linked_conversations(session: AsyncSession, ticket_ids: Sequence[int]) -> dict[int, list[int]]:
    """Each ticket's linked conversation ids, in the order they were linked."""
    linked: dict[int, list[int]] = {ticket_id: [] for ticket_id in ticket_ids}
    if ticket_ids:
        rows = await session.execute(
            select(TicketConversation.ticket_id, TicketConversation.conversation_id)
            .where(TicketConversation.ticket_id.in_(ticket_ids))
            .order_by(TicketConversation.linked_at, TicketConversation.conversation_id)
        )
        for ticket_id, conversation_id in rows.all():
            linked[ticket_id].append(conversation_id)
    return linked


async def open_ticket(
    session: AsyncSession,
    *,
    tenant_id: int,
    subject: str,
    description: str = "",
    type: str = "question",
    priority: str = "none",
    contact_id: int | None = None,
    company_id: int | None = None,
    assignee_id: int | None = None,
    team_id: int | None = None,
    sla_policy_id: int | None = None,
    source: str = TicketSource.API,
    created_by: int | None = None,
    conversation_ids: Sequence[int] = (),
) -> Ticket:
    """Open a ticket (ids must already be checked to be the tenant's); emits `ticket.created`."""
    if company_id is None and contact_id is not None:
        company_id = (
            await session.execute(select(Contact.company_id).where(Contact.id == contact_id))
        ).scalar_one_or_none()
    now = utcnow()
    ticket = Ticket(
        tenant_id=tenant_id,
        number=await next_number(session, tenant_id),
        subject=subject[:SUBJECT_LENGTH],
        description=description,
        type=check_type(type),
        status=TicketStatus.OPEN,
        priority=check_priority(priority),
        contact_id=contact_id,
        company_id=company_id,
        assignee_id=assignee_id,
        team_id=team_id,
        sla_policy_id=sla_policy_id,
        source=TicketSource(source),
        created_by=created_by,
        created_at=now,
        updated_at=now,
        reopen_count=0,
    )
    session.add(ticket)
    await session.flush()
    session.add(
        TicketStatusChange(
            tenant_id=tenant_id,
            ticket_id=ticket.id,
            from_status=None,
            to_status=TicketStatus.OPEN,
            user_id=created_by,
            changed_at=now,
        )
    )
    for conversation_id in dict.fromkeys(conversation_ids):
        session.add(
            TicketConversation(ticket_id=ticket.id, conversation_id=conversation_id, tenant_id=tenant_id)
        )
    await session.flush()
    await emit(
        session,
        tenant_id,
        (
            CREATED_TOPIC,
            {
                "ticket_id": ticket.id,
                "contact_id": ticket.contact_id,
                "conversation_id": conversation_ids[0] if conversation_ids else None,
            },
        ),
    )
    return ticket


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


async def update_ticket(
    session: AsyncSession, ticket: Ticket, values: Mapping[str, Any]
) -> dict[str, list[Any]]:
    """Set the given fields (ids already checked); emits `ticket.updated` with what really changed."""
    changes: dict[str, list[Any]] = {}
    for field, value in values.items():
        if field not in EDITABLE:
            raise TicketError("not_editable", f"{field}: cannot be changed this way.")
        if field == "type":
            check_type(value)
        elif field == "priority":
            check_priority(value)
        elif field == "subject":
            value = str(value)[:SUBJECT_LENGTH]
        old = getattr(ticket, field)
        if old != value:
            setattr(ticket, field, value)
            changes[field] = [_plain(old), _plain(value)]
    if changes:
        ticket.updated_at = utcnow()
        await session.flush()
        await emit(
            session,
            ticket.tenant_id,
            (UPDATED_TOPIC, {"ticket_id": ticket.id, "contact_id": ticket.contact_id, "changes": changes}),
        )
    return changes


async def change_status(
    session: AsyncSession,
    ticket: Ticket,
    status: str,
    *,
    user_id: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Move the ticket to `status` if the transition is allowed; reopening a solved one counts.

    Emits `ticket.status_changed`; False (and nothing written) if it already had that status.
    """
    try:
        new = TicketStatus(status)
    except ValueError:
        known = ", ".join(s.value for s in TicketStatus)
        raise TicketError("invalid_status", f"status: {status!r} is not one of {known}.") from None
    old = TicketStatus(ticket.status)
    if new == old:
        return False
    if new not in TRANSITIONS[old]:
        raise TicketError("invalid_transition", f"A {old.value} ticket cannot become {new.value}.")
    now = now or utcnow()
    if old == TicketStatus.SOLVED and new != TicketStatus.CLOSED:
        ticket.reopen_count += 1
        ticket.solved_at = None
    if new == TicketStatus.SOLVED:
        ticket.solved_at = now
    if new == TicketStatus.CLOSED:
        ticket.closed_at = now
    ticket.status = new
    ticket.updated_at = now
    session.add(
        TicketStatusChange(
            tenant_id=ticket.tenant_id,
            ticket_id=ticket.id,
            from_status=old,
            to_status=new,
            user_id=user_id,
            changed_at=now,
        )
    )
    await session.flush()
    first = (await linked_conversations(session, [ticket.id]))[ticket.id]
    await emit(
        session,
        ticket.tenant_id,
        (
            STATUS_CHANGED_TOPIC,
            {
                "ticket_id": ticket.id,
                "contact_id": ticket.contact_id,
                "conversation_id": first[0] if first else None,
                "team_id": ticket.team_id,
                "assignee_id": ticket.assignee_id,
                "from": str(old),
                "to": str(new),
                "reopen_count": ticket.reopen_count,
            },
        ),
    )
    return True


async def link_conversation(session: AsyncSession, ticket: Ticket, conversation_id: int) -> bool:
    """Link a conversation (already checked to be the tenant's); False if it was linked."""
    exists = await session.get(TicketConversation, (ticket.id, conversation_id))
    if exists is not None:
        return False
    session.add(
        TicketConversation(ticket_id=ticket.id, conversation_id=conversation_id, tenant_id=ticket.tenant_id)
    )
    await session.flush()
    await emit(
        session,
        ticket.tenant_id,
        (
            UPDATED_TOPIC,
            {
                "ticket_id": ticket.id,
                "contact_id": ticket.contact_id,
                "changes": {"conversation_ids": [None, conversation_id]},
            },
        ),
    )
    return True


async def unlink_conversation(session: AsyncSession, ticket: Ticket, conversation_id: int) -> bool:
    """Unlink a conversation; False if it was not linked."""
    result = await session.execute(
        delete(TicketConversation).where(
            TicketConversation.ticket_id == ticket.id, TicketConversation.conversation_id == conversation_id
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    await emit(
        session,
        ticket.tenant_id,
        (
            UPDATED_TOPIC,
            {
                "ticket_id": ticket.id,
                "contact_id": ticket.contact_id,
                "changes": {"conversation_ids": [conversation_id, None]},
            },
        ),
    )
    return True


async def open_tickets_of_contact(session: AsyncSession, tenant_id: int, contact_id: int) -> list[Ticket]:
    """The contact's unresolved tickets, soonest due first (untimed last)."""
    rows = await session.execute(
        select(Ticket)
        .where(
            Ticket.tenant_id == tenant_id,
            Ticket.contact_id == contact_id,
            Ticket.status.in_([TicketStatus.OPEN, TicketStatus.PENDING, TicketStatus.ON_HOLD]),
        )
        .order_by(Ticket.due_at.is_(None), Ticket.due_at, Ticket.id)
    )
    return list(rows.scalars())
