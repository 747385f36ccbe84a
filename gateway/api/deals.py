"""`/pipelines` and `/deals`: boards of ordered stages, deals on them, and the weighted forecast.

The agents' Kanban board (a later issue) needs three calls: `GET /pipelines/{id}/board` (the
columns with their deals in order), `POST /deals/{id}/move` (a drop: stage and position), and
`POST /conversations/{id}/deals` (the "create deal" button in a conversation).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select

from crm_core.deals import DEFAULT_STAGES, forecast, move_deal, open_deal
from crm_core.models import Company, Contact, Deal, DealConversation, Pipeline, PipelineStage
from gateway.api.crm_schemas import (
    BoardColumn,
    BoardOut,
    BoardQuery,
    DealCreate,
    DealFromConversation,
    DealList,
    DealMove,
    DealOut,
    DealQuery,
    DealUpdate,
    ForecastOut,
    ForecastQuery,
    ForecastRowOut,
    PipelineCreate,
    PipelineList,
    PipelineOut,
    PipelineUpdate,
    StageIn,
    StageOut,
    StageUpdate,
)
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable, field_errors
from gateway.api.sorting import SortKey, fetch_sorted_page, iso_date, iso_datetime
from gateway.errors import ApiError, NotFound
from inbox.models import Conversation
from parley.models import User
from parley.outbox import emit

routes = RouteTable("deals")

DEAL_UPDATED_TOPIC = "deal.updated"
_NEVER = dt.date.max

_SORT_KEYS = {
    "id": SortKey(Deal.id, lambda d: d.id, int),
    "amount_minor": SortKey(Deal.amount_minor, lambda d: d.amount_minor, int),
    # Deals without a date sort last (ascending): as if they closed at the end of time.
    "expected_close": SortKey(
        func.coalesce(Deal.expected_close, _NEVER), lambda d: d.expected_close or _NEVER, iso_date
    ),
    "position": SortKey(Deal.position, lambda d: d.position, int),
    "updated_at": SortKey(Deal.updated_at, lambda d: d.updated_at, iso_datetime),
}


# --- lookups, all scoped to the caller's tenant ---------------------------------------------------


async def _pipeline(call: ApiRequest, pipeline_id: int) -> Pipeline:
    row = (
        await call.session.execute(
            select(Pipeline).where(Pipeline.id == pipeline_id, Pipeline.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("pipeline")
    return row


async def _stages(call: ApiRequest, pipeline_id: int) -> list[PipelineStage]:
    rows = await call.session.execute(
        select(PipelineStage)
        .where(PipelineStage.pipeline_id == pipeline_id, PipelineStage.tenant_id == call.tenant_id)
        .order_by(PipelineStage.position, PipelineStage.id)
    )
    return list(rows.scalars())


async def _stage(call: ApiRequest, stage_id: int, *, field: str | None = None) -> PipelineStage:
    row = (
        await call.session.execute(
            select(PipelineStage).where(
                PipelineStage.id == stage_id, PipelineStage.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if row is None:
        if field:
            raise field_errors({field: "no such stage"})
        raise NotFound("stage")
    return row


async def _deal(call: ApiRequest, deal_id: int) -> Deal:
    row = (
        await call.session.execute(select(Deal).where(Deal.id == deal_id, Deal.tenant_id == call.tenant_id))
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("deal")
    return row


async def _owned(call: ApiRequest, model: Any, row_id: int | None, field: str) -> int | None:
    """`row_id` if it names a row of `model` in the caller's tenant; 422 on `field` otherwise."""
    if row_id is None:
        return None
    found = (
        await call.session.execute(
            select(model.id).where(model.id == row_id, model.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if found is None:
        raise field_errors({field: f"no such {model.__tablename__.rstrip('s')}"})
    return row_id


async def _conversation_ids(call: ApiRequest, deal_ids: Sequence[int]) -> dict[int, list[int]]:
    linked: dict[int, list[int]] = defaultdict(list)
    if deal_ids:
        rows = await call.session.execute(
            select(DealConversation.deal_id, DealConversation.conversation_id)
            .where(DealConversation.deal_id.in_(deal_ids))
            .order_by(DealConversation.conversation_id)
        )
        for deal_id, conversation_id in rows.all():
            linked[deal_id].append(conversation_id)
    return linked


async def _link_conversations(
    call: ApiRequest, deal: Deal, conversation_ids: Sequence[int], field: str
) -> None:
    wanted = set(conversation_ids)
    found = set(
        (
            await call.session.execute(
                select(Conversation.id).where(
                    Conversation.id.in_(wanted), Conversation.tenant_id == call.tenant_id
                )
            )
        ).scalars()
    )
    if found != wanted:
        raise field_errors({field: f"no such conversations: {sorted(wanted - found)}"})
    await call.session.execute(delete(DealConversation).where(DealConversation.deal_id == deal.id))
    for conversation_id in sorted(wanted):
        call.session.add(DealConversation(deal_id=deal.id, conversation_id=conversation_id))
    await call.session.flush()


async def _deal_out(call: ApiRequest, deal: Deal) -> DealOut:
    linked = await _conversation_ids(call, [deal.id])
    return DealOut.model_validate(deal).model_copy(update={"conversation_ids": linked[deal.id]})


def _pipeline_out(pipeline: Pipeline, stages: Sequence[PipelineStage]) -> PipelineOut:
    return PipelineOut(
        id=pipeline.id,
        name=pipeline.name,
        created_at=pipeline.created_at,
        stages=[StageOut.model_validate(s) for s in stages],
    )


# --- pipelines and stages ------------------------------------------------------------------------


@routes.get("/pipelines", allow=Permission.READ_DEALS)
async def list_pipelines(call: ApiRequest) -> PipelineList:
    """The tenant's pipelines with their stages in board order."""
    pipelines = (
        await call.session.execute(
            select(Pipeline).where(Pipeline.tenant_id == call.tenant_id).order_by(Pipeline.id)
        )
    ).scalars()
    return PipelineList(data=[_pipeline_out(p, await _stages(call, p.id)) for p in pipelines])


@routes.post("/pipelines", allow=Permission.MANAGE_CRM)
async def create_pipeline(call: ApiRequest, *, body: PipelineCreate) -> PipelineOut:
    """Create a pipeline with its stages (default: New, Qualified, Proposal, Negotiation, Won, Lost)."""
    stages = body.stages or [StageIn(name=n, probability=p, outcome=o) for n, p, o in DEFAULT_STAGES]
    pipeline = Pipeline(tenant_id=call.tenant_id, name=body.name)
    call.session.add(pipeline)
    await call.session.flush()
    for position, stage in enumerate(stages):
        call.session.add(
            PipelineStage(
                tenant_id=call.tenant_id,
                pipeline_id=pipeline.id,
                name=stage.name,
                position=position,
                probability=stage.probability,
                outcome=stage.outcome,
            )
        )
    await call.session.flush()
    return _pipeline_out(pipeline, await _stages(call, pipeline.id))


@routes.get("/pipelines/{pipeline_id}", allow=Permission.READ_DEALS)
async def get_pipeline(call: ApiRequest, *, pipeline_id: int) -> PipelineOut:
    """Get a pipeline with its stages."""
    pipeline = await _pipeline(call, pipeline_id)
    return _pipeline_out(pipeline, await _stages(call, pipeline.id))


@routes.patch("/pipelines/{pipeline_id}", allow=Permission.MANAGE_CRM)
async def update_pipeline(call: ApiRequest, *, pipeline_id: int, body: PipelineUpdate) -> PipelineOut:
    """Rename a pipeline."""
    pipeline = await _pipeline(call, pipeline_id)
    if body.name is not None:
        pipeline.name = body.name
    await call.session.flush()
    return _pipeline_out(pipeline, await _stages(call, pipeline.id))


@routes.delete("/pipelines/{pipeline_id}", allow=Permission.MANAGE_CRM, errors=[409])
async def delete_pipeline(call: ApiRequest, *, pipeline_id: int) -> None:
    """Delete an empty pipeline; 409 while it has deals."""
    pipeline = await _pipeline(call, pipeline_id)
    if (await call.session.execute(select(Deal.id).where(Deal.pipeline_id == pipeline.id).limit(1))).first():
        raise ApiError(409, "conflict", "The pipeline has deals; move or delete them first.")
    await call.session.execute(delete(PipelineStage).where(PipelineStage.pipeline_id == pipeline.id))
    await call.session.delete(pipeline)


@routes.post("/pipelines/{pipeline_id}/stages", allow=Permission.MANAGE_CRM)
async def add_stage(call: ApiRequest, *, pipeline_id: int, body: StageIn) -> StageOut:
    """Add a stage at the end of the pipeline (move it with PATCH `position`)."""
    pipeline = await _pipeline(call, pipeline_id)
    stage = PipelineStage(
        tenant_id=call.tenant_id,
        pipeline_id=pipeline.id,
        name=body.name,
        position=len(await _stages(call, pipeline.id)),
        probability=body.probability,
        outcome=body.outcome,
    )
    call.session.add(stage)
    await call.session.flush()
    return StageOut.model_validate(stage)


@routes.patch("/stages/{stage_id}", allow=Permission.MANAGE_CRM)
async def update_stage(call: ApiRequest, *, stage_id: int, body: StageUpdate) -> StageOut:
    """Rename a stage, change its probability or outcome, or move the column."""
    stage = await _stage(call, stage_id)
    if body.name is not None:
        stage.name = body.name
    if body.probability is not None:
        stage.probability = body.probability
    if body.outcome is not None:
        stage.outcome = body.outcome
    if body.position is not None:
        columns = [s for s in await _stages(call, stage.pipeline_id) if s.id != stage.id]
        columns.insert(min(body.position, len(columns)), stage)
        for position, column in enumerate(columns):
            column.position = position
    await call.session.flush()
    return StageOut.model_validate(stage)


@routes.delete("/stages/{stage_id}", allow=Permission.MANAGE_CRM, errors=[409])
async def delete_stage(call: ApiRequest, *, stage_id: int) -> None:
    """Delete an empty stage; 409 while deals are in it."""
    stage = await _stage(call, stage_id)
    if (await call.session.execute(select(Deal.id).where(Deal.stage_id == stage.id).limit(1))).first():
        raise ApiError(409, "conflict", "Deals are in this stage; move them first.")
    await call.session.delete(stage)


@routes.get("/pipelines/{pipeline_id}/board", allow=Permission.READ_DEALS)
async def pipeline_board(call: ApiRequest, *, pipeline_id: int, query: BoardQuery) -> BoardOut:
    """The pipeline as a Kanban board: each stage with its deals in board order."""
    pipeline = await _pipeline(call, pipeline_id)
    columns = []
    for stage in await _stages(call, pipeline.id):
        stmt = select(Deal).where(Deal.stage_id == stage.id, Deal.tenant_id == call.tenant_id)
        if query.owner_id is not None:
            stmt = stmt.where(Deal.owner_id == query.owner_id)
        deals = list(
            (
                await call.session.execute(stmt.order_by(Deal.position, Deal.id).limit(query.per_stage + 1))
            ).scalars()
        )
        linked = await _conversation_ids(call, [d.id for d in deals[: query.per_stage]])
        columns.append(
            BoardColumn(
                stage=StageOut.model_validate(stage),
                deals=[
                    DealOut.model_validate(d).model_copy(update={"conversation_ids": linked[d.id]})
                    for d in deals[: query.per_stage]
                ],
                more=len(deals) > query.per_stage,
            )
        )
    return BoardOut(pipeline_id=pipeline.id, columns=columns)


# --- deals ---------------------------------------------------------------------------------------


async def _placement(call: ApiRequest, pipeline_id: int | None, stage_id: int | None) -> PipelineStage:
    """The stage a new deal goes to: the one named, else the first of the pipeline named or the first one."""
    if stage_id is not None:
        stage = await _stage(call, stage_id, field="body.stage_id")
        if pipeline_id is not None and stage.pipeline_id != pipeline_id:
            raise field_errors({"body.stage_id": "the stage is not in that pipeline"})
        return stage
    if pipeline_id is None:
        pipeline_id = (
            await call.session.execute(
                select(Pipeline.id).where(Pipeline.tenant_id == call.tenant_id).order_by(Pipeline.id).limit(1)
            )
        ).scalar_one_or_none()
        if pipeline_id is None:
            raise ApiError(409, "no_pipeline", "Create a pipeline first (POST /pipelines).")
    else:
        await _owned(call, Pipeline, pipeline_id, "body.pipeline_id")
    stages = await _stages(call, pipeline_id)
    if not stages:
        raise ApiError(409, "no_stage", "The pipeline has no stages.")
    return stages[0]


async def _company_of(call: ApiRequest, contact_id: int | None) -> int | None:
    if contact_id is None:
        return None
    return (
        await call.session.execute(select(Contact.company_id).where(Contact.id == contact_id))
    ).scalar_one_or_none()


@routes.get("/deals", allow=Permission.READ_DEALS, errors=[400])
async def list_deals(call: ApiRequest, *, query: DealQuery) -> DealList:
    """List deals, filtered and sorted (newest first by default)."""
    stmt = select(Deal).where(Deal.tenant_id == call.tenant_id)
    for column, value in (
        (Deal.pipeline_id, query.pipeline_id),
        (Deal.stage_id, query.stage_id),
        (Deal.contact_id, query.contact_id),
        (Deal.company_id, query.company_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if query.owner_id == "none":
        stmt = stmt.where(Deal.owner_id.is_(None))
    elif query.owner_id is not None:
        stmt = stmt.where(Deal.owner_id == query.owner_id)
    if query.outcome is not None:
        stmt = stmt.where(
            Deal.stage_id.in_(select(PipelineStage.id).where(PipelineStage.outcome == query.outcome))
        )
    if query.close_from is not None:
        stmt = stmt.where(Deal.expected_close >= query.close_from)
    if query.close_to is not None:
        stmt = stmt.where(Deal.expected_close <= query.close_to)
    rows, next_cursor = await fetch_sorted_page(call.session, stmt, Deal.id, query.sort, _SORT_KEYS, query)
    linked = await _conversation_ids(call, [d.id for d in rows])
    return DealList(
        data=[DealOut.model_validate(d).model_copy(update={"conversation_ids": linked[d.id]}) for d in rows],
        next_cursor=next_cursor,
    )


@routes.post("/deals", allow=Permission.WRITE_DEALS, errors=[409])
async def create_deal(call: ApiRequest, *, body: DealCreate) -> DealOut:
    """Open a deal at the bottom of its stage; its contact becomes an opportunity (if not further along)."""
    stage = await _placement(call, body.pipeline_id, body.stage_id)
    contact_id = await _owned(call, Contact, body.contact_id, "body.contact_id")
    company_id = await _owned(call, Company, body.company_id, "body.company_id") or await _company_of(
        call, contact_id
    )
    owner_id = body.owner_id if body.owner_id is not None else call.principal.user_id
    await _owned(call, User, owner_id, "body.owner_id")
    deal = Deal(
        tenant_id=call.tenant_id,
        pipeline_id=stage.pipeline_id,
        stage_id=stage.id,
        title=body.title,
        amount_minor=body.amount_minor,
        currency=body.currency,
        owner_id=owner_id,
        expected_close=body.expected_close,
        contact_id=contact_id,
        company_id=company_id,
        source="api",
    )
    await open_deal(call.session, deal, stage)
    if body.conversation_ids:
        await _link_conversations(call, deal, body.conversation_ids, "body.conversation_ids")
    call.notify_after_commit()
    return await _deal_out(call, deal)


@routes.post("/conversations/{conversation_id}/deals", allow=Permission.WRITE_DEALS, errors=[409])
async def create_deal_from_conversation(
    call: ApiRequest, *, conversation_id: int, body: DealFromConversation
) -> DealOut:
    """Open a deal from a conversation: its contact and the contact's company, the conversation linked.

    For an agent's "create deal" button, a bot's lead capture (`source: bot`) or a rule.
    """
    conversation = (
        await call.session.execute(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if conversation is None:
        raise NotFound("conversation")
    contact = await call.session.get(Contact, conversation.contact_id)
    stage = await _placement(call, body.pipeline_id, body.stage_id)
    owner_id = (
        body.owner_id if body.owner_id is not None else conversation.assignee_id or call.principal.user_id
    )
    await _owned(call, User, owner_id, "body.owner_id")
    deal = Deal(
        tenant_id=call.tenant_id,
        pipeline_id=stage.pipeline_id,
        stage_id=stage.id,
        title=body.title or (contact.name if contact and contact.name else f"Conversation {conversation.id}"),
        amount_minor=body.amount_minor,
        currency=body.currency,
        owner_id=owner_id,
        expected_close=body.expected_close,
        contact_id=conversation.contact_id,
        company_id=contact.company_id if contact else None,
        source=body.source,
    )
    await open_deal(call.session, deal, stage)
    await _link_conversations(call, deal, [conversation.id], "conversation_id")
    call.notify_after_commit()
    return await _deal_out(call, deal)


@routes.get("/deals/forecast", allow=Permission.READ_DEALS)
async def deals_forecast(call: ApiRequest, *, query: ForecastQuery) -> ForecastOut:
    """The weighted forecast: amount * stage probability summed per owner or close month, and currency."""
    rows = await forecast(
        call.session,
        call.tenant_id,
        query.group_by,
        pipeline_id=query.pipeline_id,
        close_from=query.close_from,
        close_to=query.close_to,
    )
    return ForecastOut(
        group_by=query.group_by,
        data=[
            ForecastRowOut(
                group=r.group,
                currency=r.currency,
                deals=r.deals,
                amount_minor=r.amount_minor,
                weighted_minor=r.weighted_minor,
            )
            for r in rows
        ],
    )


@routes.get("/deals/{deal_id}", allow=Permission.READ_DEALS)
async def get_deal(call: ApiRequest, *, deal_id: int) -> DealOut:
    """Get a deal."""
    return await _deal_out(call, await _deal(call, deal_id))


@routes.patch("/deals/{deal_id}", allow=Permission.WRITE_DEALS)
async def update_deal(call: ApiRequest, *, deal_id: int, body: DealUpdate) -> DealOut:
    """Change a deal's title, amount, currency, owner, expected close, contact, company or conversations."""
    deal = await _deal(call, deal_id)
    given = body.model_fields_set
    changed = []
    if body.title is not None:
        deal.title = body.title
        changed.append("title")
    if body.amount_minor is not None:
        deal.amount_minor = body.amount_minor
        changed.append("amount_minor")
    if body.currency is not None:
        deal.currency = body.currency
        changed.append("currency")
    if "owner_id" in given:
        deal.owner_id = await _owned(call, User, body.owner_id, "body.owner_id")
        changed.append("owner_id")
    if "expected_close" in given:
        deal.expected_close = body.expected_close
        changed.append("expected_close")
    if "contact_id" in given:
        deal.contact_id = await _owned(call, Contact, body.contact_id, "body.contact_id")
        changed.append("contact_id")
    if "company_id" in given:
        deal.company_id = await _owned(call, Company, body.company_id, "body.company_id")
        changed.append("company_id")
    if body.conversation_ids is not None:
        await _link_conversations(call, deal, body.conversation_ids, "body.conversation_ids")
        changed.append("conversation_ids")
    if changed:
        await call.session.flush()
        await emit(
            call.session, call.tenant_id, (DEAL_UPDATED_TOPIC, {"deal_id": deal.id, "changed": changed})
        )
        call.notify_after_commit()
    return await _deal_out(call, deal)


@routes.post("/deals/{deal_id}/move", allow=Permission.WRITE_DEALS, status=200)
async def move_deal_to(call: ApiRequest, *, deal_id: int, body: DealMove) -> DealOut:
    """Move a deal on the board: to `position` (0 = top) of a stage of its pipeline.

    Won and lost stages close the deal; a won deal makes its contact a customer.
    """
    deal = await _deal(call, deal_id)
    stage = await _stage(call, body.stage_id, field="body.stage_id")
    if stage.pipeline_id != deal.pipeline_id:
        raise field_errors({"body.stage_id": "the stage is in another pipeline"})
    if await move_deal(call.session, deal, stage, body.position):
        call.notify_after_commit()
    return await _deal_out(call, deal)


@routes.delete("/deals/{deal_id}", allow=Permission.WRITE_DEALS)
async def delete_deal(call: ApiRequest, *, deal_id: int) -> None:
    """Delete a deal."""
    await call.session.delete(await _deal(call, deal_id))
