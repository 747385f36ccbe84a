"""Tickets in the agents' UI: "Create ticket" in a conversation, a ticket's page, the contact panel's list."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from crm_core.models import Contact
from crm_core.ticket_models import BUILTIN_TYPES, PRIORITIES, Ticket, TicketStatus
from crm_core.tickets import (
    TRANSITIONS,
    TicketError,
    change_status,
    linked_conversations,
    open_tickets_of_contact,
    update_ticket,
)
from gateway.api.permissions import Permission
from gateway.ui.web import Ui, page, redirect
from inbox.lookup import NotFoundError
from inbox.tickets import open_from_conversation
from parley.models import User
from routing.ticket_sla import refresh_due


async def contact_ticket_rows(ui: Ui, contact_id: int) -> list[dict[str, Any]] | None:
    """The contact's unresolved tickets for the contact panel (None: the user may not see tickets)."""
    if not ui.may(Permission.READ_TICKETS):
        return None
    return [
        {
            "id": t.id,
            "number": t.number,
            "subject": t.subject,
            "status": t.status,
            "priority": t.priority,
            "due": ui.local(t.due_at),
            "breached": t.sla_breached_at is not None,
        }
        for t in await open_tickets_of_contact(ui.session, ui.tenant_id, contact_id)
    ]


async def _form(ui: Ui) -> dict[str, str]:
    form = await ui.request.post()
    return {key: value for key, value in form.items() if isinstance(value, str)}


@page(allow=Permission.WRITE_TICKETS)
async def create_from_conversation(ui: Ui) -> web.StreamResponse:
    """The conversation's "Create ticket" form: open it and go to its page."""
    form = await _form(ui)
    priority = form.get("priority") or None
    ticket_type = (form.get("type") or "question").strip()
    try:
        ticket = await open_from_conversation(
            ui.session,
            ui.tenant_id,
            int(ui.request.match_info["conversation_id"]),
            source="agent",
            created_by=ui.user_id,
            subject=form.get("subject", "").strip()[:300] or None,
            description=form.get("description", "")[:20000],
            type=ticket_type,
            priority=priority if priority in PRIORITIES else None,
        )
    except NotFoundError:
        raise web.HTTPNotFound(text="No such conversation.") from None
    except TicketError as e:
        return web.Response(status=422, text=e.message)
    await refresh_due(ui.session, ticket)
    ui.notify_after_commit()
    return redirect(f"/tickets/{ticket.id}")


async def _ticket(ui: Ui) -> Ticket:
    ticket = (
        await ui.session.execute(
            select(Ticket).where(
                Ticket.id == int(ui.request.match_info["ticket_id"]), Ticket.tenant_id == ui.tenant_id
            )
        )
    ).scalar_one_or_none()
    if ticket is None:
        raise web.HTTPNotFound(text="No such ticket.")
    return ticket


async def _page_context(ui: Ui, ticket: Ticket, **extra: Any) -> dict[str, Any]:
    contact = None
    if ticket.contact_id is not None:
        contact = await ui.session.get(Contact, ticket.contact_id)
    agents = (
        await ui.session.scalars(
            select(User)
            .where(User.tenant_id == ui.tenant_id, User.active.is_(True))
            .order_by(User.name, User.id)
        )
    ).all()
    return {
        "ticket": ticket,
        "contact": contact,
        "agents": agents,
        "conversation_ids": (await linked_conversations(ui.session, [ticket.id]))[ticket.id],
        "statuses": [ticket.status, *sorted(TRANSITIONS[TicketStatus(ticket.status)])],
        "priorities": PRIORITIES,
        "types": BUILTIN_TYPES,
        "due": ui.local(ticket.due_at),
        "can_edit": ui.may(Permission.WRITE_TICKETS),
        "error": None,
        "notice": None,
        **extra,
    }


@page(allow=Permission.READ_TICKETS)
async def ticket_page(ui: Ui) -> web.StreamResponse:
    ticket = await _ticket(ui)
    return ui.render("tickets/page.html", await _page_context(ui, ticket))


@page(allow=Permission.WRITE_TICKETS)
async def edit_ticket(ui: Ui) -> web.StreamResponse:
    """The ticket page's form: status, assignee, priority."""
    ticket = await _ticket(ui)
    form = await _form(ui)
    values: dict[str, Any] = {}
    if form.get("priority") in PRIORITIES:
        values["priority"] = form["priority"]
    if "assignee" in form:
        assignee = form["assignee"]
        if assignee == "none":
            values["assignee_id"] = None
        elif assignee.isdigit():
            found = (
                await ui.session.execute(
                    select(User.id).where(User.id == int(assignee), User.tenant_id == ui.tenant_id)
                )
            ).scalar_one_or_none()
            if found is None:
                return ui.render(
                    "tickets/page.html", await _page_context(ui, ticket, error="No such agent."), status=422
                )
            values["assignee_id"] = found
    try:
        await update_ticket(ui.session, ticket, values)
        status = form.get("status")
        if status and await change_status(ui.session, ticket, status, user_id=ui.user_id):
            await refresh_due(ui.session, ticket)
    except TicketError as e:
        return ui.render("tickets/page.html", await _page_context(ui, ticket, error=e.message), status=422)
    ui.notify_after_commit()
    return redirect(f"/tickets/{ticket.id}")


def setup_ticket_routes(app: web.Application) -> None:
    app.router.add_post("/inbox/c/{conversation_id:[0-9]+}/tickets", create_from_conversation)
    app.router.add_get("/tickets/{ticket_id:[0-9]+}", ticket_page)
    app.router.add_post("/tickets/{ticket_id:[0-9]+}/edit", edit_ticket)
