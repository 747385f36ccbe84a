"""Keeping conversations' computed priority current: load the signals, assess, store, announce.

`recompute` reads what `routing.priority` needs for a batch of conversations in a few queries,
assesses each against the tenant's `ScoringConfig`, and stores the score and reasons. When the
computed level differs from the conversation's priority and nobody set that priority by hand (an
agent) or by an SLA escalation, the priority changes: the routing queue's order follows, and the
usual `conversation.updated` event (`changes.priority`, `reason: priority_scored`) tells live
screens and routing. A manual or escalated priority stands until the conversation is resolved;
reopening it hands the priority back to the scorer.

`Prioritizer`'s handlers recompute on the events that move a signal, and its sweep recomputes
conversations waiting on an agent, whose waiting time no event marks. Everything is idempotent:
recomputing at the same moment writes nothing and announces nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from crm_core.models import Contact, ContactTag, Deal, PipelineStage
from inbox.actions import Actor, Changes, updated_event
from inbox.listing import waiting_since_expression
from inbox.models import (
    Conversation,
    ConversationLabel,
    ConversationStatus,
    Label,
    Message,
    PrioritySource,
)
from parley.db import Database, utcnow
from parley.outbox import Event, Handler, emit
from routing.models import ConversationRouting, PriorityScoringConfig, RoutingPolicy, RoutingState
from routing.priority import Assessment, OpenDeal, ScoringConfig, Signals, assess
from routing.sla import ROUTING_PRIORITY

logger = logging.getLogger(__name__)

CONFIG_CHANGED_TOPIC = "priority.config_changed"
SCORED = "priority_scored"
SCORER = Actor("system")
BATCH = 500
# The unanswered messages read per conversation: the newest ones.
MAX_TEXTS = 20


async def scoring_config(session: AsyncSession, tenant_id: int) -> tuple[ScoringConfig, bool]:
    """The tenant's scoring settings, and whether they are the defaults (nothing saved)."""
    row = await session.get(PriorityScoringConfig, tenant_id)
    return ScoringConfig.from_dict(row.config if row else None), row is None


async def save_config(
    session: AsyncSession, tenant_id: int, config: ScoringConfig, user_id: int | None
) -> None:
    """Store the tenant's settings; every unresolved conversation is rescored (`priority.config_changed`)."""
    row = await session.get(PriorityScoringConfig, tenant_id, with_for_update=True)
    if row is None:
        session.add(
            PriorityScoringConfig(tenant_id=tenant_id, config=config.as_dict(), updated_by_id=user_id)
        )
    else:
        row.config = config.as_dict()
        row.updated_by_id = user_id
        row.updated_at = utcnow()
    await session.flush()
    await emit(session, tenant_id, (CONFIG_CHANGED_TOPIC, {"tenant_id": tenant_id}))


def _intent_name(extra: Mapping[str, Any]) -> str | None:
    """The bot layer's intent on a message: `intent` (a name or {name, confidence}), or Rasa's `nlu`."""
    found = extra.get("intent")
    if found is None and isinstance(extra.get("nlu"), Mapping):
        found = extra["nlu"].get("intent")
    if isinstance(found, Mapping):
        found = found.get("name")
    return found if isinstance(found, str) and found else None


