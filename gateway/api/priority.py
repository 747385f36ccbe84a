"""Priority scoring through the API: the tenant's scoring settings, and a dry run on a conversation."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator
from sqlalchemy import select

from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import PriorityReason, RequestBody, ResponseBody
from gateway.errors import NotFound
from inbox.models import Conversation, ConversationPriority
from parley.db import utcnow
from parley.models import User
from routing.models import PriorityScoringConfig
from routing.prioritizer import load_signals, save_config, scoring_config
from routing.priority import DEFAULT_CONFIG, ScoringConfig, assess, explain

routes = RouteTable("priority")

Points = Annotated[int, Field(ge=0, le=1000)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Phrase = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Key = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Stage = Annotated[str, StringConstraints(pattern=r"^(visitor|lead|mql|sql|opportunity|customer|churned)$")]


class DealBandIn(RequestBody):
    min_amount_minor: int = Field(ge=0, description="The smallest amount in the band, in minor units.")
    points: Points


class WaitingIn(RequestBody):
    points_per_minute: float = Field(ge=0, le=100)
    max_points: Points


class VipIn(RequestBody):
    tag: Key = Field(description="The contact tag or conversation label that marks a VIP (any case).")
    points: Points


class ThresholdsIn(RequestBody):
    """The score from which each level applies; below `low`: no priority."""

    low: int = Field(ge=0, le=100_000)
    medium: int = Field(ge=0, le=100_000)
    high: int = Field(ge=0, le=100_000)
    urgent: int = Field(ge=0, le=100_000)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low <= self.medium <= self.high <= self.urgent:
            raise ValueError("thresholds must not decrease: low <= medium <= high <= urgent")
        return self


class PriorityConfig(RequestBody):
    """Priority scoring settings; a field left out keeps its default."""

    lifecycle_points: dict[Stage, Points] | None = Field(None, description="Points per lifecycle stage.")
    deal_bands: dict[Currency, list[DealBandIn]] | None = Field(
        None,
        description="Per ISO currency, bands of open-deal amounts (minor units) and their points; the "
        "best open deal counts. Amounts are never converted: a currency without bands scores nothing.",
    )
    urgency_phrases: dict[Key, dict[Phrase, Points]] | None = Field(
        None,
        description="Per language, words and phrases and their points, matched on word boundaries "
        "ignoring case and accents in the customer's unanswered messages (every language at once).",
    )
    urgency_max_points: Points | None = Field(None, description="The most urgency words add up to.")
    intent_points: dict[Key, Points] | None = Field(
        None, description="Points per intent the bot layer detected (`content_attributes.intent`)."
    )
    waiting: WaitingIn | None = None
    vip: VipIn | None = None
    thresholds: ThresholdsIn | None = None

    @model_validator(mode="after")
    def _not_too_large(self) -> Self:
        phrases = sum(len(by) for by in (self.urgency_phrases or {}).values())
        bands = sum(len(by) for by in (self.deal_bands or {}).values())
        if phrases > 1000 or bands > 500:
            raise ValueError("at most 1000 urgency phrases and 500 deal bands")
        return self

    def scoring(self) -> ScoringConfig:
        return ScoringConfig.from_dict(self.model_dump(exclude_none=True))

    @classmethod
    def of(cls, config: ScoringConfig) -> PriorityConfig:
        return cls.model_validate(config.as_dict())


class PriorityConfigOut(ResponseBody):
    config: PriorityConfig
    is_default: bool = Field(description="True while the tenant has saved no settings of its own.")
    updated_at: datetime | None
    updated_by_id: int | None


class PriorityDryRun(RequestBody):
    config: PriorityConfig | None = Field(
        None, description="The settings to try (fields left out: the defaults); null: the saved ones."
    )


class PriorityAssessmentOut(ResponseBody):
    conversation_id: int
    priority: ConversationPriority = Field(description="The level these settings compute.")
    score: int
    reasons: list[PriorityReason]
    explanation: str
    current_priority: ConversationPriority
    current_source: str = Field(description="Who set the current priority: computed, manual, escalation.")


assert set(DEFAULT_CONFIG) == set(PriorityConfig.model_fields)


async def _out(call: ApiRequest) -> PriorityConfigOut:
    config, is_default = await scoring_config(call.session, call.tenant_id)
    row = await call.session.get(PriorityScoringConfig, call.tenant_id)
    return PriorityConfigOut(
        config=PriorityConfig.of(config),
        is_default=is_default,
        updated_at=row.updated_at if row else None,
        updated_by_id=row.updated_by_id if row else None,
    )


@routes.get("/priority-scoring", allow=Permission.READ_CONVERSATIONS)
async def get_priority_scoring(call: ApiRequest) -> PriorityConfigOut:
    """The tenant's priority scoring settings (the defaults until some are saved)."""
    return await _out(call)


@routes.put("/priority-scoring", allow=Permission.MANAGE_ROUTING)
async def put_priority_scoring(call: ApiRequest, *, body: PriorityConfig) -> PriorityConfigOut:
    """Save the settings (fields left out: the defaults); every unresolved conversation is rescored."""
    updater = (
        await call.session.execute(
            select(User.id).where(User.id == call.principal.user_id, User.tenant_id == call.tenant_id)
        )
    ).scalar()
    await save_config(call.session, call.tenant_id, body.scoring(), updater)
    call.notify_after_commit()
    return await _out(call)


@routes.post("/conversations/{conversation_id}/priority/dry-run", allow=Permission.MANAGE_ROUTING, status=200)
async def dry_run_priority(
    call: ApiRequest, *, conversation_id: int, body: PriorityDryRun
) -> PriorityAssessmentOut:
    """Score a conversation now with proposed settings, without saving anything."""
    conversation = (
        await call.session.execute(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if conversation is None:
        raise NotFound("conversation")
    config = body.config.scoring() if body.config else (await scoring_config(call.session, call.tenant_id))[0]
    signals = await load_signals(call.session, call.tenant_id, [conversation.id], utcnow())
    assessment = assess(signals[conversation.id], config)
    reasons = assessment.reasons_as_dicts()
    return PriorityAssessmentOut(
        conversation_id=conversation.id,
        priority=ConversationPriority(assessment.priority),
        score=assessment.score,
        reasons=[PriorityReason.model_validate(r) for r in reasons],
        explanation=explain(assessment.priority, reasons),
        current_priority=ConversationPriority(conversation.priority),
        current_source=conversation.priority_source,
    )
