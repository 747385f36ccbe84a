"""`/tasks` and `/task-rules`: people's work items, and the rules that create them from events.

Everyone who reads tasks sees the tenant's tasks; agents change, complete and reopen their own
tasks, unassigned ones and those they created, supervisors and admins anyone's. Only supervisors
and admins see and edit rules.
"""

from __future__ import annotations

import datetime as dt
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select

from crm_core.models import Contact, Deal
from crm_core.tasks import (
    ACTIVE_STATUSES,
    Task,
    TaskRule,
    TaskStatus,
    change_task,
    create_task,
    remind_time,
)
from gateway.api.permissions import Permission, allows
from gateway.api.routing import ApiRequest, RouteTable, field_errors
from gateway.api.sorting import SortKey, fetch_sorted_page, iso_datetime
from gateway.api.task_schemas import (
    TaskCreate,
    TaskList,
    TaskOut,
    TaskQuery,
    TaskRuleCreate,
    TaskRuleList,
    TaskRuleOut,
    TaskRuleUpdate,
    TaskUpdate,
)
from gateway.errors import ApiError, NotFound
from inbox.models import Conversation
from parley.db import utcnow
from parley.models import User
from routing.models import Team
from routing.task_engine import IDLE_DEAL_TRIGGER, validate_rule

routes = RouteTable("tasks")

NO_DUE_DATE = dt.datetime(9999, 12, 31, tzinfo=UTC)
_SORT_KEYS = {
    "id": SortKey(Task.id, lambda t: t.id, int),
    # Tasks without a due date sort last (ascending): as if due at the end of time.
    "due_at": SortKey(
        func.coalesce(Task.due_at, NO_DUE_DATE), lambda t: t.due_at or NO_DUE_DATE, iso_datetime
    ),
    "created_at": SortKey(Task.created_at, lambda t: t.created_at, iso_datetime),
    "updated_at": SortKey(Task.updated_at, lambda t: t.updated_at, iso_datetime),
}
_NULLABLE = frozenset(
    {"due_at", "assignee_id", "team_id", "contact_id", "conversation_id", "deal_id", "ticket_id"}
)
_CONTEXT = (
    ("contact_id", Contact),
    ("conversation_id", Conversation),
    ("deal_id", Deal),
    ("team_id", Team),
    ("assignee_id", User),
)


def task_out(task: Task, now: dt.datetime | None = None) -> TaskOut:
    """A task as the API shows it, with `overdue` worked out at `now`."""
    now = now or utcnow()
    overdue = task.status in ACTIVE_STATUSES and task.due_at is not None and task.due_at <= now
    return TaskOut.model_validate(task).model_copy(update={"overdue": overdue})


