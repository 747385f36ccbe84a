"""'My tasks': the signed-in user's open tasks by due date, completing them, adding one; the nav count.

Completing and creating go through the same task service as `/api/v1/tasks`, so the events
(`task.created`, `task.completed`) and rules are the same whichever way a task changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from crm_core.models import Contact, Deal
from crm_core.tasks import (
    ACTIVE_STATUSES,
    PRIORITIES,
    Task,
    TaskStatus,
    TaskType,
    change_task,
    create_task,
    remind_time,
)
from crm_core.ticket_models import Ticket
from gateway.api.permissions import Permission
from gateway.api.tasks import NO_DUE_DATE
from gateway.ui.web import Ui, page, redirect
from parley.db import utcnow

PAGE_SIZE = 100
REMINDER_LEAD = timedelta(minutes=30)


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A task as the list shows it: due time in the agent's zone and a link to what it is about."""

    id: int
    title: str
    type: str
    priority: str
    status: str
    due_local: datetime | None
    overdue: bool
    context_label: str
    context_href: str | None
    suggested: str


async def _rows(ui: Ui, tasks: list[Task]) -> list[TaskRow]:
    contact_ids = {t.contact_id for t in tasks if t.contact_id is not None}
    deal_ids = {t.deal_id for t in tasks if t.deal_id is not None}
    contacts = {
        row.id: row.name or row.phone or row.email or f"Contact {row.id}"
        for row in (
            await ui.session.execute(
                select(Contact.id, Contact.name, Contact.phone, Contact.email).where(
                    Contact.tenant_id == ui.tenant_id, Contact.id.in_(contact_ids)
                )
            )
        ).all()
    }
    deals = {
        row.id: row.title
        for row in (
            await ui.session.execute(
                select(Deal.id, Deal.title).where(Deal.tenant_id == ui.tenant_id, Deal.id.in_(deal_ids))
            )
        ).all()
    }
    ticket_ids = {t.ticket_id for t in tasks if t.ticket_id is not None}
    tickets = {
        row.id: row.number
        for row in (
            await ui.session.execute(
                select(Ticket.id, Ticket.number).where(
                    Ticket.tenant_id == ui.tenant_id, Ticket.id.in_(ticket_ids)
                )
            )
        ).all()
    }
    now = utcnow()
    rows = []
    for t in tasks:
        label, href = "", None
        if t.conversation_id is not None:
            label, href = f"Conversation #{t.conversation_id}", f"/inbox/c/{t.conversation_id}"
            if t.contact_id in contacts:
                label = f"Conversation with {contacts[t.contact_id]}"
        elif t.deal_id is not None:
            # Deals have no page of their own yet: their contact's page lists them.
            label = f"Deal: {deals.get(t.deal_id, t.deal_id)}"
            href = f"/contacts/{t.contact_id}" if t.contact_id is not None else None
        elif t.ticket_id is not None and t.ticket_id in tickets:
            label, href = f"Ticket #{tickets[t.ticket_id]}", f"/tickets/{t.ticket_id}"
        elif t.contact_id is not None:
            label, href = contacts.get(t.contact_id, f"Contact {t.contact_id}"), f"/contacts/{t.contact_id}"
        rows.append(
            TaskRow(
                id=t.id,
                title=t.title,
                type=t.type.replace("_", " "),
                priority=t.priority,
                status=t.status.replace("_", " "),
                due_local=ui.local(t.due_at),
                overdue=t.due_at is not None and t.due_at <= now,
                context_label=label,
                context_href=href,
                suggested=str(t.suggested_action.get("label") or ""),
            )
        )
    return rows


