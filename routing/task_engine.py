"""The task engine: rules turn events into tasks, and tasks find their assignee.

Event → rule → task → assignment. A rule (`crm_core.tasks.TaskRule`) follows an outbox topic (or
`deal.idle`, which no event marks: `TaskEngine.sweep_idle_deals` looks for it) and, when its
conditions hold on the payload, creates the task its template describes for the person its
assignee rule names. Matching is separate from acting: `matches(rule, payload)` is pure.

Assignee rules (`rule.assignee["rule"]`):

- `deal_owner`, `conversation_assignee`, `contact_owner` (the contact's `owner_id` attribute, if
  it names an active user of the tenant): the person already responsible for the subject;
- `team`: a member of `team_id` (or the event's team), by `strategy` `round_robin` (whoever was
  given a task of this team longest ago) or `least_loaded` (fewest open tasks); online first;
- `supervisor`: the team lead, as SLA escalations pick one (`escalation.pick_supervisor`);
- `user`: a fixed `user_id`.

When the rule names nobody (a deal without owner), `fallback` (another assignee rule) is tried;
failing that the task stays with the team only, or unassigned.

Each task is created once per rule and subject: the dedupe key is `rule:<id>:<subject>`, and
for idle deals it includes the deal's last update, so a deal that goes idle again after being
worked on gets a new task, while the next sweeps over the same idle spell create nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from jinja2 import ChainableUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import Contact, Deal, PipelineStage
from crm_core.tasks import (
    ACTIVE_STATUSES,
    DEFAULT_REMINDER_LEAD,
    PRIORITIES,
    Task,
    TaskRule,
    TaskType,
    create_task,
    remind_time,
)
from crm_core.ticket_models import Ticket
from inbox.models import Conversation
from parley.db import Database, utcnow
from parley.models import Presence, User
from parley.outbox import Event
from parley.sweeping import sweep_forever
from routing.assigner import lock_tenant
from routing.calendars import BusinessCalendar, add_business_time, calendar_from_row
from routing.escalation import pick_supervisor
from routing.models import BusinessCalendarRecord, Team, TeamMember
from routing.presence import ANSWERING_ROLES

logger = logging.getLogger(__name__)

IDLE_DEAL_TRIGGER = "deal.idle"
# The outbox topics a rule may follow (a rule on any other would never fire).
TRIGGER_TOPICS = (
    "ticket.status_changed",
    "ticket.created",
    "deal.opened",
    "deal.stage_changed",
    "deal.updated",
    "conversation.opened",
    "conversation.reopened",
    "conversation.updated",
    "conversation.assigned",
    "sla.warning",
    "sla.breached",
    "contact.lifecycle_changed",
    "contact.merged",
)
TRIGGERS = (*TRIGGER_TOPICS, IDLE_DEAL_TRIGGER)
ASSIGNEE_RULES = (
    "deal_owner",
    "conversation_assignee",
    "contact_owner",
    "team",
    "supervisor",
    "user",
    "none",
)
STRATEGIES = ("round_robin", "least_loaded")
OPERATORS: Mapping[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a is not None and a > b,
    ">=": lambda a, b: a is not None and a >= b,
    "<": lambda a, b: a is not None and a < b,
    "<=": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: isinstance(b, list) and a in b,
    "exists": lambda a, b: (a is not None) == bool(b),
}

_SANDBOX = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)


@functools.lru_cache(maxsize=512)
def _compiled(source: str) -> Any:
    return _SANDBOX.from_string(source)


def render(source: str, context: Mapping[str, Any], *, limit: int, one_line: bool = False) -> str:
    """A user-written template rendered in the sandbox; the source itself if it cannot be."""
    try:
        text = str(_compiled(source).render(**context))
    except (TemplateError, TypeError, ValueError, ArithmeticError):
        text = source
    return (" ".join(text.split()) if one_line else text)[:limit]


def lookup(payload: Mapping[str, Any], path: str) -> Any:
    """A payload value by dotted path (`changes.status.new`); None when absent."""
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def matches(rule: TaskRule, payload: Mapping[str, Any]) -> bool:
    """True if every condition of the rule holds on the payload (no side effects)."""
    for condition in rule.conditions:
        if not isinstance(condition, Mapping):
            return False
        op = OPERATORS.get(str(condition.get("op", "==")))
        if op is None:
            return False
        try:
            if not op(lookup(payload, str(condition.get("field", ""))), condition.get("value")):
                return False
        except TypeError:  # comparing a number with a string: the condition does not hold
            return False
    return True


@dataclass(frozen=True, slots=True)
class Subject:
    """What a task is about, with the people and team already attached to it."""

    kind: str
    id: int
    contact_id: int | None = None
    conversation_id: int | None = None
    deal_id: int | None = None
    ticket_id: int | None = None
    team_id: int | None = None
    deal_owner_id: int | None = None
    conversation_assignee_id: int | None = None
    context: dict[str, Any] = field(default_factory=dict)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def subject_of(session: AsyncSession, tenant_id: int, payload: Mapping[str, Any]) -> Subject | None:
    """The subject an event is about (ticket, deal, conversation, then contact), with its context."""
    ticket_id = _int(payload.get("ticket_id"))
    deal_id = _int(payload.get("deal_id"))
    conversation_id = _int(payload.get("conversation_id"))
    contact_id = _int(payload.get("contact_id"))
    team_id = _int(payload.get("team_id"))
    deal_owner = conversation_assignee = None
    context: dict[str, Any] = {}
    if ticket_id is not None:
        ticket = (
            await session.execute(select(Ticket).where(Ticket.id == ticket_id, Ticket.tenant_id == tenant_id))
        ).scalar_one_or_none()
        if ticket is None:  # deleted meanwhile, or not this tenant's
            ticket_id = None
        else:
            contact_id = contact_id or ticket.contact_id
            team_id = team_id or ticket.team_id
            context["ticket"] = {"id": ticket.id, "number": ticket.number, "subject": ticket.subject}
    if deal_id is not None:
        deal = (
            await session.execute(select(Deal).where(Deal.id == deal_id, Deal.tenant_id == tenant_id))
        ).scalar_one_or_none()
        if deal is None:
            deal_id = None
        else:
            deal_owner, contact_id = deal.owner_id, contact_id or deal.contact_id
            context["deal"] = {"id": deal.id, "title": deal.title, "amount_minor": deal.amount_minor}
    if conversation_id is not None:
        conversation = (
            await session.execute(
                select(Conversation).where(
                    Conversation.id == conversation_id, Conversation.tenant_id == tenant_id
                )
            )
        ).scalar_one_or_none()
        if conversation is None:
            conversation_id = None
        else:
            conversation_assignee = conversation.assignee_id
            contact_id = contact_id or conversation.contact_id
            context["conversation"] = {"id": conversation.id, "status": conversation.status}
    if contact_id is not None:
        contact = (
            await session.execute(
                select(Contact).where(Contact.id == contact_id, Contact.tenant_id == tenant_id)
            )
        ).scalar_one_or_none()
        if contact is None:
            contact_id = None
        else:
            context["contact"] = {
                "id": contact.id,
                "name": contact.name or contact.phone or contact.email or f"contact {contact.id}",
                "email": contact.email,
                "phone": contact.phone,
                "owner_id": contact.attributes.get("owner_id"),
            }
    for kind, value in (
        ("ticket", ticket_id),
        ("deal", deal_id),
        ("conversation", conversation_id),
        ("contact", contact_id),
    ):
        if value is not None:
            return Subject(
                kind,
                value,
                contact_id=contact_id,
                conversation_id=conversation_id,
                deal_id=deal_id,
                ticket_id=ticket_id,
                team_id=team_id,
                deal_owner_id=deal_owner,
                conversation_assignee_id=conversation_assignee,
                context=context,
            )
    return None


async def _active_user(session: AsyncSession, tenant_id: int, user_id: Any) -> int | None:
    user_id = _int(user_id)
    if user_id is None:
        return None
    found = (
        await session.execute(
            select(User.id).where(User.id == user_id, User.tenant_id == tenant_id, User.active.is_(True))
        )
    ).scalar_one_or_none()
    return found


async def pick_team_member(session: AsyncSession, tenant_id: int, team_id: int, strategy: str) -> int | None:
    """A member of the team for a new task: online first, then by `strategy` (see the module doc).

    The caller holds the tenant's routing lock, so two tasks created at once see each other's pick.
    """
    open_tasks = (
        select(func.count())
        .where(Task.assignee_id == User.id, Task.status.in_(ACTIVE_STATUSES))
        .correlate(User)
        .scalar_subquery()
    )
    last_given = (
        select(func.max(Task.id))
        .where(Task.assignee_id == User.id, Task.team_id == team_id)
        .correlate(User)
        .scalar_subquery()
    )
    rows = (
        await session.execute(
            select(User.id, User.presence, open_tasks, last_given)
            .join(TeamMember, TeamMember.user_id == User.id)
            .where(
                TeamMember.team_id == team_id,
                User.tenant_id == tenant_id,
                User.active.is_(True),
                User.role.in_(ANSWERING_ROLES),
            )
        )
    ).all()
    if not rows:
        return None
    if strategy == "least_loaded":
        best = min(rows, key=lambda r: (r[1] != Presence.ONLINE, r[2], r[0]))
    else:  # round robin: the member given one of this team's tasks longest ago (never: first)
        best = min(rows, key=lambda r: (r[1] != Presence.ONLINE, r[3] or 0, r[0]))
    return int(best[0])


async def resolve_assignee(
    session: AsyncSession, tenant_id: int, spec: Mapping[str, Any], subject: Subject | None
) -> tuple[int | None, int | None]:
    """(assignee, team) for a task by the assignee rule `spec` (see the module doc)."""
    kind = str(spec.get("rule", "none"))
    team_id = _int(spec.get("team_id")) or (subject.team_id if subject else None)
    if team_id is not None:
        team_id = await _team_in_tenant(session, tenant_id, team_id)
    assignee: int | None = None
    if kind == "deal_owner" and subject is not None:
        assignee = await _active_user(session, tenant_id, subject.deal_owner_id)
    elif kind == "conversation_assignee" and subject is not None:
        assignee = await _active_user(session, tenant_id, subject.conversation_assignee_id)
    elif kind == "contact_owner" and subject is not None:
        assignee = await _active_user(session, tenant_id, subject.context.get("contact", {}).get("owner_id"))
    elif kind == "team" and team_id is not None:
        await lock_tenant(session, tenant_id)
        assignee = await pick_team_member(
            session, tenant_id, team_id, str(spec.get("strategy", "round_robin"))
        )
    elif kind == "supervisor":
        assignee = await pick_supervisor(session, tenant_id, team_id)
    elif kind == "user":
        assignee = await _active_user(session, tenant_id, spec.get("user_id"))
    fallback = spec.get("fallback")
    if assignee is None and isinstance(fallback, Mapping) and "fallback" not in fallback:
        assignee, fallback_team = await resolve_assignee(session, tenant_id, fallback, subject)
        team_id = team_id or fallback_team
    return assignee, team_id


async def _team_in_tenant(session: AsyncSession, tenant_id: int, team_id: int) -> int | None:
    found = (
        await session.execute(select(Team.id).where(Team.id == team_id, Team.tenant_id == tenant_id))
    ).scalar_one_or_none()
    return found


async def due_time(
    session: AsyncSession, tenant_id: int, template: Mapping[str, Any], start: datetime
) -> datetime | None:
    """When a task made from `template` is due: `due_in_hours` after `start`, in business hours if asked."""
    hours = template.get("due_in_hours")
    if not isinstance(hours, int | float) or isinstance(hours, bool):
        return None
    duration = timedelta(hours=float(hours))
    if not template.get("business_hours"):
        return start + duration
    calendar = BusinessCalendar.always()
    calendar_id = _int(template.get("calendar_id"))
    if calendar_id is not None:
        row = (
            await session.execute(
                select(BusinessCalendarRecord).where(
                    BusinessCalendarRecord.id == calendar_id, BusinessCalendarRecord.tenant_id == tenant_id
                )
            )
        ).scalar_one_or_none()
        calendar = calendar_from_row(row)
    return add_business_time(calendar, start, duration)


def reminder_lead(template: Mapping[str, Any]) -> timedelta | None:
    """How long before the due date to remind (`remind_before_minutes`; null: no reminder)."""
    if "remind_before_minutes" not in template:
        return DEFAULT_REMINDER_LEAD
    minutes = template.get("remind_before_minutes")
    if minutes is None:
        return None
    return timedelta(minutes=float(minutes))


async def apply_rule(
    session: AsyncSession,
    rule: TaskRule,
    subject: Subject,
    payload: Mapping[str, Any],
    *,
    now: datetime,
    dedupe_key: str,
) -> Task | None:
    """Create the rule's task about `subject` (None: it already exists)."""
    template = rule.template
    context = {**payload, **subject.context, "rule": {"id": rule.id, "name": rule.name}}
    title = (
        render(str(template.get("title") or rule.name), context, limit=200, one_line=True) or rule.name[:200]
    )
    description = render(str(template.get("description") or ""), context, limit=10_000)
    assignee, team_id = await resolve_assignee(session, rule.tenant_id, rule.assignee, subject)
    due = await due_time(session, rule.tenant_id, template, now)
    priority = str(template.get("priority", "none"))
    action = template.get("suggested_action")
    return await create_task(
        session,
        rule.tenant_id,
        {
            "type": str(template.get("type", TaskType.FOLLOW_UP)),
            "title": title,
            "description": description,
            "priority": priority if priority in PRIORITIES else "none",
            "due_at": due,
            "remind_at": remind_time(due, reminder_lead(template)),
            "assignee_id": assignee,
            "team_id": team_id,
            "rule_id": rule.id,
            "source": "rule",
            "contact_id": subject.contact_id,
            "conversation_id": subject.conversation_id,
            "deal_id": subject.deal_id,
            "ticket_id": subject.ticket_id,
            "suggested_action": dict(action) if isinstance(action, Mapping) else {},
        },
        dedupe_key=dedupe_key,
    )