async def load_signals(
    session: AsyncSession, tenant_id: int, conversation_ids: Sequence[int], now: datetime
) -> dict[int, Signals]:
    """The signals of the tenant's conversations among `conversation_ids` (others are left out)."""
    ids = list(conversation_ids)
    if not ids:
        return {}
    rows = (
        await session.execute(
            select(
                Conversation.id,
                Conversation.contact_id,
                Contact.lifecycle_stage,
                waiting_since_expression().label("waiting_since"),
            )
            .join(Contact, Contact.id == Conversation.contact_id)
            .where(Conversation.tenant_id == tenant_id, Conversation.id.in_(ids))
        )
    ).all()
    contacts = {row.contact_id for row in rows}
    tags: dict[int, list[str]] = {}
    for contact_id, tag in await session.execute(
        select(ContactTag.contact_id, ContactTag.tag).where(ContactTag.contact_id.in_(contacts))
    ):
        tags.setdefault(contact_id, []).append(tag)
    labels: dict[int, list[str]] = {}
    for conversation_id, name in await session.execute(
        select(ConversationLabel.conversation_id, Label.name)
        .join(Label, Label.id == ConversationLabel.label_id)
        .where(ConversationLabel.conversation_id.in_(ids))
    ):
        labels.setdefault(conversation_id, []).append(name)
    deals: dict[int, list[OpenDeal]] = {}
    for owner, amount, currency in await session.execute(
        select(Deal.contact_id, Deal.amount_minor, Deal.currency)
        .join(PipelineStage, PipelineStage.id == Deal.stage_id)
        .where(
            Deal.tenant_id == tenant_id,
            Deal.contact_id.in_(contacts),
            Deal.closed_at.is_(None),
            PipelineStage.outcome == "open",
        )
    ):
        if owner is not None:
            deals.setdefault(owner, []).append(OpenDeal(int(amount), currency))
    # The customer's messages after the last reply: what they are waiting to have answered.
    reply = aliased(Message)
    last_reply = (
        select(func.max(reply.id))
        .where(reply.conversation_id == Message.conversation_id, reply.direction == "outbound")
        .correlate(Message)
        .scalar_subquery()
    )
    texts: dict[int, list[str]] = {}
    intents: dict[int, list[str]] = {}
    for conversation_id, body, extra in await session.execute(
        select(Message.conversation_id, Message.body, Message.extra)
        .where(
            Message.conversation_id.in_(ids),
            Message.sender_type == "contact",
            Message.id > func.coalesce(last_reply, 0),
        )
        .order_by(Message.id)
    ):
        texts.setdefault(conversation_id, []).append(body or "")
        intent = _intent_name(extra or {})
        if intent is not None:
            intents.setdefault(conversation_id, []).append(intent)
    return {
        row.id: Signals(
            now=now,
            lifecycle_stage=row.lifecycle_stage,
            open_deals=tuple(deals.get(row.contact_id, ())),
            texts=tuple(texts.get(row.id, ())[-MAX_TEXTS:]),
            intents=tuple(intents.get(row.id, ())),
            waiting_since=row.waiting_since,
            tags=(*tags.get(row.contact_id, ()), *labels.get(row.id, ())),
        )
        for row in rows
    }


def apply(conversation: Conversation, assessment: Assessment, now: datetime) -> Changes:
    """Store the assessment on the conversation; the priority moves only while it is the scorer's."""
    reasons = assessment.reasons_as_dicts()
    if conversation.priority_score != assessment.score or conversation.priority_reasons != reasons:
        conversation.priority_score = assessment.score
        conversation.priority_reasons = reasons
        conversation.priority_scored_at = now
    if (
        conversation.priority_source != PrioritySource.COMPUTED
        or conversation.priority == assessment.priority
    ):
        return {}
    changes = {"priority": {"old": conversation.priority, "new": assessment.priority}}
    conversation.priority = assessment.priority
    return changes


def requeue(row: ConversationRouting | None, base: int, old: str, new: str) -> None:
    """Move a waiting conversation's routing row from level `old`'s place in the queue to `new`'s.

    The queue's integer priority is the inbox policy's default (`base`) raised to the level's
    (`ROUTING_PRIORITY`); one set by triage (the conversation's requirements) is only ever raised.
    """
    if row is None or row.state in (RoutingState.CLOSED, RoutingState.ASSIGNED):
        return
    wanted = max(base, ROUTING_PRIORITY.get(new, 0))
    derived = row.priority == max(base, ROUTING_PRIORITY.get(old, 0))
    row.priority = wanted if derived else max(row.priority, wanted)


async def _queue_places(
    session: AsyncSession, conversations: Sequence[Conversation]
) -> tuple[dict[int, ConversationRouting], dict[int, int]]:
    """The conversations' routing rows, and their inboxes' default routing priority."""
    ids = [c.id for c in conversations]
    rows = {
        r.conversation_id: r
        for r in (
            await session.scalars(
                select(ConversationRouting).where(ConversationRouting.conversation_id.in_(ids))
            )
        ).all()
    }
    inboxes = {c.inbox_id for c in conversations}
    bases = {
        inbox_id: int(priority or 0)
        for inbox_id, priority in await session.execute(
            select(RoutingPolicy.inbox_id, RoutingPolicy.priority).where(RoutingPolicy.inbox_id.in_(inboxes))
        )
        if inbox_id is not None
    }
    return rows, bases


async def follow_in_queue(session: AsyncSession, conversation: Conversation, old: str) -> None:
    """Move the conversation in the routing queue after its priority changed from `old`."""
    rows, bases = await _queue_places(session, [conversation])
    requeue(rows.get(conversation.id), bases.get(conversation.inbox_id, 0), old, conversation.priority)


