"""The deals board: a pipeline's stages as columns of deal cards, moved by drag and drop or keyboard.

`GET /deals` shows the board of one pipeline (`?pipeline=`; the first by default), filtered by
owner (`?owner=<user id>` or `none`), with each column's totals and the weighted forecast per owner
and per expected-close month. Dragging a card calls `POST /api/v1/deals/{id}/move` (deals.js), then
re-reads the board; each card also has a form (a stage select and up/down buttons) that posts to
`POST /deals/{id}/move`, for keyboards and for browsers without script. Both go through
`crm_core.deals.move_deal`, so a drop and a form move write the same positions and events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from babel.numbers import format_currency, get_currency_precision
from sqlalchemy import select

from crm_core.deals import forecast, move_deal, weighted
from crm_core.models import Company, Contact, Deal, Pipeline, PipelineStage
from gateway.api.permissions import Permission
from gateway.ui.web import Ui, page, redirect
from parley.models import User

PER_STAGE = 200


def money(amount_minor: int | Decimal, currency: str) -> str:
    """An amount in minor units as the currency writes it: `€1,250.00`, `¥1,250`."""
    try:
        digits = get_currency_precision(currency)
        return str(format_currency(Decimal(amount_minor).scaleb(-digits), currency, locale="en_US"))
    except (ValueError, LookupError):  # a code babel does not know: still show the number
        return f"{Decimal(amount_minor) / 100:,.2f} {currency}"


@dataclass(slots=True)
class Card:
    id: int
    title: str
    amount: str
    contact: str | None
    company: str | None
    owner: str | None
    expected_close: str | None
    stage_id: int
    position: int


@dataclass(slots=True)
class Column:
    id: int
    name: str
    probability: int
    outcome: str
    cards: list[Card] = field(default_factory=list)
    more: bool = False
    totals: list[str] = field(default_factory=list)
    weighted: list[str] = field(default_factory=list)


def _id(text: str | None) -> int | None:
    if text and text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


async def _names(ui: Ui, model: Any, ids: set[int], *columns: Any) -> dict[int, str]:
    if not ids:
        return {}
    rows = await ui.session.execute(
        select(model.id, *columns).where(model.id.in_(ids), model.tenant_id == ui.tenant_id)
    )
    return {row[0]: next((str(v) for v in row[1:] if v), f"#{row[0]}") for row in rows.all()}


def _sums(deals: Sequence[Deal], probability: int) -> tuple[list[str], list[str]]:
    amounts: dict[str, int] = defaultdict(int)
    for deal in deals:
        amounts[deal.currency] += deal.amount_minor
    totals = [money(amount, currency) for currency, amount in sorted(amounts.items())]
    expected = [
        money(weighted(amount, probability).quantize(Decimal(1)), currency)
        for currency, amount in sorted(amounts.items())
    ]
    return totals, expected


async def board_context(ui: Ui, query: Mapping[str, str]) -> dict[str, Any]:
    """The board of the pipeline and owner `query` names, with totals and forecasts."""
    session = ui.session
    pipelines = list(
        (
            await session.execute(
                select(Pipeline).where(Pipeline.tenant_id == ui.tenant_id).order_by(Pipeline.id)
            )
        ).scalars()
    )
    wanted = _id(query.get("pipeline"))
    pipeline = next((p for p in pipelines if p.id == wanted), pipelines[0] if pipelines else None)
    owner_param = query.get("owner", "")
    owner_id = _id(owner_param)
    users = (
        await session.execute(
            select(User.id, User.name, User.email)
            .where(User.tenant_id == ui.tenant_id)
            .order_by(User.name, User.email)
        )
    ).all()
    owner_names = {u.id: u.name or u.email for u in users}
    context: dict[str, Any] = {
        "pipelines": pipelines,
        "pipeline": pipeline,
        "owners": [{"id": u.id, "name": owner_names[u.id]} for u in users],
        "owner": owner_param if owner_param == "none" or owner_id is not None else "",
        "columns": [],
        "stages": [],
        "forecast_owner": [],
        "forecast_month": [],
        "can_move": ui.may(Permission.WRITE_DEALS),
        "query": urlencode(
            {k: v for k, v in (("pipeline", pipeline.id if pipeline else ""), ("owner", owner_param)) if v}
        ),
    }
    if pipeline is None:
        return context
    stages = list(
        (
            await session.execute(
                select(PipelineStage)
                .where(PipelineStage.pipeline_id == pipeline.id, PipelineStage.tenant_id == ui.tenant_id)
                .order_by(PipelineStage.position, PipelineStage.id)
            )
        ).scalars()
    )
    per_stage: dict[int, list[Deal]] = {}
    for stage in stages:
        stmt = select(Deal).where(Deal.stage_id == stage.id, Deal.tenant_id == ui.tenant_id)
        if owner_param == "none":
            stmt = stmt.where(Deal.owner_id.is_(None))
        elif owner_id is not None:
            stmt = stmt.where(Deal.owner_id == owner_id)
        per_stage[stage.id] = list(
            (await session.execute(stmt.order_by(Deal.position, Deal.id).limit(PER_STAGE + 1))).scalars()
        )
    every = [d for deals in per_stage.values() for d in deals]
    contacts = await _names(
        ui, Contact, {d.contact_id for d in every if d.contact_id}, Contact.name, Contact.email, Contact.phone
    )
    companies = await _names(ui, Company, {d.company_id for d in every if d.company_id}, Company.name)
    for stage in stages:
        deals = per_stage[stage.id]
        totals, expected = _sums(deals[:PER_STAGE], stage.probability)
        column = Column(
            stage.id,
            stage.name,
            stage.probability,
            stage.outcome,
            more=len(deals) > PER_STAGE,
            totals=totals,
            weighted=expected,
        )
        for deal in deals[:PER_STAGE]:
            column.cards.append(
                Card(
                    id=deal.id,
                    title=deal.title,
                    amount=money(deal.amount_minor, deal.currency),
                    contact=contacts.get(deal.contact_id) if deal.contact_id else None,
                    company=companies.get(deal.company_id) if deal.company_id else None,
                    owner=owner_names.get(deal.owner_id) if deal.owner_id else None,
                    expected_close=deal.expected_close.isoformat() if deal.expected_close else None,
                    stage_id=stage.id,
                    position=deal.position,
                )
            )
        context["columns"].append(column)
    context["stages"] = [{"id": s.id, "name": s.name} for s in stages]
    for group_by in ("owner", "month"):
        rows = await forecast(session, ui.tenant_id, group_by, pipeline_id=pipeline.id)
        context[f"forecast_{group_by}"] = [
            {
                "group": (
                    (owner_names.get(int(r.group), f"#{r.group}") if group_by == "owner" else r.group)
                    if r.group is not None
                    else ("No owner" if group_by == "owner" else "No date")
                ),
                "deals": r.deals,
                "amount": money(r.amount_minor, r.currency),
                "weighted": money(r.weighted_minor, r.currency),
            }
            for r in rows
        ]
    return context


@page(allow=Permission.READ_DEALS)
async def deals_board(ui: Ui) -> web.StreamResponse:
    """The board page; with `HX-Request`, the board alone (after a drop, the page re-reads it)."""
    context = await board_context(ui, ui.request.query)
    if ui.is_htmx():
        return ui.render("deals/_board.html", context)
    return ui.render("deals/board.html", context)


@page(allow=Permission.WRITE_DEALS)
async def move_deal_form(ui: Ui) -> web.StreamResponse:
    """The keyboard's move: a stage from the card's select, or one place up or down in its column."""
    form = await ui.request.post()
    deal_id = _id(ui.request.match_info["deal_id"])
    deal = None
    if deal_id is not None:
        deal = (
            await ui.session.execute(select(Deal).where(Deal.id == deal_id, Deal.tenant_id == ui.tenant_id))
        ).scalar_one_or_none()
    if deal is None:
        return web.Response(status=404, text="No such deal.")
    stage_id = _id(str(form.get("stage_id", ""))) or deal.stage_id
    stage = (
        await ui.session.execute(
            select(PipelineStage).where(
                PipelineStage.id == stage_id,
                PipelineStage.tenant_id == ui.tenant_id,
                PipelineStage.pipeline_id == deal.pipeline_id,
            )
        )
    ).scalar_one_or_none()
    if stage is None:
        return web.Response(status=422, text="That stage is not in the deal's pipeline.")
    step = str(form.get("step", ""))
    if stage.id == deal.stage_id and step in ("up", "down"):
        position: int | None = max(0, deal.position + (-1 if step == "up" else 1))
    else:
        position = None  # another column: to its bottom
    if await move_deal(ui.session, deal, stage, position):
        ui.notify_after_commit()
    # The filters the page showed, to show the same board again.
    shown = {k: str(form[k]) for k in ("pipeline", "owner") if form.get(k)}
    if ui.is_htmx():
        return ui.render("deals/_board.html", await board_context(ui, shown))
    return redirect("/deals" + (f"?{urlencode(shown)}" if shown else ""))


def setup_deal_routes(app: web.Application) -> None:
    app.router.add_get("/deals", deals_board)
    app.router.add_post("/deals/{deal_id}/move", move_deal_form)