class TaskEngine:
    """The outbox handler that applies task rules to events, and the idle-deal sweep."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow, batch: int = 500) -> None:
        self.db = db
        self.now = clock
        self.batch = batch

    async def on_event(self, event: Event) -> None:
        """Any trigger topic: create the tasks of the tenant's enabled rules that match, once each."""
        if event.tenant_id is None:
            return
        async with self.db.transaction() as session:
            rules = (
                await session.scalars(
                    select(TaskRule)
                    .where(
                        TaskRule.tenant_id == event.tenant_id,
                        TaskRule.enabled.is_(True),
                        TaskRule.trigger == event.topic,
                    )
                    .order_by(TaskRule.id)
                )
            ).all()
            wanted = [rule for rule in rules if matches(rule, event.payload)]
            if not wanted:
                return
            subject = await subject_of(session, event.tenant_id, event.payload)
            if subject is None:
                logger.info("task rules matched %s %s but it names no subject", event.topic, event.id)
                return
            for rule in wanted:
                await apply_rule(
                    session,
                    rule,
                    subject,
                    event.payload,
                    now=self.now(),
                    dedupe_key=f"rule:{rule.id}:{subject.kind}:{subject.id}",
                )

    async def sweep_idle_deals(self) -> int:
        """Create the tasks of `deal.idle` rules for open deals not updated for `idle_days`; how many."""
        created = 0
        async with self.db.sessionmaker() as session:
            rules = (
                await session.scalars(
                    select(TaskRule)
                    .where(TaskRule.enabled.is_(True), TaskRule.trigger == IDLE_DEAL_TRIGGER)
                    .order_by(TaskRule.id)
                )
            ).all()
        for rule in rules:
            if not rule.idle_days or rule.idle_days < 1:
                continue
            after = 0
            while True:
                now = self.now()
                async with self.db.transaction() as session:
                    deals = (
                        await session.execute(
                            select(Deal.id, Deal.updated_at)
                            .join(PipelineStage, PipelineStage.id == Deal.stage_id)
                            .where(
                                Deal.tenant_id == rule.tenant_id,
                                PipelineStage.outcome == "open",
                                Deal.updated_at <= now - timedelta(days=rule.idle_days),
                                Deal.id > after,
                            )
                            .order_by(Deal.id)
                            .limit(self.batch)
                        )
                    ).all()
                    for deal_id, updated_at in deals:
                        payload = {"deal_id": deal_id, "idle_days": rule.idle_days}
                        subject = await subject_of(session, rule.tenant_id, payload)
                        if subject is None:
                            continue
                        subject = replace(subject, context={**subject.context, "idle_days": rule.idle_days})
                        key = f"rule:{rule.id}:deal:{deal_id}:idle:{int(updated_at.timestamp())}"
                        if await apply_rule(session, rule, subject, payload, now=now, dedupe_key=key):
                            created += 1
                if len(deals) < self.batch:
                    break
                after = deals[-1][0]
        return created

    async def run_sweeps(self, *, interval: float = 300.0, notify: Callable[[], None] | None = None) -> None:
        """Sweep idle deals every `interval` seconds until cancelled."""
        await sweep_forever(self.sweep_idle_deals, interval=interval, what="idle-deal sweep", notify=notify)