async def _task(call: ApiRequest, task_id: int) -> Task:
    row = (
        await call.session.execute(select(Task).where(Task.id == task_id, Task.tenant_id == call.tenant_id))
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("task")
    return row


def _may_change(call: ApiRequest, task: Task) -> None:
    if allows(call.principal.role, Permission.MANAGE_TASKS):
        return
    me = call.principal.user_id
    if task.assignee_id in (None, me) or task.created_by_user_id == me:
        return
    raise ApiError(403, "forbidden", "Only its assignee, its creator or a supervisor may change this task.")


async def _check_context(call: ApiRequest, values: dict[str, Any]) -> None:
    """Every id in `values` names a row of the caller's tenant (422 on the field otherwise)."""
    errors = {}
    for name, model in _CONTEXT:
        value = values.get(name)
        if value is None:
            continue
        found = (
            await call.session.execute(
                select(model.id).where(model.id == value, model.tenant_id == call.tenant_id)
            )
        ).scalar_one_or_none()
        if found is None:
            errors[f"body.{name}"] = f"no such {name.removesuffix('_id')}"
    if errors:
        raise field_errors(errors)


def filtered(stmt: Select[Any], query: TaskQuery, *, me: int, now: dt.datetime) -> Select[Any]:
    """`stmt` narrowed by the list's filters."""
    conditions: list[ColumnElement[bool]] = []
    if query.assignee_id == "me":
        conditions.append(Task.assignee_id == me)
    elif query.assignee_id == "none":
        conditions.append(Task.assignee_id.is_(None))
    elif query.assignee_id is not None:
        conditions.append(Task.assignee_id == query.assignee_id)
    if query.status == "active":
        conditions.append(Task.status.in_(ACTIVE_STATUSES))
    elif query.status is not None:
        conditions.append(Task.status == query.status)
    for column, value in (
        (Task.type, query.type),
        (Task.team_id, query.team_id),
        (Task.contact_id, query.contact_id),
        (Task.conversation_id, query.conversation_id),
        (Task.deal_id, query.deal_id),
        (Task.ticket_id, query.ticket_id),
        (Task.rule_id, query.rule_id),
    ):
        if value is not None:
            conditions.append(column == value)
    if query.due_before is not None:
        conditions.append(Task.due_at < query.due_before)
    if query.due_after is not None:
        conditions.append(Task.due_at >= query.due_after)
    if query.overdue is not None:
        late = and_(Task.status.in_(ACTIVE_STATUSES), Task.due_at <= now)
        conditions.append(late if query.overdue else or_(~late, Task.due_at.is_(None)))
    return stmt.where(*conditions)


@routes.get("/tasks", allow=Permission.READ_TASKS, errors=[400])
async def list_tasks(call: ApiRequest, *, query: TaskQuery) -> TaskList:
    """List tasks: `assignee_id=me&status=active` is one's open work, soonest due first."""
    now = utcnow()
    stmt = filtered(
        select(Task).where(Task.tenant_id == call.tenant_id), query, me=call.principal.user_id, now=now
    )
    rows, next_cursor = await fetch_sorted_page(call.session, stmt, Task.id, query.sort, _SORT_KEYS, query)
    return TaskList(data=[task_out(t, now) for t in rows], next_cursor=next_cursor)


@routes.post("/tasks", allow=Permission.WRITE_TASKS)
async def create_a_task(call: ApiRequest, *, body: TaskCreate) -> TaskOut:
    """Create a task; it is the caller's unless given to someone else or a team."""
    values = body.model_dump(exclude={"remind_before_minutes", "suggested_action"})
    if "assignee_id" not in body.model_fields_set and body.team_id is None:
        values["assignee_id"] = call.principal.user_id
    await _check_context(call, values)
    lead = None if body.remind_before_minutes is None else timedelta(minutes=body.remind_before_minutes)
    values.update(
        {
            "type": body.type.value,
            "remind_at": remind_time(body.due_at, lead),
            "suggested_action": body.suggested_action.model_dump() if body.suggested_action else {},
            "created_by_user_id": call.principal.user_id,
            "source": "user",
        }
    )
    task = await create_task(call.session, call.tenant_id, values)
    assert task is not None  # no dedupe key: always created
    call.notify_after_commit()
    return task_out(task)


@routes.get("/tasks/{task_id}", allow=Permission.READ_TASKS)
async def get_task(call: ApiRequest, *, task_id: int) -> TaskOut:
    """Get a task."""
    return task_out(await _task(call, task_id))


@routes.patch("/tasks/{task_id}", allow=Permission.WRITE_TASKS, errors=[403])
async def update_task(call: ApiRequest, *, task_id: int, body: TaskUpdate) -> TaskOut:
    """Change a task: title, status, due date (the reminder moves with it), assignee, context…"""
    task = await _task(call, task_id)
    _may_change(call, task)
    changes = {
        name: value
        for name, value in body.model_dump(
            exclude_unset=True, exclude={"remind_before_minutes", "suggested_action"}
        ).items()
        if value is not None or name in _NULLABLE
    }
    await _check_context(call, changes)
    if "suggested_action" in body.model_fields_set:
        changes["suggested_action"] = body.suggested_action.model_dump() if body.suggested_action else {}
    if "remind_before_minutes" in body.model_fields_set:
        due = changes.get("due_at", task.due_at)
        minutes = body.remind_before_minutes
        changes["remind_at"] = remind_time(due, None if minutes is None else timedelta(minutes=minutes))
    for name in ("type", "status"):
        if changes.get(name) is not None:
            changes[name] = str(changes[name])
    await change_task(call.session, task, changes, changed_by=_by(call))
    call.notify_after_commit()
    return task_out(task)


@routes.post("/tasks/{task_id}/complete", allow=Permission.WRITE_TASKS, status=200, errors=[403])
async def complete_task(call: ApiRequest, *, task_id: int) -> TaskOut:
    """Mark a task done (emits `task.completed`); completing a done task changes nothing."""
    task = await _task(call, task_id)
    _may_change(call, task)
    await change_task(call.session, task, {"status": TaskStatus.DONE.value}, changed_by=_by(call))
    call.notify_after_commit()
    return task_out(task)


@routes.post("/tasks/{task_id}/reopen", allow=Permission.WRITE_TASKS, status=200, errors=[403])
async def reopen_task(call: ApiRequest, *, task_id: int) -> TaskOut:
    """Open a done or cancelled task again."""
    task = await _task(call, task_id)
    _may_change(call, task)
    await change_task(call.session, task, {"status": TaskStatus.OPEN.value}, changed_by=_by(call))
    call.notify_after_commit()
    return task_out(task)


@routes.delete("/tasks/{task_id}", allow=Permission.MANAGE_TASKS)
async def delete_task(call: ApiRequest, *, task_id: int) -> None:
    """Delete a task (to keep its history, cancel it instead: `status: cancelled`)."""
    await call.session.delete(await _task(call, task_id))


def _by(call: ApiRequest) -> dict[str, Any]:
    return {"type": "user", "id": call.principal.user_id}


# --- rules -----------------------------------------------------------------------------------------


async def _rule(call: ApiRequest, rule_id: int) -> TaskRule:
    row = (
        await call.session.execute(
            select(TaskRule).where(TaskRule.id == rule_id, TaskRule.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("task rule")
    return row


async def _check_rule(call: ApiRequest, rule: TaskRule) -> None:
    errors = {f"body.{k}": v for k, v in validate_rule(rule.trigger, rule.conditions, rule.assignee).items()}
    if rule.trigger == IDLE_DEAL_TRIGGER and not rule.idle_days:
        errors["body.idle_days"] = "a deal.idle rule needs idle_days"
    for field, model, value in (
        ("body.assignee.team_id", Team, rule.assignee.get("team_id")),
        ("body.assignee.user_id", User, rule.assignee.get("user_id")),
    ):
        if (
            value is not None
            and (
                await call.session.execute(
                    select(model.id).where(model.id == value, model.tenant_id == call.tenant_id)
                )
            ).scalar_one_or_none()
            is None
        ):
            errors[field] = "not in this tenant"
    if errors:
        raise field_errors(errors)


@routes.get("/task-rules", allow=Permission.MANAGE_TASK_RULES)
async def list_task_rules(call: ApiRequest) -> TaskRuleList:
    """The tenant's task rules."""
    rows = await call.session.scalars(
        select(TaskRule).where(TaskRule.tenant_id == call.tenant_id).order_by(TaskRule.id)
    )
    return TaskRuleList(data=[TaskRuleOut.model_validate(r) for r in rows])


@routes.post("/task-rules", allow=Permission.MANAGE_TASK_RULES)
async def create_task_rule(call: ApiRequest, *, body: TaskRuleCreate) -> TaskRuleOut:
    """Create a task rule: when `trigger` happens and `conditions` hold, create `template` for `assignee`."""
    rule = TaskRule(
        tenant_id=call.tenant_id,
        created_by_user_id=call.principal.user_id,
        **body.model_dump(mode="json"),
    )
    await _check_rule(call, rule)
    call.session.add(rule)
    await call.session.flush()
    return TaskRuleOut.model_validate(rule)


@routes.get("/task-rules/{rule_id}", allow=Permission.MANAGE_TASK_RULES)
async def get_task_rule(call: ApiRequest, *, rule_id: int) -> TaskRuleOut:
    """Get a task rule."""
    return TaskRuleOut.model_validate(await _rule(call, rule_id))


@routes.patch("/task-rules/{rule_id}", allow=Permission.MANAGE_TASK_RULES)
async def update_task_rule(call: ApiRequest, *, rule_id: int, body: TaskRuleUpdate) -> TaskRuleOut:
    """Change a task rule; tasks it already created stay as they are."""
    rule = await _rule(call, rule_id)
    for name, value in body.model_dump(mode="json", exclude_unset=True).items():
        if value is None and name != "idle_days":
            continue
        setattr(rule, name, value)
    await _check_rule(call, rule)
    await call.session.flush()
    return TaskRuleOut.model_validate(rule)


@routes.delete("/task-rules/{rule_id}", allow=Permission.MANAGE_TASK_RULES)
async def delete_task_rule(call: ApiRequest, *, rule_id: int) -> None:
    """Delete a task rule; its tasks stay."""
    await call.session.delete(await _rule(call, rule_id))
