"""Escalations: what an SLA policy does when one of its clocks warns or breaches.

A policy's `escalations` is a list of actions, each with `on` (`warning`, `breach` or both) and a
`type`:

- `raise_priority`: one level up, or `to` a level (never down);
- `reassign`: to `team_id` (back to that team's queue) or, with `to_supervisor`, to the least
  loaded supervisor (online first, the conversation's team first), through the assigner;
- `notify_in_app`, `notify_email`: to `user_ids`, the conversation's assignee (`to_assignee`),
  the tenant's supervisors (`to_supervisors`) and, for email, plain `emails` too;
- `notify_slack`: a message to a Slack incoming-webhook `webhook_url`;
- `create_task`: a real task (`crm_core.tasks`, type `escalation`) about the conversation, titled
  `title`, for the assignee or a supervisor (`assignee`), due `due_in_minutes` later (default 60).

In-app notices are an `escalation.notify` outbox event with the recipients (the realtime hub or a
notifications table consumes it).

Each action runs once per clock and stage: `sla_escalation_runs` records it. Database actions
record themselves in the transaction that performs them (exactly once); email and Slack are
recorded right after the provider accepted them (at least once: a crash in between repeats one
notice). A transient failure (SMTP unreachable, Slack 5xx/429) retries the event later, skipping the
actions already done; a permanent refusal (Slack 4xx) is recorded as `failed`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import aiohttp
from sqlalchemy import ColumnElement, Table, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.tasks import DEFAULT_REMINDER_LEAD, TaskType, create_task, remind_time
from inbox.models import Conversation, ConversationStatus, PrioritySource
from parley.db import Database, utcnow
from parley.mailer import Mailer, MailNotSent
from parley.models import Presence, Role, User
from parley.outbox import Event, RetryLater, emit
from routing import assigner
from routing.models import ConversationRouting, SlaClock, SlaEscalationRun, SlaPolicy, Team, TeamMember
from routing.sla import PRIORITIES, ROUTING_PRIORITY, conversation_priority

logger = logging.getLogger(__name__)

NOTIFY_TOPIC = "escalation.notify"
UPDATED_TOPIC = "conversation.updated"

STAGES = ("warning", "breach")
ACTIONS = (
    "raise_priority",
    "reassign",
    "notify_in_app",
    "notify_email",
    "notify_slack",
    "create_task",
)
_EXTERNAL = ("notify_email", "notify_slack")


@dataclass(frozen=True, slots=True)
class Incident:
    """The clock an escalation is about, with what the actions need to know."""

    tenant_id: int
    clock_id: int
    conversation_id: int
    stage: str
    kind: str
    due_at: datetime
    policy_id: int
    policy_name: str

    @property
    def headline(self) -> str:
        what = "is about to miss" if self.stage == "warning" else "missed"
        return (
            f"Conversation {self.conversation_id} {what} its {self.kind.replace('_', ' ')} target "
            f"(due {self.due_at.strftime('%Y-%m-%d %H:%M UTC')}, policy {self.policy_name!r})."
        )


class Escalator:
    """The outbox handler of `sla.warning` and `sla.breached`: runs the policy's escalation actions."""

    def __init__(
        self,
        db: Database,
        mailer: Mailer,
        *,
        public_url: Callable[[], str | None] = lambda: None,
        http_timeout: float = 10.0,
    ) -> None:
        self.db = db
        self.mailer = mailer
        self.public_url = public_url
        self.http_timeout = http_timeout

    async def on_sla_event(self, event: Event) -> None:
        """`sla.warning` / `sla.breached`: run every action configured for the stage, once each."""
        if event.tenant_id is None:
            return
        stage = str(event.payload.get("stage"))
        async with self.db.sessionmaker() as session:
            found = (
                await session.execute(
                    select(SlaClock, SlaPolicy)
                    .join(SlaPolicy, SlaPolicy.id == SlaClock.policy_id)
                    .where(
                        SlaClock.id == int(event.payload["clock_id"]),
                        SlaClock.tenant_id == event.tenant_id,
                    )
                )
            ).one_or_none()
            if found is None:  # the policy or conversation was deleted since
                return
            clock, policy = found
            incident = Incident(
                tenant_id=event.tenant_id,
                clock_id=clock.id,
                conversation_id=clock.conversation_id,
                stage=stage,
                kind=clock.kind,
                due_at=clock.due_at,
                policy_id=policy.id,
                policy_name=policy.name,
            )
            actions = [
                (i, action)
                for i, action in enumerate(policy.escalations)
                if isinstance(action, Mapping) and stage in action.get("on", ())
            ]
            done = set(
                (
                    await session.scalars(
                        select(SlaEscalationRun.action_index).where(
                            SlaEscalationRun.clock_id == clock.id, SlaEscalationRun.stage == stage
                        )
                    )
                ).all()
            )
        retry: list[str] = []
        for index, action in actions:
            if index in done:
                continue
            try:
                await self._perform(incident, index, action)
            except RetryLater as e:
                retry.append(f"{action.get('type')}: {e}")
        if retry:
            raise RetryLater("; ".join(retry))

    async def _perform(self, incident: Incident, index: int, action: Mapping[str, Any]) -> None:
        kind = str(action.get("type"))
        if kind in _EXTERNAL:
            async with self.db.sessionmaker() as session:
                conversation = await session.get(Conversation, incident.conversation_id)
                if conversation is None:
                    return
                if kind == "notify_email":
                    users = await _recipients(session, incident.tenant_id, conversation, action)
                    addresses = [u.email for u in users] + [str(a) for a in action.get("emails", ())]
                else:
                    addresses = []
            outcome, detail = (
                await self._email(incident, addresses)
                if kind == "notify_email"
                else await self._slack(incident, str(action.get("webhook_url", "")))
            )
            async with self.db.transaction() as session:
                await _record(session, incident, index, kind, outcome, detail)
            return
        async with self.db.transaction() as session:
            # Recorded first: a concurrent delivery of the same event waits here, then finds it done.
            if not await _record(session, incident, index, kind, "done", None):
                return
            conversation = (
                await session.execute(
                    select(Conversation)
                    .where(
                        Conversation.id == incident.conversation_id,
                        Conversation.tenant_id == incident.tenant_id,
                    )
                    .with_for_update()
                )
            ).scalar_one_or_none()
            if conversation is None:
                return
            perform = _DATABASE_ACTIONS.get(kind)
            detail = (
                f"unknown action {kind!r}"
                if perform is None
                else await perform(session, incident, conversation, action)
            )
            if detail is not None:
                await _set_outcome(session, incident, index, "failed", detail)

    async def _email(self, incident: Incident, addresses: Sequence[str]) -> tuple[str, str | None]:
        if not addresses:
            return "failed", "no recipients"
        link = self.public_url()
        text = incident.headline
        if link:
            # The agents' UI has no conversation page yet: point at the clocks in the API.
            text += f"\n\nClocks: {link.rstrip('/')}/api/v1/conversations/{incident.conversation_id}/sla"
        subject = f"SLA {incident.stage}: conversation {incident.conversation_id}"
        for address in sorted(set(addresses)):
            try:
                await self.mailer.send(address, subject, text)
            except MailNotSent as e:
                raise RetryLater(str(e)) from e
        return "done", ", ".join(sorted(set(addresses)))

    async def _slack(self, incident: Incident, url: str) -> tuple[str, str | None]:
        if not url.startswith(("https://", "http://")):
            return "failed", "no webhook_url"
        # Slack reads &, < and > as markup in `text`: escape them in anything a person wrote.
        text = incident.headline.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        timeout = aiohttp.ClientTimeout(total=self.http_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(url, json={"text": text}) as response,
            ):
                body = (await response.text())[:200]
                if response.status == 429 or response.status >= 500:
                    raise RetryLater(f"Slack answered {response.status}: {body}")
                if response.status >= 400:
                    return "failed", f"Slack refused the message ({response.status}): {body}"
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RetryLater(f"Slack unreachable: {type(e).__name__}: {e}") from e
        return "done", None


