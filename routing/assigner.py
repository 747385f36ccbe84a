"""Acting on routing decisions: the waiting queue and assignments, kept in the database under row locks.

Every routing change of a tenant (queue a conversation, serve the queue, a supervisor's override)
first takes a row lock on the tenant (`SELECT … FOR NO KEY UPDATE`), then locks the waiting
conversations it reads (`FOR NO KEY UPDATE`). Serialising per tenant is what makes "nobody
eligible idle while a conversation waits" hold across processes: without it, a conversation
queued while an agent's going-online is being served can be missed by both (each sees the
other's change only after commit). The locks are `NO KEY` ones so webhooks that insert messages
(which only take `KEY SHARE` on the tenant and conversation) never wait for routing. On SQLite
the single writer (`BEGIN IMMEDIATE`) serialises the same transactions.

Nothing is kept in memory between calls: loads are counted from `conversations` (every
unresolved conversation assigned to the agent counts, whoever assigned it), so any number of
gateway processes and workers can route side by side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import phonenumbers
from sqlalchemy import ColumnElement, Table, and_, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import Contact
from inbox.models import Conversation, ConversationStatus, Inbox
from parley.db import Database, utcnow
from parley.models import Presence, Tenant, User
from parley.outbox import Event, emit
from routing.match import DEFAULT_CHAIN, Agent, Choice, Need, channel_kind, plan, within_hours
from routing.models import (
    AgentProfile,
    Assignment,
    ConversationRouting,
    RoutingPolicy,
    RoutingState,
    TeamMember,
)
from routing.presence import ANSWERING_ROLES
from routing.sla import ROUTING_PRIORITY

logger = logging.getLogger(__name__)

ASSIGNED_TOPIC = "conversation.assigned"
QUEUED_TOPIC = "conversation.queued"
PROFILE_CHANGED_TOPIC = "agent.profile_changed"

# What an agent without a profile can hold: routing works before anyone configures it.
DEFAULT_CAPACITY: Mapping[str, int] = {"chat": 5, "email": 10, "voice": 1}
BATCH = 500

_ASSIGN = (
    update(cast(Table, Conversation.__table__))
    .where(Conversation.__table__.c.id == bindparam("conversation"))
    .values(assignee_id=bindparam("user"), updated_at=bindparam("now"))
)
_MARK_ASSIGNED = (
    update(cast(Table, ConversationRouting.__table__))
    .where(ConversationRouting.__table__.c.conversation_id == bindparam("conversation"))
    .values(state=RoutingState.ASSIGNED, assigned_at=bindparam("now"), updated_at=bindparam("now"))
)
_TOUCH_AGENT = (
    update(cast(Table, AgentProfile.__table__))
    .where(AgentProfile.__table__.c.user_id == bindparam("user"))
    .values(last_assigned_at=bindparam("now"))
)


def _epoch(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else 0.0


async def lock_tenant(session: AsyncSession, tenant_id: int) -> None:
    """Serialise this transaction's routing with every other one of the tenant (see the module doc)."""
    await session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))


@dataclass(frozen=True, slots=True)
class Board:
    """The agents who could take something now, and what each already holds."""

    agents: Sequence[Agent]
    loads: dict[int, dict[str, int]]

    @property
    def has_room(self) -> bool:
        return any(
            a.available and any(self.loads.get(a.user_id, {}).get(k, 0) < c for k, c in a.capacity.items())
            for a in self.agents
        )


def _online(tenant_id: int) -> ColumnElement[bool]:
    return and_(User.tenant_id == tenant_id, User.presence == Presence.ONLINE, User.role.in_(ANSWERING_ROLES))


