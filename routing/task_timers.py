"""Task reminders and overdue notices: durable timers that fire exactly once each.

The timers are columns of `tasks` (`remind_at`, `due_at`), so they survive restarts. A sweep —
in-process on the embedded default (`run_sweeps`), `parley.task_timers` on Celery beat at scale —
claims the tasks whose time has come with one conditional `UPDATE … RETURNING` that sets
`reminded_at` / `breached_at` (the rows chosen `FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has
one writer). In the same transaction it writes what the timer does, so a claim and its effects
commit together or not at all, and two sweepers never both fire one timer:

- reminder: an in-app notification for the assignee (`notification.created`, live on their
  screen) and a `task.reminder` event;
- overdue: a `task.overdue` event, the priority raised one level (`task.updated`), and in-app
  notifications for the assignee and a supervisor (the task's team first).

Email goes out from the `task.reminder` / `task.overdue` handler (`TaskMailer`) to those of the
notified users who have an address, after the claim committed (at least once: a crash between
the SMTP server's acceptance and the event's completion sends one mail again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.tasks import (
    ACTIVE_STATUSES,
    PRIORITIES,
    TASK_OVERDUE_TOPIC,
    TASK_REMINDER_TOPIC,
    TASK_UPDATED_TOPIC,
    Task,
    task_payload,
)
from inbox.models import Notification, NotificationKind
from inbox.notes import NOTIFICATION_CREATED_TOPIC
from parley.db import Database, utcnow
from parley.mailer import Mailer, MailNotSent
from parley.models import User
from parley.outbox import Event, RetryLater, emit
from parley.sweeping import sweep_forever
from routing.escalation import pick_supervisor

logger = logging.getLogger(__name__)

_RETURNED = (
    Task.id,
    Task.tenant_id,
    Task.title,
    Task.assignee_id,
    Task.team_id,
    Task.priority,
    Task.due_at,
    Task.conversation_id,
)


def _claim(marker: Any, deadline: Any, now: datetime, limit: int) -> Any:
    """Set `marker` on up to `limit` active tasks whose `deadline` has passed and `marker` is unset."""
    still_due: tuple[ColumnElement[bool], ...] = (
        Task.status.in_(ACTIVE_STATUSES),
        marker.is_(None),
        deadline.is_not(None),
        deadline <= now,
    )
    due: Select[Any] = (
        select(Task.id).where(*still_due).order_by(deadline).limit(limit).with_for_update(skip_locked=True)
    )
    return (
        update(Task)
        # The conditions again: a row another sweeper claimed meanwhile no longer qualifies.
        .where(Task.id.in_(due.scalar_subquery()), *still_due)
        .values({marker.key: now})
        .returning(*_RETURNED)
    )


async def _notify(
    session: AsyncSession, row: Any, kind: NotificationKind, user_ids: list[int]
) -> list[tuple[str, Mapping[str, Any]]]:
    notifications = [
        Notification(
            tenant_id=row.tenant_id,
            user_id=user_id,
            kind=kind,
            conversation_id=row.conversation_id,
            task_id=row.id,
        )
        for user_id in dict.fromkeys(user_ids)
    ]
    session.add_all(notifications)
    await session.flush()
    return [
        (
            NOTIFICATION_CREATED_TOPIC,
            {
                "notification_id": n.id,
                "user_id": n.user_id,
                "kind": n.kind,
                "conversation_id": n.conversation_id,
                "message_id": None,
                "actor_id": None,
                "task_id": row.id,
            },
        )
        for n in notifications
    ]


def _timer_payload(row: Any, notified: list[int]) -> dict[str, Any]:
    return {
        "task_id": row.id,
        "title": row.title,
        "assignee_id": row.assignee_id,
        "team_id": row.team_id,
        "conversation_id": row.conversation_id,
        "due_at": row.due_at.isoformat() if row.due_at else None,
        "notified_user_ids": notified,
    }


class TaskTimers:
    """The sweep that fires task reminders and overdue notices."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow, batch: int = 500) -> None:
        self.db = db
        self.now = clock
        self.batch = batch

    async def sweep(self) -> int:
        """Fire every reminder and overdue notice that came due; how many fired."""
        return await self._sweep_reminders() + await self._sweep_overdue()

    async def _sweep_reminders(self) -> int:
        total = 0
        while True:
            async with self.db.transaction() as session:
                rows = (
                    await session.execute(_claim(Task.reminded_at, Task.remind_at, self.now(), self.batch))
                ).all()
                for row in rows:
                    notified = [row.assignee_id] if row.assignee_id is not None else []
                    events = await _notify(session, row, NotificationKind.TASK_REMINDER, notified)
                    await emit(
                        session,
                        row.tenant_id,
                        (TASK_REMINDER_TOPIC, _timer_payload(row, notified)),
                        *events,
                    )
            total += len(rows)
            if len(rows) < self.batch:
                return total

    async def _sweep_overdue(self) -> int:
        total = 0
        while True:
            async with self.db.transaction() as session:
                rows = (
                    await session.execute(_claim(Task.breached_at, Task.due_at, self.now(), self.batch))
                ).all()
                for row in rows:
                    await self._overdue(session, row)
            total += len(rows)
            if len(rows) < self.batch:
                return total

    async def _overdue(self, session: AsyncSession, row: Any) -> None:
        """Escalate one overdue task: raise its priority a level, tell the assignee and a supervisor."""
        supervisor = await pick_supervisor(session, row.tenant_id, row.team_id)
        notified = [u for u in (row.assignee_id, supervisor) if u is not None]
        events = await _notify(session, row, NotificationKind.TASK_OVERDUE, notified)
        level = PRIORITIES.index(row.priority) if row.priority in PRIORITIES else 0
        raised = PRIORITIES[min(level + 1, len(PRIORITIES) - 1)]
        if raised != row.priority:
            await session.execute(
                update(Task).where(Task.id == row.id).values(priority=raised, updated_at=self.now())
            )
            task = await session.get(Task, row.id, populate_existing=True)
            assert task is not None
            events.append(
                (
                    TASK_UPDATED_TOPIC,
                    {
                        **task_payload(task),
                        "changes": {"priority": {"old": row.priority, "new": raised}},
                        "changed_by": {"type": "overdue"},
                    },
                )
            )
        await emit(
            session,
            row.tenant_id,
            (TASK_OVERDUE_TOPIC, {**_timer_payload(row, notified), "supervisor_id": supervisor}),
            *events,
        )

    async def run_sweeps(self, *, interval: float = 15.0, notify: Callable[[], None] | None = None) -> None:
        """Sweep every `interval` seconds until cancelled; `notify` wakes the dispatcher after firing."""
        await sweep_forever(self.sweep, interval=interval, what="task timer sweep", notify=notify)