async def _record(
    session: AsyncSession, incident: Incident, index: int, action: str, outcome: str, detail: str | None
) -> bool:
    """Record an action as performed; False if it already was."""
    conn = await session.connection()
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    result = await conn.execute(
        dialect_insert(cast(Table, SlaEscalationRun.__table__))
        .values(
            clock_id=incident.clock_id,
            stage=incident.stage,
            action_index=index,
            tenant_id=incident.tenant_id,
            action=action,
            outcome=outcome,
            detail=detail,
            performed_at=utcnow(),
        )
        .on_conflict_do_nothing()
    )
    return bool(result.rowcount)


async def _set_outcome(
    session: AsyncSession, incident: Incident, index: int, outcome: str, detail: str
) -> None:
    run = await session.get(SlaEscalationRun, (incident.clock_id, incident.stage, index))
    if run is not None:
        run.outcome, run.detail = outcome, detail[:2000]


async def _recipients(
    session: AsyncSession, tenant_id: int, conversation: Conversation, action: Mapping[str, Any]
) -> list[User]:
    """The active users of the tenant an action names: listed ids, the assignee, the supervisors."""
    ids = {int(i) for i in action.get("user_ids", ())}
    if action.get("to_assignee") and conversation.assignee_id is not None:
        ids.add(conversation.assignee_id)
    conditions: list[ColumnElement[bool]] = [User.id.in_(sorted(ids))] if ids else []
    if action.get("to_supervisors"):
        conditions.append(User.role == Role.SUPERVISOR)
    if not conditions:
        return []
    return list(
        (
            await session.scalars(
                select(User)
                .where(User.tenant_id == tenant_id, User.active.is_(True), or_(*conditions))
                .order_by(User.id)
            )
        ).all()
    )


