"""`/crm`: a tenant's CRM configuration: settings, custom attribute definitions, lead scoring rules."""

from __future__ import annotations

from sqlalchemy import select

from crm_core.models import AttributeDefinition, CrmSettings, ScoringRule
from crm_core.tenant_settings import crm_settings
from gateway.api.crm_schemas import (
    AttributeDefinitionCreate,
    AttributeDefinitionList,
    AttributeDefinitionOut,
    AttributeDefinitionUpdate,
    CrmSettingsOut,
    CrmSettingsUpdate,
    ScoringRuleCreate,
    ScoringRuleList,
    ScoringRuleOut,
    ScoringRuleUpdate,
)
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable, field_errors
from gateway.errors import NotFound

routes = RouteTable("crm")


@routes.get("/crm/settings", allow=Permission.READ_CONTACTS)
async def get_crm_settings(call: ApiRequest) -> CrmSettingsOut:
    """The tenant's CRM settings: default phone region, MQL threshold, score half-life."""
    current = await crm_settings(call.session, call.tenant_id)
    return CrmSettingsOut(
        default_region=current.default_region,
        mql_threshold=current.mql_threshold,
        score_half_life_days=current.score_half_life_days,
    )


@routes.patch("/crm/settings", allow=Permission.MANAGE_CRM)
async def update_crm_settings(call: ApiRequest, *, body: CrmSettingsUpdate) -> CrmSettingsOut:
    """Change the tenant's CRM settings."""
    row = await call.session.get(CrmSettings, call.tenant_id)
    if row is None:
        current = await crm_settings(call.session, call.tenant_id)
        row = CrmSettings(
            tenant_id=call.tenant_id,
            default_region=current.default_region,
            mql_threshold=current.mql_threshold,
            score_half_life_days=current.score_half_life_days,
        )
        call.session.add(row)
    given = body.model_fields_set
    if "default_region" in given:
        row.default_region = body.default_region
    if body.mql_threshold is not None:
        row.mql_threshold = body.mql_threshold
    if body.score_half_life_days is not None:
        row.score_half_life_days = body.score_half_life_days
    await call.session.flush()
    return CrmSettingsOut.model_validate(row)


# --- custom attributes ---------------------------------------------------------------------------


async def _definition(call: ApiRequest, definition_id: int) -> AttributeDefinition:
    row = (
        await call.session.execute(
            select(AttributeDefinition).where(
                AttributeDefinition.id == definition_id, AttributeDefinition.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("attribute definition")
    return row


@routes.get("/crm/attributes", allow=Permission.READ_CONTACTS)
async def list_attribute_definitions(call: ApiRequest) -> AttributeDefinitionList:
    """The tenant's custom attributes of contacts and companies."""
    rows = await call.session.execute(
        select(AttributeDefinition)
        .where(AttributeDefinition.tenant_id == call.tenant_id)
        .order_by(AttributeDefinition.entity, AttributeDefinition.key)
    )
    return AttributeDefinitionList(data=[AttributeDefinitionOut.model_validate(r) for r in rows.scalars()])


@routes.post("/crm/attributes", allow=Permission.MANAGE_CRM, errors=[409])
async def create_attribute_definition(
    call: ApiRequest, *, body: AttributeDefinitionCreate
) -> AttributeDefinitionOut:
    """Define a custom attribute: values of its key are then checked against its type; 409 if defined."""
    row = AttributeDefinition(
        tenant_id=call.tenant_id,
        entity=body.entity,
        key=body.key,
        label=body.label,
        type=body.type,
        options=list(body.options),
    )
    call.session.add(row)
    await call.session.flush()
    return AttributeDefinitionOut.model_validate(row)


@routes.patch("/crm/attributes/{attribute_id}", allow=Permission.MANAGE_CRM)
async def update_attribute_definition(
    call: ApiRequest, *, attribute_id: int, body: AttributeDefinitionUpdate
) -> AttributeDefinitionOut:
    """Change an attribute's label or an enum's options (the key and type stay: values depend on them)."""
    row = await _definition(call, attribute_id)
    if body.label is not None:
        row.label = body.label
    if body.options is not None:
        if row.type != "enum" or not body.options:
            raise field_errors({"body.options": "only an enum has options, and at least one"})
        row.options = list(body.options)
    await call.session.flush()
    return AttributeDefinitionOut.model_validate(row)


@routes.delete("/crm/attributes/{attribute_id}", allow=Permission.MANAGE_CRM)
async def delete_attribute_definition(call: ApiRequest, *, attribute_id: int) -> None:
    """Stop checking an attribute; the values contacts have are kept."""
    await call.session.delete(await _definition(call, attribute_id))


# --- scoring rules -------------------------------------------------------------------------------


async def _rule(call: ApiRequest, rule_id: int) -> ScoringRule:
    row = (
        await call.session.execute(
            select(ScoringRule).where(ScoringRule.id == rule_id, ScoringRule.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("scoring rule")
    return row


@routes.get("/crm/scoring-rules", allow=Permission.READ_CONTACTS)
async def list_scoring_rules(call: ApiRequest) -> ScoringRuleList:
    """The tenant's lead scoring rules."""
    rows = await call.session.execute(
        select(ScoringRule).where(ScoringRule.tenant_id == call.tenant_id).order_by(ScoringRule.id)
    )
    return ScoringRuleList(data=[ScoringRuleOut.model_validate(r) for r in rows.scalars()])


@routes.post("/crm/scoring-rules", allow=Permission.MANAGE_SCORING)
async def create_scoring_rule(call: ApiRequest, *, body: ScoringRuleCreate) -> ScoringRuleOut:
    """Add a scoring rule: points for an attribute (while it holds) or for an event (decaying).

    Triggers: `attribute`, `message.received` (with `keywords` and/or `intent`), `email.captured`,
    `deal.opened`, `campaign.replied`. Rules apply to events from now on.
    """
    row = ScoringRule(
        tenant_id=call.tenant_id,
        name=body.name,
        trigger=body.trigger,
        condition=body.condition,
        points=body.points,
        enabled=body.enabled,
    )
    call.session.add(row)
    await call.session.flush()
    return ScoringRuleOut.model_validate(row)


@routes.patch("/crm/scoring-rules/{rule_id}", allow=Permission.MANAGE_SCORING)
async def update_scoring_rule(call: ApiRequest, *, rule_id: int, body: ScoringRuleUpdate) -> ScoringRuleOut:
    """Rename, re-weight (for future events) or switch a rule on or off."""
    row = await _rule(call, rule_id)
    if body.name is not None:
        row.name = body.name
    if body.points is not None:
        row.points = body.points
    if body.enabled is not None:
        row.enabled = body.enabled
    await call.session.flush()
    return ScoringRuleOut.model_validate(row)


@routes.delete("/crm/scoring-rules/{rule_id}", allow=Permission.MANAGE_SCORING)
async def delete_scoring_rule(call: ApiRequest, *, rule_id: int) -> None:
    """Delete a rule; points it already gave stay (under its name) and decay."""
    await call.session.delete(await _rule(call, rule_id))
