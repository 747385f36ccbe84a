"""Request and response bodies of `/tasks` and `/task-rules`."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, StringConstraints

from crm_core.tasks import PRIORITIES, TaskStatus, TaskType
from gateway.api.schemas import Id, Name, Page, PageQuery, RequestBody, ResponseBody
from routing.task_engine import ASSIGNEE_RULES, OPERATORS, STRATEGIES, TRIGGERS

Priority = Literal["none", "low", "medium", "high", "urgent"]
assert tuple(Priority.__args__) == PRIORITIES  # type: ignore[attr-defined]
Description = Annotated[str, StringConstraints(max_length=10_000)]
Minutes = Annotated[int, Field(ge=0, le=60 * 24 * 30)]
TaskSort = Literal["due_at", "-due_at", "id", "-id", "created_at", "-created_at", "updated_at", "-updated_at"]


class SuggestedAction(RequestBody):
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")] = Field(
        description="What to do, for a button: `call`, `reply`, `review_ticket`, `open_conversation`…"
    )
    label: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""


class TaskOut(ResponseBody):
    id: int
    type: str
    title: str
    description: str
    priority: str
    status: str
    due_at: dt.datetime | None
    remind_at: dt.datetime | None
    overdue: bool = Field(False, description="Due date passed and not done.")
    assignee_id: int | None
    team_id: int | None
    created_by_user_id: int | None
    rule_id: int | None
    source: str = Field(description="`user`, `rule` or `escalation` (an SLA policy's).")
    contact_id: int | None
    conversation_id: int | None
    deal_id: int | None
    ticket_id: int | None
    suggested_action: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    completed_at: dt.datetime | None
    reminded_at: dt.datetime | None
    breached_at: dt.datetime | None = Field(description="When it was found overdue (and escalated).")


class TaskList(Page):
    data: list[TaskOut]


class TaskQuery(PageQuery):
    assignee_id: Id | Literal["me", "none"] | None = Field(None, description="A user id, `me` or `none`.")
    status: TaskStatus | Literal["active"] | None = Field(
        None, description="`active` is `open` and `in_progress`."
    )
    type: TaskType | None = None
    team_id: Id | None = None
    contact_id: Id | None = None
    conversation_id: Id | None = None
    deal_id: Id | None = None
    ticket_id: Id | None = None
    rule_id: Id | None = None
    due_before: AwareDatetime | None = Field(None, description="Due strictly before.")
    due_after: AwareDatetime | None = Field(None, description="Due at or after.")
    overdue: bool | None = Field(None, description="Only tasks past their due date and not done.")
    sort: TaskSort = Field("due_at", description="Tasks without a due date sort last (ascending).")


class TaskCreate(RequestBody):
    title: Name
    description: Description = ""
    type: TaskType = TaskType.FOLLOW_UP
    priority: Priority = "none"
    due_at: AwareDatetime | None = None
    remind_before_minutes: Minutes | None = Field(
        30, description="A reminder this long before `due_at` (null: none)."
    )
    assignee_id: Id | None = Field(None, description="Default: the caller, unless `team_id` is given.")
    team_id: Id | None = None
    contact_id: Id | None = None
    conversation_id: Id | None = None
    deal_id: Id | None = None
    ticket_id: Id | None = None
    suggested_action: SuggestedAction | None = None


class TaskUpdate(RequestBody):
    title: Name | None = None
    description: Description | None = None
    type: TaskType | None = None
    priority: Priority | None = None
    status: TaskStatus | None = None
    due_at: AwareDatetime | None = None
    remind_before_minutes: Minutes | None = None
    assignee_id: Id | None = None
    team_id: Id | None = None
    contact_id: Id | None = None
    conversation_id: Id | None = None
    deal_id: Id | None = None
    ticket_id: Id | None = None
    suggested_action: SuggestedAction | None = None


# --- rules ----------------------------------------------------------------------------------------


class Condition(RequestBody):
    field: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")] = Field(
        description="A payload field, dotted for nested ones: `reopen_count`, `changes.status.new`."
    )
    op: Literal["==", "!=", ">", ">=", "<", "<=", "in", "exists"] = "=="
    value: Any = None


assert set(Condition.model_fields["op"].annotation.__args__) == set(OPERATORS)  # type: ignore[union-attr]


class TaskTemplate(RequestBody):
    type: TaskType = TaskType.FOLLOW_UP
    title: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        description="Sandboxed Jinja2 over the event's payload plus `contact`, `deal`, `conversation`, "
        "`rule` (e.g. `Follow up with {{ contact.name }}`)."
    )
    description: Description = ""
    priority: Priority = "none"
    due_in_hours: float | None = Field(None, ge=0, le=24 * 365)
    business_hours: bool = Field(False, description="Count `due_in_hours` in `calendar_id`'s business hours.")
    calendar_id: Id | None = None
    remind_before_minutes: Minutes | None = 30
    suggested_action: SuggestedAction | None = None


class AssigneeFallback(RequestBody):
    rule: Literal[
        "deal_owner", "conversation_assignee", "contact_owner", "team", "supervisor", "user", "none"
    ] = "none"
    team_id: Id | None = Field(None, description="Default: the team the event names (a ticket's).")
    strategy: Literal["round_robin", "least_loaded"] = "round_robin"
    user_id: Id | None = None


class AssigneeRule(AssigneeFallback):
    fallback: AssigneeFallback | None = Field(None, description="Tried when `rule` names nobody.")


assert set(AssigneeRule.model_fields["rule"].annotation.__args__) == set(ASSIGNEE_RULES)  # type: ignore[union-attr]
assert set(AssigneeRule.model_fields["strategy"].annotation.__args__) == set(STRATEGIES)  # type: ignore[union-attr]

Trigger = Annotated[str, Field(json_schema_extra={"enum": list(TRIGGERS)})]


class TaskRuleCreate(RequestBody):
    name: Name
    enabled: bool = True
    trigger: Trigger = Field(description="An event topic, or `deal.idle` (with `idle_days`).")
    conditions: list[Condition] = Field(default_factory=list, max_length=20)
    idle_days: int | None = Field(None, ge=1, le=365)
    template: TaskTemplate
    assignee: AssigneeRule = Field(default_factory=AssigneeRule)


class TaskRuleUpdate(RequestBody):
    name: Name | None = None
    enabled: bool | None = None
    trigger: Trigger | None = None
    conditions: list[Condition] | None = Field(None, max_length=20)
    idle_days: int | None = Field(None, ge=1, le=365)
    template: TaskTemplate | None = None
    assignee: AssigneeRule | None = None


class TaskRuleOut(ResponseBody):
    id: int
    name: str
    enabled: bool
    trigger: str
    conditions: list[Any]
    idle_days: int | None
    template: dict[str, Any]
    assignee: dict[str, Any]
    created_by_user_id: int | None
    created_at: dt.datetime
    updated_at: dt.datetime


class TaskRuleList(ResponseBody):
    data: list[TaskRuleOut]
