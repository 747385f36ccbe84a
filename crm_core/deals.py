"""Deals on pipeline boards: ordering within a stage, moving between stages, the weighted forecast."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.lifecycle import advance_to
from crm_core.lifecycle_stages import LifecycleStage
from crm_core.models import Contact, Deal, PipelineStage
from parley.db import utcnow
from parley.outbox import emit

DEAL_OPENED_TOPIC = "deal.opened"
DEAL_STAGE_CHANGED_TOPIC = "deal.stage_changed"

DEFAULT_STAGES: tuple[tuple[str, int, str], ...] = (
    ("New", 10, "open"),
    ("Qualified", 25, "open"),
    ("Proposal", 50, "open"),
    ("Negotiation", 75, "open"),
    ("Won", 100, "won"),
    ("Lost", 0, "lost"),
)


async def place(session: AsyncSession, deal: Deal, stage: PipelineStage, position: int | None) -> None:
    """Put the deal at `position` (0 = top; None or past the end = bottom) of `stage`; renumber the column."""
    column = list(
        (
            await session.execute(
                select(Deal)
                .where(Deal.stage_id == stage.id, Deal.id != deal.id)
                .order_by(Deal.position, Deal.id)
                .with_for_update()
            )
        ).scalars()
    )
    index = len(column) if position is None else max(0, min(position, len(column)))
    column.insert(index, deal)
    deal.stage_id, deal.pipeline_id = stage.id, stage.pipeline_id
    for number, row in enumerate(column):
        if row.position != number:
            row.position = number
    await session.flush()


async def _follow_outcome(session: AsyncSession, deal: Deal, stage: PipelineStage) -> None:
    """Closing dates and the contact's lifecycle follow the stage a deal is in."""
    deal.closed_at = None if stage.outcome == "open" else (deal.closed_at or utcnow())
    if deal.contact_id is None:
        return
    contact = await session.get(Contact, deal.contact_id)
    if contact is None:
        return
    if stage.outcome == "won":
        await advance_to(session, contact, LifecycleStage.CUSTOMER, reason=f"deal {deal.id} won")
    elif stage.outcome == "open":
        await advance_to(session, contact, LifecycleStage.OPPORTUNITY, reason=f"deal {deal.id} open")


async def open_deal(
    session: AsyncSession, deal: Deal, stage: PipelineStage, *, position: int | None = None
) -> Deal:
    """Add a new deal to the bottom (or `position`) of its stage; emits `deal.opened`."""
    session.add(deal)
    await session.flush()
    await place(session, deal, stage, position)
    await _follow_outcome(session, deal, stage)
    await emit(
        session,
        deal.tenant_id,
        (DEAL_OPENED_TOPIC, {"deal_id": deal.id, "contact_id": deal.contact_id, "source": deal.source}),
    )
    return deal


async def move_deal(session: AsyncSession, deal: Deal, stage: PipelineStage, position: int | None) -> bool:
    """Move the deal to `position` in `stage`; emits `deal.stage_changed` when the stage changed."""
    old_stage = deal.stage_id
    await place(session, deal, stage, position)
    if old_stage == stage.id:
        return False
    await _follow_outcome(session, deal, stage)
    await emit(
        session,
        deal.tenant_id,
        (
            DEAL_STAGE_CHANGED_TOPIC,
            {
                "deal_id": deal.id,
                "from_stage_id": old_stage,
                "to_stage_id": stage.id,
                "outcome": stage.outcome,
            },
        ),
    )
    return True


# --- forecast ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForecastRow:
    group: str | None
    currency: str
    deals: int
    amount_minor: int
    weighted_minor: int


def weighted(amount_minor: int, probability: int) -> Decimal:
    """The expected value of one deal in minor units, unrounded."""
    return Decimal(amount_minor) * probability / 100


def round_minor(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


async def forecast(
    session: AsyncSession,
    tenant_id: int,
    group_by: Literal["owner", "month"],
    *,
    pipeline_id: int | None = None,
    close_from: date | None = None,
    close_to: date | None = None,
) -> Sequence[ForecastRow]:
    """Sum of amount * stage probability per owner or expected-close month, and currency.

    Lost deals weigh 0 (their stage's probability). The database sums amount * probability exactly
    (integers); rounding to minor units (half-even) happens once per group, so no per-deal rounding
    error adds up.
    """
    group: Any
    if group_by == "owner":
        group = Deal.owner_id
    elif session.bind is not None and session.bind.dialect.name == "sqlite":
        group = func.strftime("%Y-%m", Deal.expected_close)
    else:
        group = func.to_char(Deal.expected_close, "YYYY-MM")
    stmt = (
        select(
            group.label("grp"),
            Deal.currency,
            func.count(Deal.id),
            func.sum(Deal.amount_minor),
            func.sum(Deal.amount_minor * PipelineStage.probability),
        )
        .join(PipelineStage, PipelineStage.id == Deal.stage_id)
        .where(Deal.tenant_id == tenant_id)
        .group_by(group, Deal.currency)
    )
    if pipeline_id is not None:
        stmt = stmt.where(Deal.pipeline_id == pipeline_id)
    if close_from is not None:
        stmt = stmt.where(Deal.expected_close >= close_from)
    if close_to is not None:
        stmt = stmt.where(Deal.expected_close <= close_to)
    totals: dict[tuple[str | None, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for grp, currency, count, amount, product in (await session.execute(stmt)).all():
        key = (None if grp is None else str(grp), currency)
        totals[key][0] += int(count)
        totals[key][1] += int(amount or 0)
        totals[key][2] += int(product or 0)
    return [
        ForecastRow(grp, currency, count, amount, round_minor(Decimal(product) / 100))
        for (grp, currency), (count, amount, product) in sorted(
            totals.items(), key=lambda item: (item[0][0] is None, item[0][0] or "", item[0][1])
        )
    ]
