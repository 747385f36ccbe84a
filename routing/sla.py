"""SLA clocks: started, stopped, paused and resumed by conversation events; warned and breached by a sweep.

A conversation gets the most specific enabled `SlaPolicy` matching its inbox, team and priority.
Its clocks:

- `first_response`: from the customer's first message until an agent's first reply;
- `next_response`: from a customer message after an agent has replied, until the next agent reply;
- `resolution`: from the opening until the conversation is resolved.

Clocks count business time on the policy's calendar (`routing.calendars`), and pause while the
conversation waits on the customer (status `pending` or `snoozed`): the business time spent paused
is added to the clock's due time when it resumes. Each clock keeps `warn_at` and `due_at` up to
date, so the sweep (`SlaClocks.sweep`) is two indexed conditional UPDATE … RETURNING statements
that mark warnings and breaches and write `sla.warning` / `sla.breached` in the same transaction:
each is emitted exactly once, however many sweeps run at once (`FOR UPDATE SKIP LOCKED` on
PostgreSQL; SQLite has a single writer).

"Now" is a function given to `SlaClocks` (`clock=`), so tests move time forward instead of sleeping.
A conversation's level is its `conversations.priority` (`conversation_priority`); the routing
queue's integer priority maps onto the same levels with `ROUTING_PRIORITY` when escalations raise it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from inbox.models import Conversation, ConversationStatus, Message
from parley.db import Database, utcnow
from parley.outbox import Event, emit
from parley.sweeping import sweep_forever
from routing.calendars import BusinessCalendar, add_business_time, business_time_between, calendar_from_row
from routing.models import BusinessCalendarRecord, ConversationRouting, RoutingPolicy, SlaClock, SlaPolicy

logger = logging.getLogger(__name__)

WARNING_TOPIC = "sla.warning"
BREACHED_TOPIC = "sla.breached"

FIRST_RESPONSE = "first_response"
NEXT_RESPONSE = "next_response"
RESOLUTION = "resolution"
KINDS = (FIRST_RESPONSE, NEXT_RESPONSE, RESOLUTION)
RESPONSE_KINDS = (FIRST_RESPONSE, NEXT_RESPONSE)
TARGET_COLUMNS = {
    FIRST_RESPONSE: "first_response_minutes",
    NEXT_RESPONSE: "next_response_minutes",
    RESOLUTION: "resolution_minutes",
}

PRIORITIES = ("none", "low", "medium", "high", "urgent")
# Where each level sits on the routing queue's integer priority (higher is served first).
ROUTING_PRIORITY: Mapping[str, int] = {"none": 0, "low": 10, "medium": 20, "high": 30, "urgent": 40}

# Outbound messages written by a person answer the customer; bots' and automations' do not.
AGENT_SENDERS = ("user", "agent")
WAITING_ON_CUSTOMER = (ConversationStatus.PENDING, ConversationStatus.SNOOZED)

Clock = Callable[[], datetime]


def level_for_routing_priority(value: int) -> str:
    """The highest level whose routing priority `value` reaches."""
    return max((level for level in PRIORITIES if ROUTING_PRIORITY[level] <= value), key=PRIORITIES.index)


async def conversation_priority(session: AsyncSession, conversation_id: int) -> str:
    """The conversation's priority level: its own `priority` column if the model has one, else routing's."""
    column = getattr(Conversation, "priority", None)
    if column is not None:
        own = (await session.execute(select(column).where(Conversation.id == conversation_id))).scalar()
        if own in PRIORITIES:
            return str(own)
    routing = (
        await session.execute(
            select(ConversationRouting.priority).where(ConversationRouting.conversation_id == conversation_id)
        )
    ).scalar()
    return level_for_routing_priority(routing or 0)


async def conversation_team(session: AsyncSession, conversation_id: int, inbox_id: int) -> int | None:
    """The team the conversation is routed to, else the team serving its inbox."""
    team = (
        await session.execute(
            select(ConversationRouting.team_id).where(ConversationRouting.conversation_id == conversation_id)
        )
    ).scalar()
    if team is not None:
        return team
    return (
        await session.execute(select(RoutingPolicy.serving_team_id).where(RoutingPolicy.inbox_id == inbox_id))
    ).scalar()


async def matching_policy(session: AsyncSession, conversation: Conversation) -> SlaPolicy | None:
    """The most specific enabled policy of the tenant for the conversation (ties: the oldest)."""
    team = await conversation_team(session, conversation.id, conversation.inbox_id)
    priority = await conversation_priority(session, conversation.id)
    candidates = (
        await session.scalars(
            select(SlaPolicy)
            .where(
                SlaPolicy.tenant_id == conversation.tenant_id,
                SlaPolicy.enabled.is_(True),
                or_(SlaPolicy.inbox_id.is_(None), SlaPolicy.inbox_id == conversation.inbox_id),
                or_(SlaPolicy.team_id.is_(None), SlaPolicy.team_id == team),
                or_(SlaPolicy.priority.is_(None), SlaPolicy.priority == priority),
            )
            .order_by(SlaPolicy.id)
        )
    ).all()
    if not candidates:
        return None

    def specificity(policy: SlaPolicy) -> int:
        return sum(value is not None for value in (policy.inbox_id, policy.team_id, policy.priority))

    best = max(specificity(p) for p in candidates)
    return next(p for p in candidates if specificity(p) == best)


async def policy_calendar(session: AsyncSession, calendar_id: int | None) -> BusinessCalendar:
    """The business calendar a policy counts on (none: round the clock)."""
    if calendar_id is None:
        return BusinessCalendar.always()
    row = await session.get(BusinessCalendarRecord, calendar_id)
    return calendar_from_row(row)


@dataclass(frozen=True, slots=True)
class Deadlines:
    warn_at: datetime
    due_at: datetime


def deadlines(
    calendar: BusinessCalendar,
    started_at: datetime,
    target_minutes: int,
    warning_fraction: float,
    paused_total_seconds: float,
) -> Deadlines:
    """When a clock warns and falls due: its start, plus its target (or fraction), plus time paused."""
    paused = timedelta(seconds=paused_total_seconds)
    target = timedelta(minutes=target_minutes)
    return Deadlines(
        warn_at=add_business_time(calendar, started_at, target * warning_fraction + paused),
        due_at=add_business_time(calendar, started_at, target + paused),
    )


@dataclass(frozen=True, slots=True)
class ClockView:
    """A clock as the API shows it."""

    id: int
    kind: str
    state: str  # running, paused, met, breached
    policy_id: int
    target_minutes: int
    started_at: datetime
    paused_at: datetime | None
    paused_seconds: float
    warn_at: datetime
    due_at: datetime
    warned_at: datetime | None
    breached_at: datetime | None
    stopped_at: datetime | None
    remaining_seconds: float | None  # business time left; negative once overdue; None when stopped


def clock_state(clock: SlaClock) -> str:
    if clock.breached_at is not None:
        return "breached"
    if clock.stopped_at is not None:
        return "met"
    return "paused" if clock.paused_at is not None else "running"


def view(clock: SlaClock, calendar: BusinessCalendar, now: datetime) -> ClockView:
    """How a clock stands at `now`: its state and the business time it has left."""
    remaining: float | None = None
    if clock.stopped_at is None:
        until = clock.paused_at or now
        elapsed = business_time_between(calendar, clock.started_at, until).total_seconds()
        remaining = clock.target_minutes * 60 - (elapsed - clock.paused_total_seconds)
    return ClockView(
        id=clock.id,
        kind=clock.kind,
        state=clock_state(clock),
        policy_id=clock.policy_id,
        target_minutes=clock.target_minutes,
        started_at=clock.started_at,
        paused_at=clock.paused_at,
        paused_seconds=clock.paused_total_seconds,
        warn_at=clock.warn_at,
        due_at=clock.due_at,
        warned_at=clock.warned_at,
        breached_at=clock.breached_at,
        stopped_at=clock.stopped_at,
        remaining_seconds=remaining,
    )


async def conversation_clocks(
    session: AsyncSession, tenant_id: int, conversation_id: int, now: datetime
) -> list[ClockView]:
    """Every SLA clock of a conversation, oldest first, as it stands at `now`."""
    rows = (
        await session.execute(
            select(SlaClock, SlaPolicy.calendar_id)
            .join(SlaPolicy, SlaPolicy.id == SlaClock.policy_id)
            .where(SlaClock.tenant_id == tenant_id, SlaClock.conversation_id == conversation_id)
            .order_by(SlaClock.id)
        )
    ).all()
    calendars: dict[int | None, BusinessCalendar] = {}
    views = []
    for clock, calendar_id in rows:
        if calendar_id not in calendars:
            calendars[calendar_id] = await policy_calendar(session, calendar_id)
        views.append(view(clock, calendars[calendar_id], now))
    return views


# --- the inbox list's "sort by SLA due" -----------------------------------------------------------


def _running() -> ColumnElement[bool]:
    return and_(SlaClock.stopped_at.is_(None), SlaClock.paused_at.is_(None))


def next_due_subquery() -> Any:
    """A correlated scalar subquery: the conversation's next SLA due time (NULL without running clocks).

    Sort the conversation list with it, e.g.
    `select(Conversation).order_by(next_due_subquery().asc().nulls_last(), Conversation.id)`;
    it reads `ix_sla_clocks_running_due`.
    """
    return (
        select(func.min(SlaClock.due_at))
        .where(SlaClock.conversation_id == Conversation.id, _running())
        .correlate(Conversation)
        .scalar_subquery()
    )


async def next_sla_due(session: AsyncSession, conversation_ids: Iterable[int]) -> dict[int, datetime]:
    """The next SLA due time of each conversation that has a running clock."""
    ids = sorted(set(conversation_ids))
    if not ids:
        return {}
    rows = await session.execute(
        select(SlaClock.conversation_id, func.min(SlaClock.due_at))
        .where(SlaClock.conversation_id.in_(ids), _running())
        .group_by(SlaClock.conversation_id)
    )
    return {conversation_id: due for conversation_id, due in rows}


# --- clock changes --------------------------------------------------------------------------------


async def start_clocks(
    session: AsyncSession, conversation: Conversation, kinds: Sequence[str], now: datetime
) -> list[str]:
    """Start the kinds of clock the conversation's policy sets a target for; a running one is kept."""
    policy = await matching_policy(session, conversation)
    if policy is None:
        return []
    calendar = await policy_calendar(session, policy.calendar_id)
    rows = []
    for kind in kinds:
        target = getattr(policy, TARGET_COLUMNS[kind])
        if target is None:
            continue
        at = deadlines(calendar, now, target, policy.warning_fraction, 0.0)
        rows.append(
            {
                "tenant_id": conversation.tenant_id,
                "conversation_id": conversation.id,
                "policy_id": policy.id,
                "kind": kind,
                "target_minutes": target,
                "started_at": now,
                "paused_total_seconds": 0.0,
                "warn_at": at.warn_at,
                "due_at": at.due_at,
            }
        )
    if not rows:
        return []
    conn = await session.connection()
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    # `uq_sla_clocks_running_kind`: an event delivered twice starts nothing the second time.
    result = await conn.execute(
        dialect_insert(cast(Table, SlaClock.__table__))
        .values(rows)
        .on_conflict_do_nothing()
        .returning(SlaClock.__table__.c.kind)
    )
    return [kind for (kind,) in result]