async def load_board(session: AsyncSession, tenant_id: int, now: datetime) -> Board:
    """The tenant's agents who could take something now (online, in hours, with room), and their loads.

    Two reads: capacity and hours of everyone online first; the rest of the profile only for those
    with room, so that queueing behind a full house stays cheap however many agents there are.
    """
    rows = (
        await session.execute(
            select(
                User.id,
                AgentProfile.user_id,
                AgentProfile.capacity,
                AgentProfile.time_zone,
                AgentProfile.working_hours,
            )
            .outerjoin(AgentProfile, AgentProfile.user_id == User.id)
            .where(_online(tenant_id))
        )
    ).all()
    if not rows:
        return Board((), {})
    missing = [row.id for row in rows if row.user_id is None]
    if missing:
        await _create_default_profiles(session, tenant_id, missing)
    loads: dict[int, dict[str, int]] = {}
    for assignee_id, channel, count in await session.execute(
        # Every statement of a READ COMMITTED transaction sees its own snapshot, and presence
        # changes do not take the routing lock: filtering on presence again here could miss the
        # load of an agent the first read saw online. So: every holder's load, unfiltered.
        select(Conversation.assignee_id, Inbox.channel, func.count())
        .join(Inbox, Inbox.id == Conversation.inbox_id)
        .where(
            Conversation.tenant_id == tenant_id,
            Conversation.assignee_id.is_not(None),
            Conversation.status != ConversationStatus.RESOLVED,
        )
        .group_by(Conversation.assignee_id, Inbox.channel)
    ):
        kind = channel_kind(channel)
        per_agent = loads.setdefault(cast(int, assignee_id), {})
        per_agent[kind] = per_agent.get(kind, 0) + count
    capacities: dict[int, dict[str, int]] = {}
    for row in rows:
        capacity = (
            dict(DEFAULT_CAPACITY)
            if row.user_id is None
            else {str(k): int(v) for k, v in row.capacity.items()}
        )
        held = loads.get(row.id, {})
        if any(held.get(k, 0) < c for k, c in capacity.items()) and (
            row.user_id is None or within_hours(row.working_hours, row.time_zone, now)
        ):
            capacities[row.id] = capacity
    if not capacities:
        return Board((), loads)
    teams: dict[int, set[int]] = {}
    for user_id, team_id in await session.execute(
        select(TeamMember.user_id, TeamMember.team_id).where(TeamMember.tenant_id == tenant_id)
    ):
        teams.setdefault(user_id, set()).add(team_id)
    with_profile = {row.id for row in rows if row.user_id is not None and row.id in capacities}
    details = {
        row.user_id: row
        for row in await session.execute(
            select(*_PROFILE_COLUMNS).where(AgentProfile.user_id.in_(sorted(with_profile)))
        )
    }
    agents = [
        _agent(user_id, capacity, details.get(user_id), frozenset(teams.get(user_id, ())))
        for user_id, capacity in capacities.items()
        if user_id in details or user_id not in with_profile  # a profile deleted meanwhile: skip
    ]
    return Board(agents, loads)


_PROFILE_COLUMNS = (
    AgentProfile.user_id,
    AgentProfile.skills,
    AgentProfile.languages,
    AgentProfile.territories,
    AgentProfile.last_assigned_at,
)


def _agent(user_id: int, capacity: Mapping[str, int], profile: Any, teams: frozenset[int]) -> Agent:
    """An available `Agent` from its capacity and a row of `_PROFILE_COLUMNS` (None: no profile yet)."""
    if profile is None:
        return Agent(user_id, True, capacity, teams)
    return Agent(
        user_id=user_id,
        available=True,
        capacity=capacity,
        teams=teams,
        skills={str(k): int(v) for k, v in profile.skills.items()},
        languages=frozenset(str(lang).lower() for lang in profile.languages),
        territories=frozenset(str(t).upper() for t in profile.territories),
        last_assigned_at=_epoch(profile.last_assigned_at),
    )


async def _create_default_profiles(session: AsyncSession, tenant_id: int, user_ids: Sequence[int]) -> None:
    conn = await session.connection()
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        dialect_insert(cast(Table, AgentProfile.__table__))
        .values(
            [
                {
                    "user_id": user_id,
                    "tenant_id": tenant_id,
                    "skills": {},
                    "languages": [],
                    "territories": [],
                    "capacity": dict(DEFAULT_CAPACITY),
                    "time_zone": "UTC",
                    "working_hours": {},
                    "updated_at": utcnow(),
                }
                for user_id in user_ids
            ]
        )
        .on_conflict_do_nothing()
    )


_NEED_COLUMNS = (
    ConversationRouting.conversation_id,
    ConversationRouting.contact_id,
    ConversationRouting.channel_kind,
    ConversationRouting.queued_at,
    ConversationRouting.priority,
    ConversationRouting.team_id,
    ConversationRouting.overflow_team_id,
    ConversationRouting.overflow_after_seconds,
    ConversationRouting.required_skills,
    ConversationRouting.language,
    ConversationRouting.territory,
    ConversationRouting.previous_agent_id,
    ConversationRouting.strategies,
    Conversation.inbox_id,
)