async def recompute(
    session: AsyncSession,
    tenant_id: int,
    conversation_ids: Iterable[int],
    *,
    now: datetime | None = None,
    config: ScoringConfig | None = None,
    skip_locked: bool = False,
) -> list[int]:
    """Rescore the tenant's unresolved conversations among `conversation_ids`; those whose priority moved."""
    now = now or utcnow()
    if config is None:
        config, _ = await scoring_config(session, tenant_id)
    ids = sorted(set(conversation_ids))
    moved: list[int] = []
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        conversations = list(
            (
                await session.execute(
                    select(Conversation)
                    .where(
                        Conversation.tenant_id == tenant_id,
                        Conversation.id.in_(chunk),
                        Conversation.status != ConversationStatus.RESOLVED,
                    )
                    .order_by(Conversation.id)
                    .with_for_update(key_share=True, skip_locked=skip_locked)
                )
            ).scalars()
        )
        signals = await load_signals(session, tenant_id, [c.id for c in conversations], now)
        rows, bases = await _queue_places(session, conversations)
        events = []
        for conversation in conversations:
            old = conversation.priority
            changes = apply(conversation, assess(signals[conversation.id], config), now)
            if changes:
                requeue(
                    rows.get(conversation.id), bases.get(conversation.inbox_id, 0), old, conversation.priority
                )
                events.append(updated_event(conversation, changes, actor=SCORER, reason=SCORED))
                moved.append(conversation.id)
        await session.flush()
        await emit(session, tenant_id, *events)  # one INSERT for the batch's announcements
    return moved


async def hand_back(session: AsyncSession, tenant_id: int, conversation_id: int) -> None:
    """A reopened conversation's priority is the scorer's again (a manual one stood until resolved)."""
    conversation = (
        await session.execute(
            select(Conversation)
            .where(Conversation.id == conversation_id, Conversation.tenant_id == tenant_id)
            .with_for_update(key_share=True)
        )
    ).scalar_one_or_none()
    if conversation is not None and conversation.priority_source != PrioritySource.COMPUTED:
        conversation.priority_source = PrioritySource.COMPUTED
        conversation.priority_set_by_id = None
        await session.flush()


async def _unresolved_of_contact(session: AsyncSession, tenant_id: int, contact_id: int) -> list[int]:
    return list(
        (
            await session.execute(
                select(Conversation.id).where(
                    Conversation.tenant_id == tenant_id,
                    Conversation.contact_id == contact_id,
                    Conversation.status != ConversationStatus.RESOLVED,
                )
            )
        ).scalars()
    )


def _waiting_on_agent() -> Any:
    return (Conversation.status == ConversationStatus.OPEN) & (
        Conversation.priority_source == PrioritySource.COMPUTED
    )


async def sweep(db: Database, *, now: datetime | None = None) -> int:
    """Rescore every open conversation waiting for an answer (its waiting time grew); how many moved.

    Several sweepers may run at once: rows another one holds are skipped (it is scoring them).
    """
    now = now or utcnow()
    moved = 0
    after = 0
    configs: dict[int, ScoringConfig] = {}
    while True:
        async with db.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(Conversation.id, Conversation.tenant_id)
                    .where(
                        _waiting_on_agent(),
                        Conversation.id > after,
                        waiting_since_expression().is_not(None),
                    )
                    .order_by(Conversation.id)
                    .limit(BATCH)
                )
            ).all()
        if not rows:
            return moved
        after = rows[-1].id
        by_tenant: dict[int, list[int]] = {}
        for row in rows:
            by_tenant.setdefault(row.tenant_id, []).append(row.id)
        for tenant_id, ids in by_tenant.items():
            async with db.transaction() as session:
                if tenant_id not in configs:
                    configs[tenant_id], _ = await scoring_config(session, tenant_id)
                moved += len(
                    await recompute(
                        session, tenant_id, ids, now=now, config=configs[tenant_id], skip_locked=True
                    )
                )
        if len(rows) < BATCH:
            return moved


