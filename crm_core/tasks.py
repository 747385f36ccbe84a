"""Tasks: a piece of work for someone (follow up, call back, review…), with its context and timers.

A task has a type, priority, status, an assignee (or only a team), a due date, and links to what it
is about: a contact, a conversation, a deal or a ticket. Rules create tasks from events
(`task_rules`, applied by `routing.task_engine`); people create them through the API and the UI.

Timers live in the rows themselves: `remind_at` (set from the due date and a lead time) and
`due_at`; `reminded_at` and `breached_at` record that the reminder and the overdue notice fired.
A sweep claims them with one conditional UPDATE … RETURNING (`routing.task_timers`), so each fires
exactly once however many processes sweep.

`dedupe_key` is unique per tenant: a rule that sees the same subject again (an event delivered
twice, a deal still idle at the next sweep) finds its task already there and creates nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import ForeignKey, Index, String, Table, Text, UniqueConstraint, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from parley.db import Base, BigId, utcnow
from parley.outbox import emit

TASK_CREATED_TOPIC = "task.created"
TASK_ASSIGNED_TOPIC = "task.assigned"
TASK_UPDATED_TOPIC = "task.updated"
TASK_COMPLETED_TOPIC = "task.completed"
TASK_REMINDER_TOPIC = "task.reminder"
TASK_OVERDUE_TOPIC = "task.overdue"

# The same levels as a conversation's priority (inbox.models.ConversationPriority), lowest first.
PRIORITIES = ("none", "low", "medium", "high", "urgent")
DEFAULT_REMINDER_LEAD = timedelta(minutes=30)


class TaskType(StrEnum):
    FOLLOW_UP = "follow_up"
    CALL_BACK = "call_back"
    REVIEW = "review"
    ESCALATION = "escalation"
    CUSTOM = "custom"


class TaskStatus(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (TaskStatus.OPEN.value, TaskStatus.IN_PROGRESS.value)
_ACTIVE_SQL = "status IN ('open', 'in_progress')"


class Task(Base):
    """One piece of work for a person or a team, about a contact, conversation, deal or ticket."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("tenant_id", "dedupe_key"),
        # "My open tasks by due date", the page and the nav count.
        Index("ix_tasks_tenant_id_assignee_id_status_due_at", "tenant_id", "assignee_id", "status", "due_at"),
        # The timer sweeps read only what is still to fire.
        Index(
            "ix_tasks_reminder_sweep",
            "remind_at",
            postgresql_where=text(f"{_ACTIVE_SQL} AND reminded_at IS NULL AND remind_at IS NOT NULL"),
            sqlite_where=text(f"{_ACTIVE_SQL} AND reminded_at IS NULL AND remind_at IS NOT NULL"),
        ),
        Index(
            "ix_tasks_overdue_sweep",
            "due_at",
            postgresql_where=text(f"{_ACTIVE_SQL} AND breached_at IS NULL AND due_at IS NOT NULL"),
            sqlite_where=text(f"{_ACTIVE_SQL} AND breached_at IS NULL AND due_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(20), default=TaskType.FOLLOW_UP)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[str] = mapped_column(String(10), default="none")
    status: Mapped[str] = mapped_column(String(12), default=TaskStatus.OPEN)
    due_at: Mapped[datetime | None]
    remind_at: Mapped[datetime | None]
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    # Who made it: a user, or a rule (`created_by_rule_id`), or an SLA escalation (neither).
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("task_rules.id", ondelete="SET NULL"), index=True)
    source: Mapped[str] = mapped_column(String(20), default="user")  # user, rule, escalation
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), index=True
    )
    deal_id: Mapped[int | None] = mapped_column(ForeignKey("deals.id", ondelete="SET NULL"), index=True)
    # No foreign key yet: the tickets table is being built alongside; the merge adds it.
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"), index=True)
    # What to do, for a person and for a button: {"kind": "call", "label": "Call Ann back"}.
    suggested_action: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None]
    reminded_at: Mapped[datetime | None]
    breached_at: Mapped[datetime | None]