def _need(row: Any) -> Need:
    """A `Need` from a row of `_NEED_COLUMNS`."""
    return Need(
        conversation_id=row.conversation_id,
        channel_kind=row.channel_kind,
        queued_at=_epoch(row.queued_at),
        priority=row.priority,
        team_id=row.team_id,
        overflow_team_id=row.overflow_team_id,
        overflow_after=float(row.overflow_after_seconds) if row.overflow_after_seconds is not None else None,
        required_skills={str(k): int(v) for k, v in row.required_skills.items()},
        language=row.language.lower() if row.language else None,
        territory=row.territory.upper() if row.territory else None,
        previous_agent_id=row.previous_agent_id,
        strategies=tuple(row.strategies) or DEFAULT_CHAIN,
    )


def _waiting(tenant_id: int) -> Any:
    """The tenant's queue in serving order: waiting, still unassigned and unresolved conversations."""
    return (
        select(*_NEED_COLUMNS)
        .join(Conversation, Conversation.id == ConversationRouting.conversation_id)
        .where(
            ConversationRouting.tenant_id == tenant_id,
            ConversationRouting.state == RoutingState.WAITING,
            Conversation.assignee_id.is_(None),
            Conversation.status != ConversationStatus.RESOLVED,
        )
        .order_by(
            ConversationRouting.priority.desc(),
            ConversationRouting.queued_at,
            ConversationRouting.conversation_id,
        )
    )


async def serve_queue(session: AsyncSession, tenant_id: int, *, now: datetime | None = None) -> list[Choice]:
    """Assign waiting conversations, in queue order, to the agents who have room; call under `lock_tenant`."""
    now = now or utcnow()
    board = await load_board(session, tenant_id, now)
    made: list[Choice] = []
    skipped = 0
    while board.has_room:
        rows = (
            await session.execute(
                _waiting(tenant_id)
                .offset(skipped)
                .limit(BATCH)
                .with_for_update(of=Conversation, key_share=True)
            )
        ).all()
        if not rows:
            break
        needs = {row.conversation_id: row for row in rows}
        choices = plan([_need(row) for row in rows], board.agents, board.loads, now.timestamp())
        await _write(session, tenant_id, choices, needs, now)
        made.extend(choices)
        skipped += len(rows) - len(choices)
        if len(rows) < BATCH:
            break
    return made


async def _write(
    session: AsyncSession,
    tenant_id: int,
    choices: Sequence[Choice],
    needs: Mapping[int, Any],
    now: datetime,
) -> None:
    if not choices:
        return
    params = [{"conversation": c.conversation_id, "user": c.user_id, "now": now} for c in choices]
    conn = await session.connection()
    await conn.execute(_ASSIGN, params)
    await conn.execute(_MARK_ASSIGNED, [{"conversation": c.conversation_id, "now": now} for c in choices])
    last: dict[int, datetime] = {}
    for c in choices:
        last[c.user_id] = now
    await conn.execute(_TOUCH_AGENT, [{"user": user, "now": at} for user, at in last.items()])
    history = []
    events = []
    for c in choices:
        row = needs[c.conversation_id]
        waited = (now - row.queued_at).total_seconds() if row.queued_at else None
        history.append(
            {
                "tenant_id": tenant_id,
                "conversation_id": c.conversation_id,
                "contact_id": row.contact_id,
                "user_id": c.user_id,
                "reason": c.strategy,
                "waited_seconds": waited,
                "assigned_at": now,
            }
        )
        events.append(
            (
                ASSIGNED_TOPIC,
                {
                    "conversation_id": c.conversation_id,
                    "inbox_id": row.inbox_id,
                    "contact_id": row.contact_id,
                    "assignee_id": c.user_id,
                    "strategy": c.strategy,
                    "waited_seconds": waited,
                },
            )
        )
    await conn.execute(insert(cast(Table, Assignment.__table__)), history)
    await emit(session, tenant_id, *events)


def _phone_country(phone: str | None) -> str | None:
    """The country an E.164 number belongs to (`+49…` → `DE`), when the contact has no country."""
    if not phone:
        return None
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(phone, None))
    except phonenumbers.NumberParseException:
        return None
    # "001" for non-geographic numbers (+800, +882…), "ZZ" when unknown: no country either way.
    return region if region and region.isalpha() and region != "ZZ" else None