class TaskMailer:
    """The `task.reminder` / `task.overdue` handler: mail the notified users who have an address."""

    def __init__(self, db: Database, mailer: Mailer, *, public_url: Callable[[], str | None]) -> None:
        self.db = db
        self.mailer = mailer
        self.public_url = public_url

    async def on_timer(self, event: Event) -> None:
        if event.tenant_id is None:
            return
        ids = [int(i) for i in event.payload.get("notified_user_ids", ())]
        if not ids:
            return
        async with self.db.sessionmaker() as session:
            addresses = (
                await session.scalars(
                    select(User.email).where(
                        User.id.in_(ids), User.tenant_id == event.tenant_id, User.active.is_(True)
                    )
                )
            ).all()
        title = str(event.payload.get("title", ""))
        due = str(event.payload.get("due_at") or "")
        if event.topic == TASK_OVERDUE_TOPIC:
            subject, text = f"Overdue task: {title}", f"The task “{title}” was due {due} and is not done."
        else:
            subject, text = f"Task due soon: {title}", f"The task “{title}” is due {due}."
        link = self.public_url()
        if link:
            text += f"\n\nYour tasks: {link.rstrip('/')}/tasks"
        for address in sorted({a for a in addresses if a}):
            try:
                await self.mailer.send(address, subject, text)
            except MailNotSent as e:
                raise RetryLater(str(e)) from e


def task_timer_subscribers(mailer: TaskMailer) -> dict[str, list[Callable[[Event], Any]]]:
    """The topics whose mail `TaskMailer` sends."""
    return {TASK_REMINDER_TOPIC: [mailer.on_timer], TASK_OVERDUE_TOPIC: [mailer.on_timer]}
