"""Lead scoring: declarative rules per tenant, points that decay, and a score that explains itself.

A rule's `trigger` is either `attribute` (points while the contact's attribute meets the condition;
no decay, it is a fact about the contact now) or an event type (points for each time it happened,
halved every `score_half_life_days`):

- `message.received`: the contact wrote; condition `{"keywords": [...]}` (any of the words) and/or
  `{"intent": "pricing"}` (the bot's intent, once bots set `extra.intent` on the message).
- `email.captured`: an email address was added to the contact.
- `deal.opened`: a deal was opened for the contact.
- `campaign.replied`: the contact replied to a campaign (emitted by campaigns, a later issue).

Matching is side-effect free (`rule_matches`); `record_event` stores what matched, and
`refresh_score` sums, stores the score and promotes a lead that crossed the MQL threshold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.lifecycle import advance_to
from crm_core.lifecycle_stages import STAGE_RANK, LifecycleStage
from crm_core.models import Contact, ScoreEvent, ScoringRule
from crm_core.tenant_settings import crm_settings
from parley.db import utcnow

ATTRIBUTE = "attribute"
EVENT_TRIGGERS = ("message.received", "email.captured", "deal.opened", "campaign.replied")
TRIGGERS = (ATTRIBUTE, *EVENT_TRIGGERS)
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists")


@dataclass(frozen=True, slots=True)
class Contribution:
    """Points one rule adds to a contact's score now."""

    rule_id: int | None
    rule_name: str
    trigger: str
    source: str | None
    points: float
    current_points: float
    occurred_at: datetime | None


@dataclass(frozen=True, slots=True)
class ScoreExplanation:
    score: float
    mql_threshold: float
    half_life_days: float
    contributions: tuple[Contribution, ...]


def decayed(points: float, age_days: float, half_life_days: float) -> float:
    """`points` after `age_days`, halved every `half_life_days` (no decay if the half-life is 0)."""
    if half_life_days <= 0 or age_days <= 0:
        return points
    return float(points * 0.5 ** (age_days / half_life_days))


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return actual is not None
    if actual is None:
        return False
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op == "in":
        return isinstance(expected, list) and actual in expected
    if op == "contains":
        return (
            isinstance(actual, str) and isinstance(expected, str) and expected.casefold() in actual.casefold()
        )
    try:
        a, b = float(actual), float(expected)
    except (TypeError, ValueError):
        if not (isinstance(actual, str) and isinstance(expected, str)):
            return False
        a, b = actual, expected  # type: ignore[assignment]  # ISO dates compare as strings
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}.get(op, False)


def rule_matches(rule: ScoringRule, context: Mapping[str, Any]) -> bool:
    """Whether `rule` gives points in `context` (an attribute map, or what the event carried)."""
    condition = rule.condition or {}
    if rule.trigger == ATTRIBUTE:
        return _compare(
            condition.get("op", "eq"), context.get(condition["attribute"]), condition.get("value")
        )
    keywords = condition.get("keywords")
    if keywords and not (_words(str(context.get("text", ""))) & {str(k).casefold() for k in keywords}):
        return False
    intent = condition.get("intent")
    return not (intent and context.get("intent") != intent)


async def _rules(session: AsyncSession, tenant_id: int, trigger: str | None = None) -> Sequence[ScoringRule]:
    stmt = select(ScoringRule).where(ScoringRule.tenant_id == tenant_id, ScoringRule.enabled.is_(True))
    if trigger is not None:
        stmt = stmt.where(ScoringRule.trigger == trigger)
    return (await session.execute(stmt.order_by(ScoringRule.id))).scalars().all()


async def record_event(
    session: AsyncSession,
    contact: Contact,
    trigger: str,
    source: str,
    context: Mapping[str, Any],
    *,
    occurred_at: datetime | None = None,
) -> ScoreExplanation | None:
    """Score what the contact did with every matching rule (once per rule and source); the new score."""
    scored = False
    for rule in await _rules(session, contact.tenant_id, trigger):
        if not rule_matches(rule, context):
            continue
        exists = (
            await session.execute(
                select(ScoreEvent.id).where(
                    ScoreEvent.contact_id == contact.id,
                    ScoreEvent.rule_id == rule.id,
                    ScoreEvent.source == source,
                )
            )
        ).first()
        if exists is not None:
            continue
        try:
            async with session.begin_nested():
                session.add(
                    ScoreEvent(
                        tenant_id=contact.tenant_id,
                        contact_id=contact.id,
                        rule_id=rule.id,
                        rule_name=rule.name,
                        trigger=trigger,
                        source=source[:100],
                        points=rule.points,
                        occurred_at=occurred_at or utcnow(),
                    )
                )
            scored = True
        except IntegrityError:
            continue  # a concurrent delivery of the same event scored it
    if not scored:
        return None
    return await refresh_score(session, contact)


async def explain(
    session: AsyncSession, contact: Contact, *, now: datetime | None = None
) -> ScoreExplanation:
    """The contact's score now, rule by rule and event by event."""
    now = now or utcnow()
    settings = await crm_settings(session, contact.tenant_id)
    contributions: list[Contribution] = []
    for rule in await _rules(session, contact.tenant_id, ATTRIBUTE):
        if rule_matches(rule, contact.attributes or {}):
            contributions.append(
                Contribution(rule.id, rule.name, ATTRIBUTE, None, rule.points, rule.points, None)
            )
    events = (
        await session.execute(
            select(ScoreEvent)
            .where(ScoreEvent.contact_id == contact.id)
            .order_by(ScoreEvent.occurred_at, ScoreEvent.id)
        )
    ).scalars()
    for event in events:
        age_days = (now - event.occurred_at).total_seconds() / 86400
        contributions.append(
            Contribution(
                event.rule_id,
                event.rule_name,
                event.trigger,
                event.source,
                event.points,
                round(decayed(event.points, age_days, settings.score_half_life_days), 4),
                event.occurred_at,
            )
        )
    total = round(sum(c.current_points for c in contributions), 4)
    return ScoreExplanation(
        total, settings.mql_threshold, settings.score_half_life_days, tuple(contributions)
    )


async def refresh_score(session: AsyncSession, contact: Contact) -> ScoreExplanation:
    """Store the contact's current score; a visitor or lead at or over the MQL threshold becomes an MQL."""
    explanation = await explain(session, contact)
    contact.score = explanation.score
    stage = LifecycleStage(contact.lifecycle_stage)
    if explanation.score >= explanation.mql_threshold and STAGE_RANK[stage] < STAGE_RANK[LifecycleStage.MQL]:
        await advance_to(
            session,
            contact,
            LifecycleStage.MQL,
            reason=f"score {explanation.score:g} reached the MQL threshold {explanation.mql_threshold:g}",
        )
    await session.flush()
    return explanation