async def _render(
    ui: Ui, *, error: str | None = None, form: dict[str, str] | None = None, status: int = 200
) -> web.Response:
    tasks = list(
        (
            await ui.session.scalars(
                select(Task)
                .where(
                    Task.tenant_id == ui.tenant_id,
                    Task.assignee_id == ui.user_id,
                    Task.status.in_(ACTIVE_STATUSES),
                )
                .order_by(func.coalesce(Task.due_at, NO_DUE_DATE), Task.id)
                .limit(PAGE_SIZE)
            )
        ).all()
    )
    return ui.render(
        "tasks/page.html",
        {
            "tasks": await _rows(ui, tasks),
            "error": error,
            "form": form or {},
            "priorities": PRIORITIES,
            "types": [t.value for t in TaskType],
        },
        status=status,
    )


@page(allow=Permission.READ_TASKS)
async def tasks_page(ui: Ui) -> web.StreamResponse:
    """`GET /tasks`: my open tasks, soonest due first, overdue ones marked."""
    return await _render(ui)


@page(allow=Permission.WRITE_TASKS)
async def add_task(ui: Ui) -> web.StreamResponse:
    """`POST /tasks`: a task for myself from the small form (due time in my time zone)."""
    form = await ui.request.post()
    fields = {k: str(form.get(k, "")).strip() for k in ("title", "due", "priority", "type")}
    title = fields["title"]
    if not title or len(title) > 200:
        return await _render(
            ui, error="Give the task a title (up to 200 characters).", form=fields, status=422
        )
    due_at: datetime | None = None
    if fields["due"]:
        try:
            due_at = datetime.fromisoformat(fields["due"]).replace(tzinfo=ui.time_zone)
        except ValueError:
            return await _render(ui, error="The due date is not a date and time.", form=fields, status=422)
    priority = fields["priority"] if fields["priority"] in PRIORITIES else "none"
    kind = fields["type"] if fields["type"] in {t.value for t in TaskType} else TaskType.CUSTOM.value
    values: dict[str, Any] = {
        "title": title,
        "type": kind,
        "priority": priority,
        "due_at": due_at,
        "remind_at": remind_time(due_at, REMINDER_LEAD),
        "assignee_id": ui.user_id,
        "created_by_user_id": ui.user_id,
        "source": "user",
    }
    await create_task(ui.session, ui.tenant_id, values)
    ui.notify_after_commit()
    return redirect("/tasks")


@page(allow=Permission.WRITE_TASKS)
async def complete_task(ui: Ui) -> web.StreamResponse:
    """`POST /tasks/{id}/complete`: done (only one's own, or an unassigned one, unless a supervisor)."""
    task_id = int(ui.request.match_info["task_id"])
    task = (
        await ui.session.execute(select(Task).where(Task.id == task_id, Task.tenant_id == ui.tenant_id))
    ).scalar_one_or_none()
    if task is None:
        raise web.HTTPNotFound(text="No such task.")
    if not (
        ui.may(Permission.MANAGE_TASKS)
        or task.assignee_id in (None, ui.user_id)
        or task.created_by_user_id == ui.user_id
    ):
        return ui.render("forbidden.html", status=403)
    await change_task(
        ui.session, task, {"status": TaskStatus.DONE.value}, changed_by={"type": "user", "id": ui.user_id}
    )
    ui.notify_after_commit()
    return redirect("/tasks")


@page(allow=Permission.READ_TASKS)
async def task_count(ui: Ui) -> web.StreamResponse:
    """`GET /ui/tasks/count`: how many open tasks I have (the nav's badge), as an HTML fragment."""
    count = await ui.session.scalar(
        select(func.count()).where(
            Task.tenant_id == ui.tenant_id,
            Task.assignee_id == ui.user_id,
            Task.status.in_(ACTIVE_STATUSES),
        )
    )
    return ui.render("tasks/_count.html", {"count": int(count or 0)})


def setup_task_routes(app: web.Application) -> None:
    """The 'My tasks' page, its forms and the nav count."""
    app.router.add_get("/tasks", tasks_page)
    app.router.add_post("/tasks", add_task)
    app.router.add_post("/tasks/{task_id:[0-9]+}/complete", complete_task)
    app.router.add_get("/ui/tasks/count", task_count)
