"""SLAs through the API: business-hours calendars, SLA policies with escalations, a conversation's clocks."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import Field, StringConstraints, model_validator
from sqlalchemy import select

from gateway.api.permissions import Permission, allows
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import Id, Name, RequestBody, ResponseBody
from gateway.errors import ApiError, NotFound
from inbox.models import Conversation, Inbox
from parley.db import utcnow
from parley.models import User
from routing.calendars import WEEKDAYS, BusinessCalendar, CalendarError
from routing.escalation import ACTIONS
from routing.models import BusinessCalendarRecord, SlaPolicy, Team
from routing.sla import PRIORITIES, conversation_clocks

routes = RouteTable("sla")

Clock = Annotated[str, StringConstraints(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Priority = Literal["none", "low", "medium", "high", "urgent"]
Stage = Literal["warning", "breach"]
Minutes = Annotated[int, Field(ge=1, le=366 * 24 * 60)]
Email = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
WebhookUrl = Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)]

assert set(Weekday.__args__) == set(WEEKDAYS) and set(Priority.__args__) == set(PRIORITIES)  # type: ignore[attr-defined]


# --- bodies ---------------------------------------------------------------------------------------


class CalendarIn(RequestBody):
    name: Name
    time_zone: str = Field("UTC", description="An IANA time zone, e.g. Europe/Paris.")
    hours: dict[Weekday, list[tuple[Clock, Clock]]] = Field(
        description='Weekday → [["09:00", "12:00"], ["13:00", "18:00"]] in `time_zone`; "24:00" ends a day.'
    )
    holiday_country: Annotated[str, StringConstraints(to_upper=True, min_length=2, max_length=3)] | None = (
        Field(None, description="ISO country code whose public holidays are days off (`holidays` package).")
    )
    holiday_subdivision: Annotated[str, StringConstraints(min_length=1, max_length=10)] | None = Field(
        None, description="A subdivision of the country (a state, a region), e.g. CA for the US."
    )
    custom_holidays: list[date] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _usable(self) -> Self:
        try:
            BusinessCalendar.build(
                time_zone=self.time_zone,
                hours=self.hours,  # type: ignore[arg-type]
                country=self.holiday_country,
                subdivision=self.holiday_subdivision,
                custom_holidays=self.custom_holidays,
            )
        except CalendarError as e:
            raise ValueError(str(e)) from None
        return self


class CalendarOut(ResponseBody):
    id: int
    name: str
    time_zone: str
    hours: dict[str, list[tuple[str, str]]]
    holiday_country: str | None
    holiday_subdivision: str | None
    custom_holidays: list[date]
    created_at: datetime
    updated_at: datetime


class CalendarList(ResponseBody):
    data: list[CalendarOut]


class EscalationAction(RequestBody):
    """One action run when a clock warns or breaches; the fields used depend on `type`."""

    type: Literal[
        "raise_priority", "reassign", "notify_in_app", "notify_email", "notify_slack", "create_task"
    ]
    on: list[Stage] = Field(min_length=1, max_length=2, description="`warning`, `breach` or both.")
    to: Priority | None = Field(None, description="raise_priority: the level; null: one level up.")
    team_id: Id | None = Field(None, description="reassign: back to this team's queue.")
    to_supervisor: bool = Field(False, description="reassign: to the least loaded supervisor.")
    user_ids: list[Id] = Field(default_factory=list, max_length=100, description="notify: these users.")
    to_assignee: bool = Field(False, description="notify: the conversation's assignee.")
    to_supervisors: bool = Field(False, description="notify: every supervisor of the tenant.")
    emails: list[Email] = Field(default_factory=list, max_length=50, description="notify_email: addresses.")
    webhook_url: WebhookUrl | None = Field(None, description="notify_slack: a Slack incoming-webhook URL.")
    title: Annotated[str, StringConstraints(max_length=200)] | None = Field(None, description="create_task.")
    assignee: Literal["assignee", "supervisor"] | None = Field(None, description="create_task: for whom.")

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.type == "reassign" and (self.team_id is None) == (not self.to_supervisor):
            raise ValueError("reassign needs exactly one of team_id and to_supervisor")
        if self.type in ("notify_in_app", "notify_email") and not (
            self.user_ids or self.to_assignee or self.to_supervisors or self.emails
        ):
            raise ValueError(f"{self.type} needs recipients: user_ids, to_assignee, to_supervisors or emails")
        if self.type == "notify_in_app" and self.emails:
            raise ValueError("notify_in_app notifies users; use notify_email for addresses")
        if self.type == "notify_slack" and self.webhook_url is None:
            raise ValueError("notify_slack needs webhook_url")
        return self


assert set(EscalationAction.model_fields["type"].annotation.__args__) == set(ACTIONS)  # type: ignore[union-attr]


class SlaPolicyIn(RequestBody):
    name: Name
    enabled: bool = True
    inbox_id: Id | None = Field(None, description="Conversations of this inbox; null: any inbox.")
    team_id: Id | None = Field(None, description="Conversations routed to this team; null: any team.")
    priority: Priority | None = Field(None, description="Conversations of this priority; null: any.")
    first_response_minutes: Minutes | None = Field(None, description="Business minutes to the first reply.")
    next_response_minutes: Minutes | None = Field(
        None, description="Business minutes to answer each later customer message."
    )
    resolution_minutes: Minutes | None = Field(None, description="Business minutes to resolve.")
    warning_fraction: float = Field(0.8, gt=0, lt=1, description="Warn at this fraction of a target.")
    calendar_id: Id | None = Field(None, description="The business calendar; null: round the clock.")
    escalations: list[EscalationAction] = Field(default_factory=list, max_length=20)


class SlaPolicyOut(ResponseBody):
    id: int
    name: str
    enabled: bool
    inbox_id: int | None
    team_id: int | None
    priority: str | None
    first_response_minutes: int | None
    next_response_minutes: int | None
    resolution_minutes: int | None
    warning_fraction: float
    calendar_id: int | None
    escalations: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


class SlaPolicyList(ResponseBody):
    data: list[SlaPolicyOut]


class SlaClockOut(ResponseBody):
    id: int
    kind: str = Field(description="`first_response`, `next_response` or `resolution`.")
    state: str = Field(description="`running`, `paused`, `met` or `breached`.")
    policy_id: int
    target_minutes: int
    started_at: datetime
    paused_at: datetime | None
    paused_seconds: float = Field(description="Business time spent paused (waiting on the customer).")
    warn_at: datetime
    due_at: datetime
    warned_at: datetime | None
    breached_at: datetime | None
    stopped_at: datetime | None
    remaining_seconds: float | None = Field(
        description="Business time left (negative once overdue); null once stopped."
    )


class ConversationSla(ResponseBody):
    conversation_id: int
    next_due_at: datetime | None = Field(description="The earliest due time of the running clocks.")
    clocks: list[SlaClockOut]


# --- helpers --------------------------------------------------------------------------------------


def _policy_out(call: ApiRequest, row: SlaPolicy) -> SlaPolicyOut:
    """The policy; a Slack webhook URL is a credential, shown whole only to those who manage routing."""
    out = SlaPolicyOut.model_validate(row)
    if not allows(call.principal.role, Permission.MANAGE_ROUTING):
        out.escalations = [
            {**a, "webhook_url": "(hidden)"} if "webhook_url" in a else a for a in out.escalations
        ]
    return out


def _calendar_out(row: BusinessCalendarRecord) -> CalendarOut:
    return CalendarOut.model_validate(row)


async def _calendar(call: ApiRequest, calendar_id: int) -> BusinessCalendarRecord:
    row = (
        await call.session.execute(
            select(BusinessCalendarRecord).where(
                BusinessCalendarRecord.id == calendar_id, BusinessCalendarRecord.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("calendar")
    return row


async def _policy(call: ApiRequest, policy_id: int) -> SlaPolicy:
    row = (
        await call.session.execute(
            select(SlaPolicy).where(SlaPolicy.id == policy_id, SlaPolicy.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("SLA policy")
    return row


async def _owned(call: ApiRequest, model: Any, ids: list[int], code: str, what: str) -> None:
    """422 `code` unless every id names a `model` row of this tenant."""
    wanted = sorted(set(ids))
    if not wanted:
        return
    found = set(
        (
            await call.session.scalars(
                select(model.id).where(model.id.in_(wanted), model.tenant_id == call.tenant_id)
            )
        ).all()
    )
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ApiError(422, code, f"no {what} {missing[0]} in this tenant.")


def _calendar_values(body: CalendarIn) -> dict[str, Any]:
    return {
        "name": body.name,
        "time_zone": body.time_zone,
        "hours": {day: [list(pair) for pair in pairs] for day, pairs in body.hours.items()},
        "holiday_country": body.holiday_country,
        "holiday_subdivision": body.holiday_subdivision,
        "custom_holidays": sorted({d.isoformat() for d in body.custom_holidays}),
    }


async def _policy_values(call: ApiRequest, body: SlaPolicyIn) -> dict[str, Any]:
    await _owned(call, Inbox, [body.inbox_id] if body.inbox_id else [], "invalid_inbox", "inbox")
    teams = [a.team_id for a in body.escalations if a.team_id is not None]
    await _owned(call, Team, [*teams, *([body.team_id] if body.team_id else [])], "invalid_team", "team")
    await _owned(
        call,
        BusinessCalendarRecord,
        [body.calendar_id] if body.calendar_id else [],
        "invalid_calendar",
        "calendar",
    )
    await _owned(call, User, [u for a in body.escalations for u in a.user_ids], "invalid_user", "user")
    values = body.model_dump(exclude={"escalations"})
    values["escalations"] = [
        a.model_dump(mode="json", exclude_defaults=True) | {"on": a.on} for a in body.escalations
    ]
    return values


# --- calendars ------------------------------------------------------------------------------------


@routes.get("/sla/calendars", allow=Permission.READ_CONVERSATIONS)
async def list_calendars(call: ApiRequest) -> CalendarList:
    """List business-hours calendars."""
    rows = (
        await call.session.scalars(
            select(BusinessCalendarRecord)
            .where(BusinessCalendarRecord.tenant_id == call.tenant_id)
            .order_by(BusinessCalendarRecord.id)
        )
    ).all()
    return CalendarList(data=[_calendar_out(r) for r in rows])


@routes.post("/sla/calendars", allow=Permission.MANAGE_ROUTING, errors=[409])
async def create_calendar(call: ApiRequest, *, body: CalendarIn) -> CalendarOut:
    """Create a business-hours calendar: weekly hours in a time zone, public and custom holidays.

    Unknown time zones, countries or subdivisions, and calendars without any hours, answer 422;
    names are unique in a tenant (409).
    """
    row = BusinessCalendarRecord(tenant_id=call.tenant_id, **_calendar_values(body))
    call.session.add(row)
    await call.session.flush()
    return _calendar_out(row)


@routes.get("/sla/calendars/{calendar_id}", allow=Permission.READ_CONVERSATIONS)
async def get_calendar(call: ApiRequest, *, calendar_id: int) -> CalendarOut:
    """Get a business-hours calendar."""
    return _calendar_out(await _calendar(call, calendar_id))


@routes.put("/sla/calendars/{calendar_id}", allow=Permission.MANAGE_ROUTING, errors=[409])
async def put_calendar(call: ApiRequest, *, calendar_id: int, body: CalendarIn) -> CalendarOut:
    """Replace a calendar; clocks already running keep the due times computed so far until they resume."""
    row = await _calendar(call, calendar_id)
    for key, value in _calendar_values(body).items():
        setattr(row, key, value)
    row.updated_at = utcnow()
    await call.session.flush()
    return _calendar_out(row)


@routes.delete("/sla/calendars/{calendar_id}", allow=Permission.MANAGE_ROUTING, errors=[409])
async def delete_calendar(call: ApiRequest, *, calendar_id: int) -> None:
    """Delete a calendar no SLA policy uses (409 otherwise)."""
    row = await _calendar(call, calendar_id)
    used = (
        await call.session.execute(select(SlaPolicy.id).where(SlaPolicy.calendar_id == calendar_id).limit(1))
    ).scalar()
    if used is not None:
        raise ApiError(409, "conflict", f"SLA policy {used} counts on this calendar; change it first.")
    await call.session.delete(row)


# --- policies -------------------------------------------------------------------------------------


@routes.get("/sla/policies", allow=Permission.READ_CONVERSATIONS)
async def list_sla_policies(call: ApiRequest) -> SlaPolicyList:
    """List SLA policies."""
    rows = (
        await call.session.scalars(
            select(SlaPolicy).where(SlaPolicy.tenant_id == call.tenant_id).order_by(SlaPolicy.id)
        )
    ).all()
    return SlaPolicyList(data=[_policy_out(call, r) for r in rows])


@routes.post("/sla/policies", allow=Permission.MANAGE_ROUTING, errors=[422])
async def create_sla_policy(call: ApiRequest, *, body: SlaPolicyIn) -> SlaPolicyOut:
    """Create an SLA policy: targets per inbox, team and priority, a calendar, escalations.

    A conversation gets the most specific enabled policy matching it (inbox, team, priority each
    count; ties go to the oldest). Targets are business minutes on the calendar.
    """
    row = SlaPolicy(tenant_id=call.tenant_id, **await _policy_values(call, body))
    call.session.add(row)
    await call.session.flush()
    return _policy_out(call, row)


@routes.get("/sla/policies/{policy_id}", allow=Permission.READ_CONVERSATIONS)
async def get_sla_policy(call: ApiRequest, *, policy_id: int) -> SlaPolicyOut:
    """Get an SLA policy."""
    return _policy_out(call, await _policy(call, policy_id))


@routes.put("/sla/policies/{policy_id}", allow=Permission.MANAGE_ROUTING, errors=[422])
async def put_sla_policy(call: ApiRequest, *, policy_id: int, body: SlaPolicyIn) -> SlaPolicyOut:
    """Replace an SLA policy; it applies to clocks started from now on (running ones keep their targets)."""
    row = await _policy(call, policy_id)
    for key, value in (await _policy_values(call, body)).items():
        setattr(row, key, value)
    row.updated_at = utcnow()
    await call.session.flush()
    return _policy_out(call, row)


@routes.delete("/sla/policies/{policy_id}", allow=Permission.MANAGE_ROUTING)
async def delete_sla_policy(call: ApiRequest, *, policy_id: int) -> None:
    """Delete an SLA policy and the clocks it started."""
    await call.session.delete(await _policy(call, policy_id))


# --- a conversation's clocks ----------------------------------------------------------------------


@routes.get("/conversations/{conversation_id}/sla", allow=Permission.READ_CONVERSATIONS)
async def get_conversation_sla(call: ApiRequest, *, conversation_id: int) -> ConversationSla:
    """The conversation's SLA clocks: state, due and warning times, business time remaining."""
    found = (
        await call.session.execute(
            select(Conversation.id).where(
                Conversation.id == conversation_id, Conversation.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if found is None:
        raise NotFound("conversation")
    clocks = await conversation_clocks(call.session, call.tenant_id, conversation_id, utcnow())
    running = [c.due_at for c in clocks if c.stopped_at is None and c.paused_at is None]
    return ConversationSla(
        conversation_id=conversation_id,
        next_due_at=min(running, default=None),
        clocks=[SlaClockOut.model_validate(c) for c in clocks],
    )