def _changed_by(incident: Incident) -> dict[str, Any]:
    return {"type": "sla", "clock_id": incident.clock_id, "stage": incident.stage}


async def _raise_priority(
    session: AsyncSession, incident: Incident, conversation: Conversation, action: Mapping[str, Any]
) -> str | None:
    current = await conversation_priority(session, conversation.id)
    wanted = action.get("to")
    if wanted is None:
        new = PRIORITIES[min(PRIORITIES.index(current) + 1, len(PRIORITIES) - 1)]
    elif wanted in PRIORITIES:
        new = str(wanted)
    else:
        return f"unknown priority {wanted!r}"
    if PRIORITIES.index(new) <= PRIORITIES.index(current):
        return None  # already there or higher: nothing to do, and nothing wrong either
    if hasattr(Conversation, "priority"):  # branch `actions`: conversations carry their own level
        setattr(conversation, "priority", new)  # noqa: B010 - the column is not on this branch yet
        # An escalated priority stands over the computed one until resolved (`routing.prioritizer`).
        conversation.priority_source = PrioritySource.ESCALATION
    await assigner.lock_tenant(session, incident.tenant_id)
    routing = await session.get(ConversationRouting, conversation.id, with_for_update=True)
    if routing is None:
        await assigner.enqueue(session, incident.tenant_id, conversation.id, utcnow())
        routing = await session.get(ConversationRouting, conversation.id)
    if routing is not None:
        routing.priority = max(routing.priority, ROUTING_PRIORITY[new])
    await session.flush()
    await emit(
        session,
        incident.tenant_id,
        (
            UPDATED_TOPIC,
            {
                "conversation_id": conversation.id,
                "inbox_id": conversation.inbox_id,
                "contact_id": conversation.contact_id,
                "changes": {"priority": {"old": current, "new": new}},
                "changed_by": _changed_by(incident),
            },
        ),
    )
    return None


async def pick_supervisor(session: AsyncSession, tenant_id: int, team_id: int | None) -> int | None:
    """The supervisor to escalate to: online first, of the conversation's team first, least loaded."""
    load = (
        select(func.count())
        .where(
            Conversation.assignee_id == User.id,
            Conversation.status != ConversationStatus.RESOLVED,
        )
        .correlate(User)
        .scalar_subquery()
    )
    in_team = (
        select(func.count())
        .where(TeamMember.user_id == User.id, TeamMember.team_id == team_id)
        .correlate(User)
        .scalar_subquery()
    )
    rows = (
        await session.execute(
            select(User.id, User.presence, in_team, load).where(
                User.tenant_id == tenant_id, User.role == Role.SUPERVISOR, User.active.is_(True)
            )
        )
    ).all()
    if not rows:
        return None
    best = min(rows, key=lambda r: (r[1] != Presence.ONLINE, r[2] == 0, r[3], r[0]))
    return int(best[0])