async def enqueue(session: AsyncSession, tenant_id: int, conversation_id: int, now: datetime) -> bool:
    """Put a conversation in the queue with what its inbox's policy asks; False if it needs no routing."""
    found = (
        await session.execute(
            select(Conversation, Inbox.channel, Contact.attributes, Contact.phone)
            .join(Inbox, Inbox.id == Conversation.inbox_id)
            .join(Contact, Contact.id == Conversation.contact_id)
            .where(Conversation.id == conversation_id, Conversation.tenant_id == tenant_id)
        )
    ).one_or_none()
    if found is None:
        return False
    conversation, channel, attributes, phone = found
    if conversation.status == ConversationStatus.RESOLVED or conversation.assignee_id is not None:
        return False
    policy = await _policy(session, conversation.inbox_id)
    previous = (
        await session.execute(
            select(Assignment.user_id)
            .where(Assignment.contact_id == conversation.contact_id, Assignment.user_id.is_not(None))
            .order_by(Assignment.id.desc())
            .limit(1)
        )
    ).scalar()
    territory = (
        (attributes or {}).get("country") or (attributes or {}).get("territory") or _phone_country(phone)
    )
    values: dict[str, Any] = {
        "tenant_id": tenant_id,
        "contact_id": conversation.contact_id,
        "channel_kind": channel_kind(channel),
        "state": RoutingState.MANUAL if "manual" in policy.strategies else RoutingState.WAITING,
        "team_id": policy.team_id,
        "overflow_team_id": policy.overflow_team_id,
        "overflow_after_seconds": policy.overflow_after_seconds,
        "strategies": list(policy.strategies),
        "required_skills": dict(policy.required_skills),
        "language": policy.language,
        "territory": str(territory)[:20].upper() if isinstance(territory, str) and territory else None,
        # The conversation's own level (computed, set by hand or escalated) raises the policy's default.
        "priority": max(policy.priority, ROUTING_PRIORITY.get(conversation.priority, 0)),
        "previous_agent_id": previous,
        "queued_at": now,
        "assigned_at": None,
        "updated_at": now,
    }
    row = await session.get(ConversationRouting, conversation_id, with_for_update=True)
    if row is None:
        session.add(ConversationRouting(conversation_id=conversation_id, **values))
    else:
        # Requirements set on the conversation itself (triage, a bot, a supervisor) are kept.
        for key in ("required_skills", "language", "priority", "team_id"):
            if getattr(row, key) and row.state != RoutingState.CLOSED:
                values[key] = getattr(row, key)
        for key, value in values.items():
            setattr(row, key, value)
    await session.flush()
    return True


@dataclass(frozen=True, slots=True)
class Policy:
    team_id: int | None = None
    strategies: tuple[str, ...] = DEFAULT_CHAIN
    required_skills: Mapping[str, int] = field(default_factory=dict)
    language: str | None = None
    priority: int = 0
    overflow_team_id: int | None = None
    overflow_after_seconds: int | None = None


async def _policy(session: AsyncSession, inbox_id: int) -> Policy:
    """The inbox's routing policy, completed by its serving team's policy."""
    inbox_policy = (
        await session.execute(select(RoutingPolicy).where(RoutingPolicy.inbox_id == inbox_id))
    ).scalar_one_or_none()
    if inbox_policy is None:
        return Policy()
    team_policy = None
    if inbox_policy.serving_team_id is not None:
        team_policy = (
            await session.execute(
                select(RoutingPolicy).where(RoutingPolicy.team_id == inbox_policy.serving_team_id)
            )
        ).scalar_one_or_none()

    def pick(name: str) -> Any:
        mine = getattr(inbox_policy, name)
        return mine if mine or team_policy is None else getattr(team_policy, name)

    return Policy(
        team_id=inbox_policy.serving_team_id,
        strategies=tuple(pick("strategies")) or DEFAULT_CHAIN,
        required_skills={
            **(team_policy.required_skills if team_policy else {}),
            **inbox_policy.required_skills,
        },
        language=pick("language"),
        priority=inbox_policy.priority,
        overflow_team_id=pick("overflow_team_id"),
        overflow_after_seconds=pick("overflow_after_seconds"),
    )


async def route(
    session: AsyncSession, tenant_id: int, conversation_id: int, *, since: datetime | None = None
) -> Choice | None:
    """Queue a new or reopened conversation and serve the queue; the choice made for it, if any.

    `since` is when the customer started waiting (the opening event's time), so the queue orders
    conversations by when they opened rather than by when a dispatcher got to them.
    """
    await lock_tenant(session, tenant_id)
    now = utcnow()  # read under the lock: routing decisions of a tenant are totally ordered in time
    if not await enqueue(session, tenant_id, conversation_id, min(since or now, now)):
        return None
    choices = await serve_queue(session, tenant_id, now=now)
    mine = next((c for c in choices if c.conversation_id == conversation_id), None)
    if mine is None:
        await emit(session, tenant_id, (QUEUED_TOPIC, {"conversation_id": conversation_id}))
    return mine