class TaskRule(Base):
    """When an event (or a deal's idleness) calls for a task: the trigger, conditions, task and assignee.

    `trigger` is an outbox topic (`ticket.status_changed`, `deal.stage_changed`…) or `deal.idle`
    (no update for `idle_days` while the deal is open, found by a sweep). `conditions` is a list of
    `{"field", "op", "value"}` on the event's payload, all of which must hold. `template` says what
    task to create (`type`, `title` and `description` as sandboxed Jinja2, `priority`, `due_in_hours`,
    `business_hours` with `calendar_id`, `remind_before_minutes`, `suggested_action`); `assignee`
    who gets it (`routing.task_engine.ASSIGNEE_RULES`).
    """

    __tablename__ = "task_rules"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(default=True)
    trigger: Mapped[str] = mapped_column(String(60))
    conditions: Mapped[list[Any]] = mapped_column(default=list)
    idle_days: Mapped[int | None]
    template: Mapped[dict[str, Any]] = mapped_column(default=dict)
    assignee: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def remind_time(due_at: datetime | None, lead: timedelta | None) -> datetime | None:
    """When to remind of a task due at `due_at`: `lead` before (None: no reminder)."""
    if due_at is None or lead is None:
        return None
    return due_at - lead


def task_payload(task: Task) -> dict[str, Any]:
    """What events about a task carry."""
    return {
        "task_id": task.id,
        "type": task.type,
        "status": task.status,
        "priority": task.priority,
        "assignee_id": task.assignee_id,
        "team_id": task.team_id,
        "rule_id": task.rule_id,
        "contact_id": task.contact_id,
        "conversation_id": task.conversation_id,
        "deal_id": task.deal_id,
        "ticket_id": task.ticket_id,
        "due_at": task.due_at.isoformat() if task.due_at else None,
    }


async def create_task(
    session: AsyncSession, tenant_id: int, fields: Mapping[str, Any], *, dedupe_key: str | None = None
) -> Task | None:
    """Insert a task and emit `task.created` (and `task.assigned`); None if `dedupe_key` already exists.

    The insert is `ON CONFLICT DO NOTHING` on (tenant, dedupe key): two processes handling the same
    subject at once create one task between them, and neither fails.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "type": TaskType.FOLLOW_UP.value,
        "description": "",
        "priority": "none",
        "status": TaskStatus.OPEN.value,
        "suggested_action": {},
        "source": "user",
        **fields,
        "tenant_id": tenant_id,
        "dedupe_key": dedupe_key,
        "created_at": now,
        "updated_at": now,
    }
    conn = await session.connection()
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(cast(Table, Task.__table__)).values(**values)
    if dedupe_key is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["tenant_id", "dedupe_key"])
    task_id = (await conn.execute(stmt.returning(Task.__table__.c.id))).scalar()
    if task_id is None:
        return None
    task = (await session.execute(select(Task).where(Task.id == task_id))).scalar_one()
    payload = task_payload(task)
    events: list[tuple[str, Mapping[str, Any]]] = [(TASK_CREATED_TOPIC, {**payload, "title": task.title})]
    if task.assignee_id is not None:
        events.append((TASK_ASSIGNED_TOPIC, payload))
    await emit(session, tenant_id, *events)
    return task


async def change_task(
    session: AsyncSession, task: Task, changes: Mapping[str, Any], *, changed_by: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Apply `changes` to a task, emitting `task.updated` (and `task.assigned`, `task.completed`).

    Completing sets `completed_at`; reopening clears it. Moving the due date re-arms the timers.
    Returns the changes actually made, as {field: {"old", "new"}}.
    """
    made: dict[str, dict[str, Any]] = {}
    for name, value in changes.items():
        old = getattr(task, name)
        if old != value:
            setattr(task, name, value)
            made[name] = {"old": _jsonable(old), "new": _jsonable(value)}
    if not made:
        return made
    now = utcnow()
    if "status" in made:
        if task.status == TaskStatus.DONE:
            task.completed_at = now
        elif task.status in ACTIVE_STATUSES:
            task.completed_at = None
    if "due_at" in made or "remind_at" in made:
        task.reminded_at = None
        task.breached_at = None
    if "due_at" in made and "remind_at" not in changes and made["due_at"]["old"] is not None:
        old_due = datetime.fromisoformat(made["due_at"]["old"])
        lead = None if task.remind_at is None else old_due - task.remind_at
        task.remind_at = remind_time(task.due_at, lead)
    task.updated_at = now
    await session.flush()
    payload = task_payload(task)
    events: list[tuple[str, Mapping[str, Any]]] = [
        (TASK_UPDATED_TOPIC, {**payload, "changes": made, "changed_by": dict(changed_by)})
    ]
    if "assignee_id" in made and task.assignee_id is not None:
        events.append((TASK_ASSIGNED_TOPIC, payload))
    if made.get("status", {}).get("new") == TaskStatus.DONE:
        events.append((TASK_COMPLETED_TOPIC, {**payload, "changed_by": dict(changed_by)}))
    await emit(session, task.tenant_id, *events)
    return made


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
