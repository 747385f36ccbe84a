"""`/tickets`: support tickets opened from conversations or by hand, their statuses and SLA due times.

`POST /conversations/{id}/tickets` is the agent's "create ticket" button (or a bot's triage, a rule);
the ticket's `due_at` comes from its SLA policy's resolution target on the policy's business calendar
and pauses while the ticket is `pending`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select

from crm_core.models import Company, Contact
from crm_core.ticket_models import UNRESOLVED, Ticket, TicketStatusChange
from crm_core.tickets import (
    TicketError,
    change_status,
    link_conversation,
    linked_conversations,
    open_ticket,
    unlink_conversation,
    update_ticket,
)
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable, field_errors
from gateway.api.sorting import SortKey, fetch_sorted_page, iso_datetime
from gateway.api.ticket_schemas import (
    TicketCreate,
    TicketFromConversation,
    TicketHistory,
    TicketHistoryEntry,
    TicketLink,
    TicketList,
    TicketOut,
    TicketQuery,
    TicketStatusChangeIn,
    TicketUpdate,
)
from gateway.errors import ApiError, NotFound
from inbox.lookup import NotFoundError
from inbox.models import Conversation
from inbox.tickets import open_from_conversation
from parley.models import User
from routing.models import SlaPolicy, Team
from routing.ticket_sla import refresh_due

routes = RouteTable("tickets")

_FAR = iso_datetime("9999-12-31T00:00:00+00:00")
_PRIORITY_RANK = case(
    {"none": 0, "low": 1, "medium": 2, "high": 3, "urgent": 4}, value=Ticket.priority, else_=0
)
_RANKS = {"none": 0, "low": 1, "medium": 2, "high": 3, "urgent": 4}

_SORT_KEYS = {
    "id": SortKey(Ticket.id, lambda t: t.id, int),
    "number": SortKey(Ticket.number, lambda t: t.number, int),
    # Tickets without a due time sort last (ascending): as if due at the end of time.
    "due_at": SortKey(func.coalesce(Ticket.due_at, _FAR), lambda t: t.due_at or _FAR, iso_datetime),
    "updated_at": SortKey(Ticket.updated_at, lambda t: t.updated_at, iso_datetime),
    "priority": SortKey(_PRIORITY_RANK, lambda t: _RANKS.get(t.priority, 0), int),
}


def _unprocessable(e: TicketError) -> ApiError:
    return ApiError(409 if e.code == "invalid_transition" else 422, e.code, e.message)


async def _ticket(call: ApiRequest, ticket_id: int) -> Ticket:
    row = (
        await call.session.execute(
            select(Ticket).where(Ticket.id == ticket_id, Ticket.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("ticket")
    return row


async def _owned(call: ApiRequest, model: Any, row_id: int | None, field: str) -> int | None:
    """`row_id` if it names a row of `model` in the caller's tenant; 422 on `field` otherwise."""
    if row_id is None:
        return None
    found = (
        await call.session.execute(
            select(model.id).where(model.id == row_id, model.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if found is None:
        raise field_errors({field: f"no such {model.__tablename__.rstrip('s').replace('_', ' ')}"})
    return row_id


async def _conversation(call: ApiRequest, conversation_id: int, field: str | None = None) -> int:
    found = (
        await call.session.execute(
            select(Conversation.id).where(
                Conversation.id == conversation_id, Conversation.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if found is None:
        if field:
            raise field_errors({field: "no such conversation"})
        raise NotFound("conversation")
    return found


_REFERENCES: dict[str, Any] = {
    "contact_id": Contact,
    "company_id": Company,
    "assignee_id": User,
    "team_id": Team,
    "sla_policy_id": SlaPolicy,
}


async def ticket_out(call: ApiRequest, ticket: Ticket) -> TicketOut:
    linked = await linked_conversations(call.session, [ticket.id])
    return TicketOut.model_validate(ticket).model_copy(update={"conversation_ids": linked[ticket.id]})


@routes.get("/tickets", allow=Permission.READ_TICKETS, errors=[400])
async def list_tickets(call: ApiRequest, *, query: TicketQuery) -> TicketList:
    """List tickets, filtered and sorted (newest first by default)."""
    stmt = select(Ticket).where(Ticket.tenant_id == call.tenant_id)
    if query.status == "unresolved":
        stmt = stmt.where(Ticket.status.in_([str(s) for s in UNRESOLVED]))
    elif query.status is not None:
        stmt = stmt.where(Ticket.status == query.status)
    if query.assignee_id == "none":
        stmt = stmt.where(Ticket.assignee_id.is_(None))
    elif query.assignee_id is not None:
        stmt = stmt.where(Ticket.assignee_id == query.assignee_id)
    for column, value in (
        (Ticket.team_id, query.team_id),
        (Ticket.contact_id, query.contact_id),
        (Ticket.priority, query.priority),
        (Ticket.type, query.type),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    rows, next_cursor = await fetch_sorted_page(call.session, stmt, Ticket.id, query.sort, _SORT_KEYS, query)
    linked = await linked_conversations(call.session, [t.id for t in rows])
    return TicketList(
        data=[
            TicketOut.model_validate(t).model_copy(update={"conversation_ids": linked[t.id]}) for t in rows
        ],
        next_cursor=next_cursor,
    )


@routes.post("/tickets", allow=Permission.WRITE_TICKETS)
async def create_ticket(call: ApiRequest, *, body: TicketCreate) -> TicketOut:
    """Open a ticket; its number counts up per tenant."""
    for field, model in _REFERENCES.items():
        await _owned(call, model, getattr(body, field), f"body.{field}")
    for conversation_id in body.conversation_ids:
        await _conversation(call, conversation_id, "body.conversation_ids")
    try:
        ticket = await open_ticket(
            call.session,
            tenant_id=call.tenant_id,
            subject=body.subject,
            description=body.description,
            type=body.type,
            priority=body.priority,
            contact_id=body.contact_id,
            company_id=body.company_id,
            assignee_id=body.assignee_id,
            team_id=body.team_id,
            sla_policy_id=body.sla_policy_id,
            source=body.source,
            created_by=call.principal.user_id,
            conversation_ids=body.conversation_ids,
        )
    except TicketError as e:
        raise _unprocessable(e) from None
    await refresh_due(call.session, ticket)
    call.notify_after_commit()
    return await ticket_out(call, ticket)


@routes.post("/conversations/{conversation_id}/tickets", allow=Permission.WRITE_TICKETS)
async def create_ticket_from_conversation(
    call: ApiRequest, *, conversation_id: int, body: TicketFromConversation
) -> TicketOut:
    """Open a ticket from a conversation: its contact, company and priority, the conversation linked.

    The subject defaults to the first line of the customer's first message.
    """
    for field in ("assignee_id", "team_id", "sla_policy_id"):
        await _owned(call, _REFERENCES[field], getattr(body, field), f"body.{field}")
    try:
        ticket = await open_from_conversation(
            call.session,
            call.tenant_id,
            conversation_id,
            source=body.source,
            created_by=call.principal.user_id,
            subject=body.subject,
            description=body.description,
            type=body.type,
            priority=body.priority,
            assignee_id=body.assignee_id,
            team_id=body.team_id,
            sla_policy_id=body.sla_policy_id,
        )
    except NotFoundError:
        raise NotFound("conversation") from None
    except TicketError as e:
        raise _unprocessable(e) from None
    await refresh_due(call.session, ticket)
    call.notify_after_commit()
    return await ticket_out(call, ticket)


@routes.get("/tickets/{ticket_id}", allow=Permission.READ_TICKETS)
async def get_ticket(call: ApiRequest, *, ticket_id: int) -> TicketOut:
    """Get a ticket with its linked conversations."""
    return await ticket_out(call, await _ticket(call, ticket_id))


@routes.patch("/tickets/{ticket_id}", allow=Permission.WRITE_TICKETS)
async def patch_ticket(call: ApiRequest, *, ticket_id: int, body: TicketUpdate) -> TicketOut:
    """Change a ticket's subject, description, type, priority, contact, company, assignee, team or policy."""
    ticket = await _ticket(call, ticket_id)
    values: dict[str, Any] = {}
    for field in body.model_fields_set:
        value = getattr(body, field)
        if value is None and field in ("subject", "description", "type", "priority"):
            continue
        if field in _REFERENCES:
            await _owned(call, _REFERENCES[field], value, f"body.{field}")
        values[field] = value
    try:
        changes = await update_ticket(call.session, ticket, values)
    except TicketError as e:
        raise _unprocessable(e) from None
    if "sla_policy_id" in changes:
        await refresh_due(call.session, ticket)
    if changes:
        call.notify_after_commit()
    return await ticket_out(call, ticket)


@routes.post("/tickets/{ticket_id}/status", allow=Permission.WRITE_TICKETS, status=200, errors=[409])
async def set_ticket_status(call: ApiRequest, *, ticket_id: int, body: TicketStatusChangeIn) -> TicketOut:
    """Move a ticket to another status; 409 for a move the workflow forbids (a closed ticket is final)."""
    ticket = await _ticket(call, ticket_id)
    try:
        changed = await change_status(call.session, ticket, body.status, user_id=call.principal.user_id)
    except TicketError as e:
        raise _unprocessable(e) from None
    if changed:
        await refresh_due(call.session, ticket)
        call.notify_after_commit()
    return await ticket_out(call, ticket)


@routes.get("/tickets/{ticket_id}/history", allow=Permission.READ_TICKETS)
async def ticket_history(call: ApiRequest, *, ticket_id: int) -> TicketHistory:
    """The ticket's status changes, oldest first."""
    ticket = await _ticket(call, ticket_id)
    rows = await call.session.execute(
        select(TicketStatusChange)
        .where(TicketStatusChange.ticket_id == ticket.id)
        .order_by(TicketStatusChange.changed_at, TicketStatusChange.id)
    )
    return TicketHistory(data=[TicketHistoryEntry.model_validate(r) for r in rows.scalars()])


@routes.post("/tickets/{ticket_id}/conversations", allow=Permission.WRITE_TICKETS, status=200)
async def link_ticket_conversation(call: ApiRequest, *, ticket_id: int, body: TicketLink) -> TicketOut:
    """Link a conversation to the ticket (linking one twice changes nothing)."""
    ticket = await _ticket(call, ticket_id)
    await _conversation(call, body.conversation_id, "body.conversation_id")
    if await link_conversation(call.session, ticket, body.conversation_id):
        call.notify_after_commit()
    return await ticket_out(call, ticket)


@routes.delete("/tickets/{ticket_id}/conversations/{conversation_id}", allow=Permission.WRITE_TICKETS)
async def unlink_ticket_conversation(call: ApiRequest, *, ticket_id: int, conversation_id: int) -> None:
    """Unlink a conversation from the ticket; 404 if it was not linked."""
    ticket = await _ticket(call, ticket_id)
    if not await unlink_conversation(call.session, ticket, conversation_id):
        raise NotFound("linked conversation")
    call.notify_after_commit()


@routes.delete("/tickets/{ticket_id}", allow=Permission.WRITE_TICKETS)
async def delete_ticket(call: ApiRequest, *, ticket_id: int) -> None:
    """Delete a ticket (its links and history go with it)."""
    await call.session.delete(await _ticket(call, ticket_id))