async def _reassign(
    session: AsyncSession, incident: Incident, conversation: Conversation, action: Mapping[str, Any]
) -> str | None:
    if conversation.status == ConversationStatus.RESOLVED:
        return "the conversation is resolved"
    tenant_id = incident.tenant_id
    await assigner.lock_tenant(session, tenant_id)
    old = conversation.assignee_id
    routing = await session.get(ConversationRouting, conversation.id, with_for_update=True)
    events: list[tuple[str, dict[str, Any]]] = []
    payload = {
        "conversation_id": conversation.id,
        "inbox_id": conversation.inbox_id,
        "contact_id": conversation.contact_id,
    }
    if action.get("to_supervisor"):
        supervisor = await pick_supervisor(session, tenant_id, routing.team_id if routing else None)
        if supervisor is None:
            return "no active supervisor in this tenant"
        if supervisor == old:
            return None
        if routing is None:
            await assigner.enqueue(session, tenant_id, conversation.id, conversation.created_at)
        conversation.assignee_id = supervisor
        await session.flush()
        await assigner.assign(session, tenant_id, conversation.id, supervisor, reason="escalation")
        events.append(
            (
                assigner.ASSIGNED_TOPIC,
                {**payload, "assignee_id": supervisor, "strategy": "escalation", "waited_seconds": None},
            )
        )
        changes: dict[str, Any] = {"assignee_id": {"old": old, "new": supervisor}}
    else:
        team_id = action.get("team_id")
        team = (
            await session.execute(select(Team.id).where(Team.id == team_id, Team.tenant_id == tenant_id))
        ).scalar()
        if team is None:
            return f"no team {team_id} in this tenant"
        if routing is None:
            await assigner.enqueue(session, tenant_id, conversation.id, conversation.created_at)
            routing = await session.get(ConversationRouting, conversation.id)
        assert routing is not None
        old_team = routing.team_id
        routing.team_id = team
        conversation.assignee_id = None
        await session.flush()
        await assigner.enqueue(session, tenant_id, conversation.id, utcnow())  # keeps the team just set
        await assigner.serve_queue(session, tenant_id)
        changes = {"assignee_id": {"old": old, "new": None}, "team_id": {"old": old_team, "new": team}}
    events.insert(0, (UPDATED_TOPIC, {**payload, "changes": changes, "changed_by": _changed_by(incident)}))
    await emit(session, tenant_id, *events)
    return None


async def _notify_in_app(
    session: AsyncSession, incident: Incident, conversation: Conversation, action: Mapping[str, Any]
) -> str | None:
    users = await _recipients(session, incident.tenant_id, conversation, action)
    if not users:
        return "no recipients"
    await emit(
        session,
        incident.tenant_id,
        (
            NOTIFY_TOPIC,
            {
                "conversation_id": conversation.id,
                "clock_id": incident.clock_id,
                "stage": incident.stage,
                "kind": incident.kind,
                "due_at": incident.due_at.isoformat(),
                "recipient_ids": [u.id for u in users],
                "text": incident.headline,
            },
        ),
    )
    return None


async def _create_task(
    session: AsyncSession, incident: Incident, conversation: Conversation, action: Mapping[str, Any]
) -> str | None:
    routing = await session.get(ConversationRouting, conversation.id)
    team_id = routing.team_id if routing else None
    assignee: int | None = None
    if action.get("assignee") == "supervisor":
        assignee = await pick_supervisor(session, incident.tenant_id, team_id)
    elif action.get("assignee", "assignee") == "assignee":
        assignee = conversation.assignee_id
    due_in = action.get("due_in_minutes", 60)
    due_at = utcnow() + timedelta(minutes=float(due_in)) if isinstance(due_in, int | float) else None
    await create_task(
        session,
        incident.tenant_id,
        {
            "type": TaskType.ESCALATION.value,
            "title": str(action.get("title") or incident.headline)[:200],
            "description": incident.headline,
            "priority": await conversation_priority(session, conversation.id),
            "due_at": due_at,
            "remind_at": remind_time(due_at, DEFAULT_REMINDER_LEAD if due_at else None),
            "assignee_id": assignee,
            "team_id": team_id,
            "source": "escalation",
            "contact_id": conversation.contact_id,
            "conversation_id": conversation.id,
            "suggested_action": {"kind": "open_conversation", "label": "Answer the conversation"},
        },
        # Runs are recorded once per clock, stage and action, so this never collides in practice;
        # the key keeps a redelivered breach from making a second task even so.
        dedupe_key=f"sla:{incident.clock_id}:{incident.stage}:{str(action.get('title') or '')[:120]}",
    )
    return None


_DATABASE_ACTIONS = {
    "raise_priority": _raise_priority,
    "reassign": _reassign,
    "notify_in_app": _notify_in_app,
    "create_task": _create_task,
}


def escalation_subscribers(escalator: Escalator) -> dict[str, list[Callable[[Event], Any]]]:
    """The topics escalations follow."""
    return {"sla.warning": [escalator.on_sla_event], "sla.breached": [escalator.on_sla_event]}