async def stop_clocks(
    session: AsyncSession, conversation_id: int, kinds: Sequence[str], now: datetime
) -> int:
    """Stop the conversation's running clocks of these kinds; how many were stopped."""
    result = await session.execute(
        update(SlaClock)
        .where(
            SlaClock.conversation_id == conversation_id,
            SlaClock.kind.in_(kinds),
            SlaClock.stopped_at.is_(None),
        )
        .values(stopped_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def pause_clocks(session: AsyncSession, conversation_id: int, now: datetime) -> int:
    """Pause the conversation's running clocks (it waits on the customer)."""
    result = await session.execute(
        update(SlaClock).where(SlaClock.conversation_id == conversation_id, _running()).values(paused_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def resume_clocks(session: AsyncSession, conversation_id: int, now: datetime) -> int:
    """Resume paused clocks, moving their warning and due times by the business time spent paused."""
    rows = (
        await session.execute(
            select(SlaClock, SlaPolicy.calendar_id, SlaPolicy.warning_fraction)
            .join(SlaPolicy, SlaPolicy.id == SlaClock.policy_id)
            .where(
                SlaClock.conversation_id == conversation_id,
                SlaClock.stopped_at.is_(None),
                SlaClock.paused_at.is_not(None),
            )
            .with_for_update(of=SlaClock)
        )
    ).all()
    for clock, calendar_id, fraction in rows:
        assert clock.paused_at is not None
        calendar = await policy_calendar(session, calendar_id)
        paused = business_time_between(calendar, clock.paused_at, max(now, clock.paused_at))
        clock.paused_total_seconds += paused.total_seconds()
        clock.paused_at = None
        at = deadlines(calendar, clock.started_at, clock.target_minutes, fraction, clock.paused_total_seconds)
        clock.warn_at, clock.due_at = at.warn_at, at.due_at
    await session.flush()
    return len(rows)


async def _agent_has_replied(session: AsyncSession, conversation_id: int) -> bool:
    found = (
        await session.execute(
            select(Message.id)
            .where(
                Message.conversation_id == conversation_id,
                Message.direction == "outbound",
                Message.sender_type.in_(AGENT_SENDERS),
            )
            .limit(1)
        )
    ).scalar()
    return found is not None


async def _response_clock_running(session: AsyncSession, conversation_id: int) -> bool:
    found = (
        await session.execute(
            select(SlaClock.id)
            .where(
                SlaClock.conversation_id == conversation_id,
                SlaClock.kind.in_(RESPONSE_KINDS),
                SlaClock.stopped_at.is_(None),
            )
            .limit(1)
        )
    ).scalar()
    return found is not None


async def customer_wrote(session: AsyncSession, conversation: Conversation, now: datetime) -> None:
    """The customer is waiting: resume paused clocks, start a response clock and the resolution clock."""
    if conversation.status == ConversationStatus.RESOLVED:
        return
    if conversation.status not in WAITING_ON_CUSTOMER:
        await resume_clocks(session, conversation.id, now)
    kinds = [RESOLUTION]
    if not await _response_clock_running(session, conversation.id):
        replied = await _agent_has_replied(session, conversation.id)
        kinds.append(NEXT_RESPONSE if replied else FIRST_RESPONSE)
    await start_clocks(session, conversation, kinds, now)


# --- the sweep ------------------------------------------------------------------------------------


_STAGES = (
    ("warning", WARNING_TOPIC, SlaClock.warned_at, SlaClock.warn_at),
    ("breach", BREACHED_TOPIC, SlaClock.breached_at, SlaClock.due_at),
)


def _claim(marker: Any, deadline: Any, now: datetime, limit: int) -> Any:
    """Mark up to `limit` running clocks whose `deadline` has passed and `marker` is unset; RETURNING them."""
    due: Select[Any] = (
        select(SlaClock.id)
        .where(_running(), marker.is_(None), deadline <= now)
        .order_by(deadline)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (
        update(SlaClock)
        .where(SlaClock.id.in_(due.scalar_subquery()), marker.is_(None))
        .values({marker.key: now})
        .returning(
            SlaClock.id,
            SlaClock.tenant_id,
            SlaClock.conversation_id,
            SlaClock.policy_id,
            SlaClock.kind,
            SlaClock.due_at,
        )
    )


class SlaClocks:
    """The outbox handlers that time conversations, and the sweep that warns and breaches."""

    def __init__(self, db: Database, *, clock: Clock = utcnow, batch: int = 500) -> None:
        self.db = db
        self.now = clock
        self.batch = batch

    async def _conversation(self, session: AsyncSession, event: Event) -> Conversation | None:
        if event.tenant_id is None or "conversation_id" not in event.payload:
            return None
        return (
            await session.execute(
                select(Conversation).where(
                    Conversation.id == int(event.payload["conversation_id"]),
                    Conversation.tenant_id == event.tenant_id,
                )
            )
        ).scalar_one_or_none()

    async def on_customer_message(self, event: Event) -> None:
        """`conversation.opened`, `conversation.reopened`, `message.received`: the customer waits on us."""
        async with self.db.transaction() as session:
            conversation = await self._conversation(session, event)
            if conversation is not None:
                await customer_wrote(session, conversation, self.now())

    async def on_message_outbound(self, event: Event) -> None:
        """`message.outbound`: an agent's reply meets the running first or next response clock."""
        async with self.db.transaction() as session:
            sender = (
                await session.execute(
                    select(Message.sender_type, Message.direction).where(
                        Message.id == int(event.payload.get("message_id", 0)),
                        Message.tenant_id == event.tenant_id,
                    )
                )
            ).one_or_none()
            if sender is None or sender.direction != "outbound" or sender.sender_type not in AGENT_SENDERS:
                return
            await stop_clocks(session, int(event.payload["conversation_id"]), RESPONSE_KINDS, self.now())

    async def on_conversation_updated(self, event: Event) -> None:
        """`conversation.updated`: resolving stops every clock, waiting on the customer pauses them."""
        status_change: Mapping[str, Any] | None = event.payload.get("changes", {}).get("status")
        if not status_change:
            return
        async with self.db.transaction() as session:
            conversation = await self._conversation(session, event)
            if conversation is None:
                return
            now = self.now()
            # The event's status, not the row's: a conversation's events are handled in order, so a
            # resolution quickly undone still stops the clocks it should have stopped.
            status = status_change.get("new")
            if status == ConversationStatus.RESOLVED:
                await stop_clocks(session, conversation.id, KINDS, now)
            elif status in WAITING_ON_CUSTOMER:
                await pause_clocks(session, conversation.id, now)
            else:
                await resume_clocks(session, conversation.id, now)
                if status_change.get("old") == ConversationStatus.RESOLVED:
                    await start_clocks(session, conversation, [RESOLUTION], now)

    async def sweep(self) -> int:
        """Emit `sla.warning` and `sla.breached` for clocks whose time has come; how many were emitted."""
        total = 0
        for stage, topic, marker, deadline in _STAGES:
            while True:
                now = self.now()
                async with self.db.transaction() as session:
                    rows = (await session.execute(_claim(marker, deadline, now, self.batch))).all()
                    by_tenant: dict[int, list[tuple[str, dict[str, Any]]]] = {}
                    for row in rows:
                        by_tenant.setdefault(row.tenant_id, []).append(
                            (
                                topic,
                                {
                                    "clock_id": row.id,
                                    "conversation_id": row.conversation_id,
                                    "policy_id": row.policy_id,
                                    "kind": row.kind,
                                    "stage": stage,
                                    "due_at": row.due_at.isoformat(),
                                },
                            )
                        )
                    for tenant_id, events in by_tenant.items():  # one INSERT per tenant
                        await emit(session, tenant_id, *events)
                total += len(rows)
                if len(rows) < self.batch:
                    break
        return total

    async def run_sweeps(self, *, interval: float = 15.0, notify: Callable[[], None] | None = None) -> None:
        """Sweep every `interval` seconds until cancelled; `notify` wakes the dispatcher after emitting."""
        await sweep_forever(self.sweep, interval=interval, what="SLA sweep", notify=notify)


def sla_subscribers(clocks: SlaClocks) -> dict[str, list[Callable[[Event], Any]]]:
    """The topics SLA clocks follow."""
    return {
        "conversation.opened": [clocks.on_customer_message],
        "conversation.reopened": [clocks.on_customer_message],
        "message.received": [clocks.on_customer_message],
        "message.outbound": [clocks.on_message_outbound],
        "conversation.updated": [clocks.on_conversation_updated],
    }
