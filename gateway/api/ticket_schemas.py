"""Request and response bodies of the tickets API and the CSAT settings and report."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from gateway.api.schemas import Id, Page, PageQuery, RequestBody, ResponseBody

Subject = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
TicketType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
Priority = Literal["none", "low", "medium", "high", "urgent"]
Status = Literal["open", "pending", "on_hold", "solved", "closed"]
Description = Annotated[str, StringConstraints(max_length=20000)]
TicketSort = Literal[
    "id",
    "-id",
    "number",
    "-number",
    "due_at",
    "-due_at",
    "updated_at",
    "-updated_at",
    "priority",
    "-priority",
]

_TYPE_HELP = "question, incident, problem, task, or a slug of the tenant's own."


class TicketQuery(PageQuery):
    status: Status | Literal["unresolved"] | None = Field(
        None, description="`unresolved`: open, pending or on hold."
    )
    assignee_id: Id | Literal["none"] | None = Field(None, description="A user id, or `none` for unassigned.")
    team_id: Id | None = None
    contact_id: Id | None = None
    priority: Priority | None = None
    type: TicketType | None = None
    sort: TicketSort = Field("-id", description="`due_at` puts tickets without a due time last.")


class TicketCreate(RequestBody):
    subject: Subject
    description: Description = ""
    type: TicketType = Field("question", description=_TYPE_HELP)
    priority: Priority = "none"
    contact_id: Id | None = None
    company_id: Id | None = Field(None, description="Default: the contact's company.")
    assignee_id: Id | None = None
    team_id: Id | None = None
    sla_policy_id: Id | None = Field(None, description="Its resolution target sets `due_at`.")
    source: Literal["agent", "bot", "rule", "api", "email"] = "api"
    conversation_ids: list[Id] = Field(default_factory=list, max_length=50)


class TicketFromConversation(RequestBody):
    subject: Subject | None = Field(None, description="Default: the customer's first message's first line.")
    description: Description = ""
    type: TicketType = Field("question", description=_TYPE_HELP)
    priority: Priority | None = Field(None, description="Default: the conversation's.")
    assignee_id: Id | None = Field(None, description="Default: the conversation's assignee.")
    team_id: Id | None = None
    sla_policy_id: Id | None = None
    source: Literal["agent", "bot", "rule"] = Field(
        "agent", description="Who asked: an agent, a bot, a rule."
    )


class TicketUpdate(RequestBody):
    subject: Subject | None = None
    description: Description | None = None
    type: TicketType | None = None
    priority: Priority | None = None
    contact_id: Id | None = Field(None, description="null: no contact.")
    company_id: Id | None = None
    assignee_id: Id | None = Field(None, description="null: unassigned.")
    team_id: Id | None = None
    sla_policy_id: Id | None = None


class TicketStatusChangeIn(RequestBody):
    status: Status = Field(
        description="open, pending (waits on the customer; the SLA pauses), on_hold, solved, closed (final). "
        "Reopening a solved ticket counts in `reopen_count`."
    )


class TicketLink(RequestBody):
    conversation_id: Id


class TicketOut(ResponseBody):
    id: int
    number: int
    subject: str
    description: str
    type: str
    status: str
    priority: str
    contact_id: int | None
    company_id: int | None
    assignee_id: int | None
    team_id: int | None
    sla_policy_id: int | None
    due_at: dt.datetime | None
    sla_breached_at: dt.datetime | None
    solved_at: dt.datetime | None
    closed_at: dt.datetime | None
    reopen_count: int
    source: str
    created_by: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
    conversation_ids: list[int] = Field(default_factory=list)


class TicketList(Page):
    data: list[TicketOut]


class TicketHistoryEntry(ResponseBody):
    from_status: str | None
    to_status: str
    user_id: int | None
    changed_at: dt.datetime


class TicketHistory(ResponseBody):
    data: list[TicketHistoryEntry]


# --- CSAT -----------------------------------------------------------------------------------------


class WhatsAppTemplateIn(RequestBody):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    language: str | None = None
    variables: dict[str, Annotated[str, StringConstraints(max_length=1000)]] = Field(
        default_factory=dict, description="Values may contain `{link}` (the rating page) and `{question}`."
    )


class CsatSettingsIn(RequestBody):
    enabled: bool
    question: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)] | None
    ) = None
    whatsapp_template: WhatsAppTemplateIn | None = Field(
        None, description="Sent outside WhatsApp's 24-hour window; without one no survey goes there."
    )
    link_expiry_hours: int | None = Field(None, ge=1, le=24 * 90)
    reply_window_hours: int | None = Field(None, ge=1, le=24 * 14)


class CsatSettingsOut(ResponseBody):
    enabled: bool
    question: str
    whatsapp_template: dict[str, Any]
    link_expiry_hours: int
    reply_window_hours: int


class CsatReportQuery(RequestBody):
    date_from: dt.date = Field(alias="from", description="Surveys sent on or after this day (UTC).")
    date_to: dt.date = Field(alias="to", description="Surveys sent on or before this day (UTC).")
    group_by: Literal["agent", "team", "inbox", "day"] = "day"


class CsatReportRow(ResponseBody):
    group: str | None = Field(description="The agent, team or inbox id, or the day; null: none.")
    sent: int
    responses: int
    response_rate: float | None = Field(description="responses / sent; null when none were sent.")
    average: float | None = Field(description="The mean rating (1-5) of the responses.")
    csat: float | None = Field(description="The share of responses rated 4 or 5, in percent.")


class CsatReport(ResponseBody):
    group_by: str
    data: list[CsatReportRow]
    total: CsatReportRow