class Prioritizer:
    """The outbox handlers that keep computed priorities current, and the waiting-time sweep."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _rescore(self, tenant_id: int | None, conversation_ids: Iterable[int]) -> None:
        if tenant_id is None:
            return
        async with self.db.transaction() as session:
            await recompute(session, tenant_id, conversation_ids)

    async def on_conversation_event(self, event: Event) -> None:
        """`message.received`, `conversation.opened`: rescore the conversation."""
        await self._rescore(event.tenant_id, [int(event.payload["conversation_id"])])

    async def on_conversation_reopened(self, event: Event) -> None:
        """`conversation.reopened`: the scorer takes the priority back, then rescores."""
        if event.tenant_id is None:
            return
        conversation_id = int(event.payload["conversation_id"])
        async with self.db.transaction() as session:
            await hand_back(session, event.tenant_id, conversation_id)
            await recompute(session, event.tenant_id, [conversation_id])

    async def on_conversation_updated(self, event: Event) -> None:
        """Reopened by a person: as `conversation.reopened`; labels changed: rescore; set by hand: requeue."""
        if event.tenant_id is None:
            return
        changes: Mapping[str, Any] = event.payload.get("changes", {})
        conversation_id = int(event.payload["conversation_id"])
        status = changes.get("status") or {}
        if (
            status.get("old") == ConversationStatus.RESOLVED
            and status.get("new") != ConversationStatus.RESOLVED
        ):
            await self.on_conversation_reopened(event)
            return
        if "labels" in changes:
            await self._rescore(event.tenant_id, [conversation_id])
        changed_by = event.payload.get("changed_by") or {}
        if "priority" in changes and changed_by.get("type") == "user":
            # The scorer's own changes and escalations' already moved the queue.
            async with self.db.transaction() as session:
                conversation = (
                    await session.execute(
                        select(Conversation).where(
                            Conversation.id == conversation_id, Conversation.tenant_id == event.tenant_id
                        )
                    )
                ).scalar_one_or_none()
                if conversation is not None:
                    await follow_in_queue(session, conversation, str(changes["priority"].get("old")))

    async def on_contact_event(self, event: Event) -> None:
        """`contact.updated`, `contact.lifecycle_changed`, `deal.opened`: rescore the contact's."""
        if event.tenant_id is None or event.payload.get("contact_id") is None:
            return
        async with self.db.transaction() as session:
            ids = await _unresolved_of_contact(session, event.tenant_id, int(event.payload["contact_id"]))
            await recompute(session, event.tenant_id, ids)

    async def on_contact_merged(self, event: Event) -> None:
        """`contact.merged`: the survivor's conversations (theirs and the ones moved in) take its signals."""
        if event.tenant_id is None or event.payload.get("survivor_id") is None:
            return
        async with self.db.transaction() as session:
            ids = await _unresolved_of_contact(session, event.tenant_id, int(event.payload["survivor_id"]))
            await recompute(session, event.tenant_id, ids)

    async def on_deal_event(self, event: Event) -> None:
        """`deal.updated`, `deal.stage_changed`: rescore the deal's contact's conversations."""
        if event.tenant_id is None:
            return
        async with self.db.transaction() as session:
            contact_id = (
                await session.execute(
                    select(Deal.contact_id).where(
                        Deal.id == int(event.payload["deal_id"]), Deal.tenant_id == event.tenant_id
                    )
                )
            ).scalar()
            if contact_id is not None:
                ids = await _unresolved_of_contact(session, event.tenant_id, contact_id)
                await recompute(session, event.tenant_id, ids)

    async def on_config_changed(self, event: Event) -> None:
        """`priority.config_changed`: rescore the tenant's unresolved conversations, a batch at a time."""
        if event.tenant_id is None:
            return
        after = 0
        while True:
            async with self.db.transaction() as session:
                ids = list(
                    (
                        await session.execute(
                            select(Conversation.id)
                            .where(
                                Conversation.tenant_id == event.tenant_id,
                                Conversation.status != ConversationStatus.RESOLVED,
                                Conversation.id > after,
                            )
                            .order_by(Conversation.id)
                            .limit(BATCH)
                        )
                    ).scalars()
                )
                if not ids:
                    return
                await recompute(session, event.tenant_id, ids)
            after = ids[-1]

    async def sweep(self) -> int:
        return await sweep(self.db)

    async def run_sweeps(self, *, interval: float = 30.0) -> None:
        """Rescore waiting conversations every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a database hiccup
                logger.exception("priority sweep failed; retrying")


# Handled ahead of routing: a new conversation is queued at its computed priority, and a priority
# set by hand is in the queue before routing serves it.
FIRST_TOPICS = ("conversation.opened", "conversation.reopened", "conversation.updated", "message.received")


def subscribe(subscribers: dict[str, list[Handler]], prioritizer: Prioritizer) -> None:
    """Add the handlers rescoring for every topic that moves a signal to `subscribers`."""
    handlers: dict[str, Handler] = {
        "message.received": prioritizer.on_conversation_event,
        "conversation.opened": prioritizer.on_conversation_event,
        "conversation.reopened": prioritizer.on_conversation_reopened,
        "conversation.updated": prioritizer.on_conversation_updated,
        "contact.updated": prioritizer.on_contact_event,
        "contact.lifecycle_changed": prioritizer.on_contact_event,
        "contact.merged": prioritizer.on_contact_merged,
        "deal.opened": prioritizer.on_contact_event,
        "deal.updated": prioritizer.on_deal_event,
        "deal.stage_changed": prioritizer.on_deal_event,
        CONFIG_CHANGED_TOPIC: prioritizer.on_config_changed,
    }
    for topic, handler in handlers.items():
        others = subscribers.get(topic, [])
        subscribers[topic] = [handler, *others] if topic in FIRST_TOPICS else [*others, handler]