def task_rule_subscribers(engine: TaskEngine) -> dict[str, list[Callable[[Event], Any]]]:
    """Every topic a task rule may follow."""
    return {topic: [engine.on_event] for topic in TRIGGER_TOPICS}


def validate_rule(trigger: str, conditions: Sequence[Any], assignee: Mapping[str, Any]) -> dict[str, str]:
    """Problems with a rule's trigger, conditions and assignee, by field (empty: fine)."""
    errors: dict[str, str] = {}
    if trigger not in TRIGGERS:
        errors["trigger"] = f"one of {', '.join(TRIGGERS)}"
    for i, condition in enumerate(conditions):
        if not isinstance(condition, Mapping) or not condition.get("field"):
            errors[f"conditions.{i}"] = "needs a field"
        elif str(condition.get("op", "==")) not in OPERATORS:
            errors[f"conditions.{i}.op"] = f"one of {', '.join(OPERATORS)}"
    if str(assignee.get("rule", "none")) not in ASSIGNEE_RULES:
        errors["assignee.rule"] = f"one of {', '.join(ASSIGNEE_RULES)}"
    if str(assignee.get("strategy", "round_robin")) not in STRATEGIES:
        errors["assignee.strategy"] = f"one of {', '.join(STRATEGIES)}"
    return errors