async def close(session: AsyncSession, conversation_id: int) -> None:
    """A resolved conversation leaves the queue."""
    await session.execute(
        update(ConversationRouting)
        .where(ConversationRouting.conversation_id == conversation_id)
        .values(state=RoutingState.CLOSED, queued_at=None, updated_at=utcnow())
    )


async def assign(
    session: AsyncSession, tenant_id: int, conversation_id: int, user_id: int | None, *, reason: str
) -> None:
    """Record an assignment made by a person (a supervisor's override, the conversation API)."""
    row = await session.get(ConversationRouting, conversation_id)
    if user_id is None:
        return
    contact_id = (
        await session.execute(select(Conversation.contact_id).where(Conversation.id == conversation_id))
    ).scalar_one()
    now = utcnow()
    if row is not None:
        row.state = RoutingState.ASSIGNED
        row.assigned_at = now
    session.add(
        Assignment(
            tenant_id=tenant_id,
            conversation_id=conversation_id,
            contact_id=contact_id,
            user_id=user_id,
            reason=reason,
            waited_seconds=(now - row.queued_at).total_seconds() if row and row.queued_at else None,
            assigned_at=now,
        )
    )
    await session.flush()


class Assigner:
    """The outbox handlers that keep the queue moving."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def on_conversation_opened(self, event: Event) -> None:
        """`conversation.opened` / `conversation.reopened`: route it."""
        if event.tenant_id is None:
            return
        async with self.db.transaction() as session:
            await route(
                session, event.tenant_id, int(event.payload["conversation_id"]), since=event.created_at
            )

    async def on_presence_changed(self, event: Event) -> None:
        """`agent.presence_changed`: an agent coming online drains the queue."""
        if event.tenant_id is not None and event.payload.get("presence") == Presence.ONLINE:
            await self.drain(event.tenant_id)

    async def on_profile_changed(self, event: Event) -> None:
        """`agent.profile_changed`: raised capacity, a new skill or team may let someone take more."""
        if event.tenant_id is not None:
            await self.drain(event.tenant_id)

    async def on_conversation_updated(self, event: Event) -> None:
        """`conversation.updated`: resolving or unassigning frees capacity; unassigning re-queues."""
        if event.tenant_id is None:
            return
        tenant_id = event.tenant_id
        conversation_id = int(event.payload["conversation_id"])
        changes: Mapping[str, Any] = event.payload.get("changes", {})
        async with self.db.transaction() as session:
            await lock_tenant(session, tenant_id)
            current = (
                await session.execute(
                    select(Conversation.status, Conversation.assignee_id).where(
                        Conversation.id == conversation_id
                    )
                )
            ).one_or_none()
            if current is None:
                return
            status, assignee = current
            if status == ConversationStatus.RESOLVED:
                await close(session, conversation_id)
            elif assignee is None:
                await enqueue(session, tenant_id, conversation_id, utcnow())
            elif "assignee_id" in changes and await _latest_assignee(session, conversation_id) != assignee:
                await assign(session, tenant_id, conversation_id, assignee, reason="manual")
            await serve_queue(session, tenant_id)

    async def sweep(self) -> int:
        """Serve every queue with someone waiting; how many were assigned.

        Overflow waits ending and working hours starting are not events: a periodic sweep notices
        them (`run_sweeps` in the embedded default; durable timers can call this instead).
        """
        async with self.db.sessionmaker() as session:
            tenants = await tenants_waiting(session, older_than=timedelta(0))
        return sum([len(await self.drain(tenant_id)) for tenant_id in tenants])

    async def run_sweeps(self, *, interval: float = 15.0) -> None:
        """Sweep every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a database hiccup
                logger.exception("routing sweep failed; retrying")

    async def drain(self, tenant_id: int) -> list[Choice]:
        """Serve the tenant's queue now."""
        async with self.db.transaction() as session:
            await lock_tenant(session, tenant_id)
            return await serve_queue(session, tenant_id)


async def _latest_assignee(session: AsyncSession, conversation_id: int) -> int | None:
    return (
        await session.execute(
            select(Assignment.user_id)
            .where(Assignment.conversation_id == conversation_id)
            .order_by(Assignment.id.desc())
            .limit(1)
        )
    ).scalar()


async def tenants_waiting(session: AsyncSession, *, older_than: timedelta) -> list[int]:
    """Tenants with conversations waiting longer than `older_than` (for a periodic sweep: overflow, hours)."""
    rows = await session.execute(
        select(ConversationRouting.tenant_id)
        .where(
            ConversationRouting.state == RoutingState.WAITING,
            ConversationRouting.queued_at <= utcnow() - older_than,
        )
        .distinct()
    )
    return [tenant_id for (tenant_id,) in rows]
