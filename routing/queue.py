"""Reading the waiting queue: a conversation's position and estimated wait, and the queue's listing.

The web-chat widget and the API both read from here. The estimate is the position divided by the
rate at which the same queue (the conversation's team, or the tenant's team-less queue) was served
over the last `RATE_WINDOW`; with nothing served in that window there is no estimate (None) rather
than a made-up one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from inbox.models import Conversation, ConversationStatus
from parley.db import utcnow
from routing.models import Assignment, ConversationRouting, RoutingState

RATE_WINDOW = timedelta(minutes=30)
# Assignments made by a person do not tell how fast the queue moves by itself.
_BY_PEOPLE = ("override", "manual")


@dataclass(frozen=True, slots=True)
class QueueEntry:
    conversation_id: int
    state: str
    priority: int
    team_id: int | None
    queued_at: datetime | None
    position: int | None  # 1 = next; None when not waiting
    waiting: int  # how many wait in the same queue
    estimated_wait_seconds: float | None


def _still_waiting() -> ColumnElement[bool]:
    return and_(
        ConversationRouting.state == RoutingState.WAITING,
        Conversation.assignee_id.is_(None),
        Conversation.status != ConversationStatus.RESOLVED,
    )


def _same_queue(team_id: int | None) -> ColumnElement[bool]:
    if team_id is None:
        return ConversationRouting.team_id.is_(None)
    return ConversationRouting.team_id == team_id


async def _rate(session: AsyncSession, tenant_id: int, team_id: int | None, now: datetime) -> float:
    """Conversations served from this queue per second over the last window."""
    served = (
        await session.execute(
            select(func.count())
            .select_from(Assignment)
            .join(ConversationRouting, ConversationRouting.conversation_id == Assignment.conversation_id)
            .where(
                Assignment.tenant_id == tenant_id,
                Assignment.assigned_at > now - RATE_WINDOW,
                Assignment.reason.not_in(_BY_PEOPLE),
                _same_queue(team_id),
            )
        )
    ).scalar_one()
    return served / RATE_WINDOW.total_seconds()


async def queue_entry(session: AsyncSession, tenant_id: int, conversation_id: int) -> QueueEntry | None:
    """Where a conversation stands in its queue; None if routing has never seen it."""
    found = (
        await session.execute(
            select(ConversationRouting, Conversation.assignee_id, Conversation.status)
            .join(Conversation, Conversation.id == ConversationRouting.conversation_id)
            .where(
                ConversationRouting.conversation_id == conversation_id,
                ConversationRouting.tenant_id == tenant_id,
            )
        )
    ).one_or_none()
    if found is None:
        return None
    row, assignee_id, status = found
    now = utcnow()
    scope = and_(ConversationRouting.tenant_id == tenant_id, _still_waiting(), _same_queue(row.team_id))
    base = (
        select(func.count())
        .select_from(ConversationRouting)
        .join(Conversation, Conversation.id == ConversationRouting.conversation_id)
        .where(scope)
    )
    waiting = (await session.execute(base)).scalar_one()
    is_waiting = (
        row.state == RoutingState.WAITING
        and assignee_id is None
        and status != ConversationStatus.RESOLVED
        and row.queued_at is not None
    )
    if not is_waiting:
        state = RoutingState.CLOSED if status == ConversationStatus.RESOLVED else row.state
        if assignee_id is not None and state != RoutingState.CLOSED:
            state = RoutingState.ASSIGNED
        return QueueEntry(conversation_id, state, row.priority, row.team_id, None, None, waiting, None)
    ahead = (
        await session.execute(
            base.where(
                or_(
                    ConversationRouting.priority > row.priority,
                    and_(
                        ConversationRouting.priority == row.priority,
                        or_(
                            ConversationRouting.queued_at < row.queued_at,
                            and_(
                                ConversationRouting.queued_at == row.queued_at,
                                ConversationRouting.conversation_id < row.conversation_id,
                            ),
                        ),
                    ),
                )
            )
        )
    ).scalar_one()
    position = ahead + 1
    rate = await _rate(session, tenant_id, row.team_id, now)
    return QueueEntry(
        conversation_id,
        row.state,
        row.priority,
        row.team_id,
        row.queued_at,
        position,
        waiting,
        round(position / rate, 1) if rate > 0 else None,
    )


async def waiting_list(
    session: AsyncSession, tenant_id: int, *, team_id: int | None = None, limit: int = 100
) -> list[QueueEntry]:
    """The waiting conversations in the order they will be served (all queues, or one team's)."""
    stmt = (
        select(ConversationRouting)
        .join(Conversation, Conversation.id == ConversationRouting.conversation_id)
        .where(ConversationRouting.tenant_id == tenant_id, _still_waiting())
        .order_by(
            ConversationRouting.priority.desc(),
            ConversationRouting.queued_at,
            ConversationRouting.conversation_id,
        )
        .limit(limit)
    )
    count = (
        select(func.count())
        .select_from(ConversationRouting)
        .join(Conversation, Conversation.id == ConversationRouting.conversation_id)
        .where(ConversationRouting.tenant_id == tenant_id, _still_waiting())
    )
    if team_id is not None:
        stmt = stmt.where(ConversationRouting.team_id == team_id)
        count = count.where(ConversationRouting.team_id == team_id)
    rows = (await session.scalars(stmt)).all()
    total = (await session.execute(count)).scalar_one()
    return [
        QueueEntry(r.conversation_id, r.state, r.priority, r.team_id, r.queued_at, i + 1, total, None)
        for i, r in enumerate(rows)
    ]
