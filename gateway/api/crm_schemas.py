"""Request and response bodies of the CRM API: companies, custom attributes, scoring, merges, deals."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import pycountry
from pydantic import Field, StringConstraints, field_validator, model_validator

from crm_core.attributes import AttributeType
from crm_core.lifecycle_stages import LifecycleStage
from crm_core.scoring import OPERATORS, TRIGGERS
from gateway.api.schemas import Id, Name, Page, PageQuery, RequestBody, ResponseBody

Key = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Domain = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        max_length=253,
        pattern=r"^([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$",
    ),
]

# --- identities, duplicates, merges --------------------------------------------------------------


class IdentityCreate(RequestBody):
    kind: Literal["phone", "email", "whatsapp_user_id", "telegram", "slack", "web_visitor"]
    address: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=320)] = Field(
        description="A phone (international, or national in `region`), an email, or the provider's id."
    )
    region: Annotated[str, StringConstraints(pattern="^[A-Za-z]{2}$", to_upper=True)] | None = None


class DuplicateOut(ResponseBody):
    contact_id: int
    other_id: int
    reasons: list[str] = Field(description="Why they look like one person, e.g. `same email (ann@acme.com)`.")


class DuplicateList(ResponseBody):
    data: list[DuplicateOut]


class DuplicateQuery(RequestBody):
    limit: int = Field(50, ge=1, le=200)


class MergeRequest(RequestBody):
    merge_id: Id = Field(description="The contact merged into this one (and then deleted).")
    reason: Annotated[str, StringConstraints(max_length=500)] = ""


class MergeReportOut(ResponseBody):
    survivor_id: int
    merged_id: int
    merge_id: int | None = Field(description="The audit record; null in a preview.")
    identities: list[dict[str, Any]]
    conversations_moved: list[int]
    conversations_resolved: list[int] = Field(
        description="The merged contact's unresolved conversations in an inbox where the survivor had one."
    )
    messages_relinked: int
    deals_moved: list[int]
    consents_moved: list[dict[str, Any]]
    consents_dropped: list[dict[str, Any]] = Field(
        description="Decisions superseded: a withdrawal on either contact wins, else the most recent."
    )
    score_events_moved: int
    lifecycle_changes_moved: int
    lifecycle_stage: str
    tags_added: list[str]
    fields_filled: list[str]
    attributes_added: list[str]
    company_id: int | None
    other_references: dict[str, int]


class MergeAuditOut(ResponseBody):
    id: int
    survivor_id: int
    merged_id: int
    merged_snapshot: dict[str, Any]
    report: dict[str, Any]
    user_id: int | None
    reason: str
    created_at: dt.datetime


class MergeAuditList(ResponseBody):
    data: list[MergeAuditOut]


# --- lifecycle and score -------------------------------------------------------------------------


class LifecycleChangeOut(ResponseBody):
    from_stage: str | None
    to_stage: str
    reason: str
    user_id: int | None
    created_at: dt.datetime


class LifecycleHistory(ResponseBody):
    stage: LifecycleStage
    history: list[LifecycleChangeOut]


class ContributionOut(ResponseBody):
    rule_id: int | None
    rule_name: str
    trigger: str
    source: str | None = Field(
        description="What happened (`message:42`, `deal:7`); null for attribute rules."
    )
    points: float = Field(description="What the rule gave.")
    current_points: float = Field(description="What is left of it after decay.")
    occurred_at: dt.datetime | None


class ScoreOut(ResponseBody):
    score: float
    mql_threshold: float
    half_life_days: float
    contributions: list[ContributionOut]


class ScoringRuleCreate(RequestBody):
    name: Name
    trigger: str = Field(json_schema_extra={"enum": list(TRIGGERS)})
    condition: dict[str, Any] = Field(
        default_factory=dict,
        description='attribute: `{"attribute": "plan", "op": "eq", "value": "pro"}`; message.received: '
        '`{"keywords": ["pricing", "quote"]}` and/or `{"intent": "pricing"}`.',
    )
    points: float = Field(ge=-1000, le=1000)
    enabled: bool = True

    @field_validator("trigger")
    @classmethod
    def _known_trigger(cls, value: str) -> str:
        if value not in TRIGGERS:
            raise ValueError(f"unknown trigger; one of {', '.join(TRIGGERS)}")
        return value

    @model_validator(mode="after")
    def _condition_fits(self) -> ScoringRuleCreate:
        c = self.condition
        if self.trigger == "attribute":
            if not isinstance(c.get("attribute"), str) or not c["attribute"]:
                raise ValueError("an attribute rule needs condition.attribute")
            if c.get("op", "eq") not in OPERATORS:
                raise ValueError(f"condition.op must be one of {', '.join(OPERATORS)}")
            unknown = set(c) - {"attribute", "op", "value"}
        else:
            keywords = c.get("keywords")
            if keywords is not None and (
                not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords)
            ):
                raise ValueError("condition.keywords must be a list of words")
            if c.get("intent") is not None and not isinstance(c["intent"], str):
                raise ValueError("condition.intent must be a string")
            unknown = set(c) - {"keywords", "intent"}
        if unknown:
            raise ValueError(f"unknown condition keys: {', '.join(sorted(unknown))}")
        return self


class ScoringRuleUpdate(RequestBody):
    name: Name | None = None
    points: float | None = Field(None, ge=-1000, le=1000)
    enabled: bool | None = None


class ScoringRuleOut(ResponseBody):
    id: int
    name: str
    trigger: str
    condition: dict[str, Any]
    points: float
    enabled: bool
    created_at: dt.datetime


class ScoringRuleList(ResponseBody):
    data: list[ScoringRuleOut]


class CrmSettingsOut(ResponseBody):
    default_region: str | None = Field(description="Where national phone numbers are read as being from.")
    mql_threshold: float
    score_half_life_days: float


class CrmSettingsUpdate(RequestBody):
    default_region: Annotated[str, StringConstraints(pattern="^[A-Za-z]{2}$", to_upper=True)] | None = None
    mql_threshold: float | None = Field(None, gt=0, le=100000)
    score_half_life_days: float | None = Field(None, ge=0, le=3650, description="0: points never decay.")


# --- custom attributes ---------------------------------------------------------------------------


class AttributeDefinitionCreate(RequestBody):
    key: Key
    label: Name
    type: AttributeType
    options: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=200, description="The allowed values of an `enum`."
    )
    entity: Literal["contact", "company"] = "contact"

    @model_validator(mode="after")
    def _options_for_enums(self) -> AttributeDefinitionCreate:
        if (self.type == AttributeType.ENUM) != bool(self.options):
            raise ValueError("an enum needs options, and only an enum has them")
        return self


class AttributeDefinitionUpdate(RequestBody):
    label: Name | None = None
    options: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] | None = Field(
        None, max_length=200
    )


class AttributeDefinitionOut(ResponseBody):
    id: int
    entity: str
    key: str
    label: str
    type: AttributeType
    options: list[str]
    created_at: dt.datetime


class AttributeDefinitionList(ResponseBody):
    data: list[AttributeDefinitionOut]


# --- companies -----------------------------------------------------------------------------------


class CompanyQuery(PageQuery):
    q: str | None = Field(None, min_length=1, max_length=200, description="Substring of name or domain.")
    domain: Domain | None = None


class CompanyCreate(RequestBody):
    name: Name
    domain: Domain | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class CompanyUpdate(RequestBody):
    name: Name | None = None
    domain: Domain | None = None
    attributes: dict[str, Any] | None = Field(None, description="Merged; a key set to null is removed.")


class CompanyOut(ResponseBody):
    id: int
    name: str
    domain: str | None
    attributes: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


class CompanyList(Page):
    data: list[CompanyOut]


# --- pipelines and deals -------------------------------------------------------------------------


def _currency(value: str) -> str:
    code = value.upper()
    if len(code) != 3 or pycountry.currencies.get(alpha_3=code) is None:
        raise ValueError(f"{value!r} is not an ISO 4217 currency code")
    return code


Currency = Annotated[str, StringConstraints(min_length=3, max_length=3)]
Outcome = Literal["open", "won", "lost"]


class StageIn(RequestBody):
    name: Name
    probability: int = Field(ge=0, le=100, description="Percent chance a deal in this stage closes.")
    outcome: Outcome = "open"


class StageUpdate(RequestBody):
    name: Name | None = None
    probability: int | None = Field(None, ge=0, le=100)
    outcome: Outcome | None = None
    position: int | None = Field(None, ge=0, description="Move the column (0 = first).")


class StageOut(ResponseBody):
    id: int
    pipeline_id: int
    name: str
    position: int
    probability: int
    outcome: str


class PipelineCreate(RequestBody):
    name: Name
    stages: list[StageIn] | None = Field(
        None,
        max_length=50,
        description="In board order; default: New, Qualified, Proposal, Negotiation, Won, Lost.",
    )


class PipelineUpdate(RequestBody):
    name: Name | None = None


class PipelineOut(ResponseBody):
    id: int
    name: str
    stages: list[StageOut]
    created_at: dt.datetime


class PipelineList(ResponseBody):
    data: list[PipelineOut]


DealSort = Literal[
    "-id",
    "id",
    "amount_minor",
    "-amount_minor",
    "expected_close",
    "-expected_close",
    "position",
    "-updated_at",
]


class DealQuery(PageQuery):
    pipeline_id: Id | None = None
    stage_id: Id | None = None
    owner_id: Id | Literal["none"] | None = Field(None, description="A user id, or `none` for no owner.")
    contact_id: Id | None = None
    company_id: Id | None = None
    outcome: Outcome | None = None
    close_from: dt.date | None = Field(None, description="Expected close on or after.")
    close_to: dt.date | None = Field(None, description="Expected close on or before.")
    sort: DealSort = Field("-id", description="`position` is board order within a stage.")


class DealCreate(RequestBody):
    title: Name
    pipeline_id: Id | None = Field(None, description="Default: the tenant's first pipeline.")
    stage_id: Id | None = Field(None, description="Default: the pipeline's first stage.")
    amount_minor: int = Field(0, ge=0, le=10**15, description="In minor units (cents) of `currency`.")
    currency: Currency
    owner_id: Id | None = Field(None, description="Default: the caller.")
    expected_close: dt.date | None = None
    contact_id: Id | None = None
    company_id: Id | None = Field(None, description="Default: the contact's company.")
    conversation_ids: list[Id] = Field(default_factory=list, max_length=50)

    _currency = field_validator("currency")(_currency)


class DealFromConversation(RequestBody):
    title: Name | None = Field(None, description="Default: the contact's name, or the conversation's number.")
    pipeline_id: Id | None = None
    stage_id: Id | None = None
    amount_minor: int = Field(0, ge=0, le=10**15)
    currency: Currency
    owner_id: Id | None = None
    expected_close: dt.date | None = None
    source: Literal["agent", "bot", "rule"] = Field(
        "agent", description="Who asked: an agent's button, a bot, a rule."
    )

    _currency = field_validator("currency")(_currency)


class DealUpdate(RequestBody):
    title: Name | None = None
    amount_minor: int | None = Field(None, ge=0, le=10**15)
    currency: Currency | None = None
    owner_id: Id | None = Field(None, description="null: no owner.")
    expected_close: dt.date | None = None
    contact_id: Id | None = None
    company_id: Id | None = None
    conversation_ids: list[Id] | None = Field(
        None, max_length=50, description="Replaces the linked conversations."
    )

    @field_validator("currency")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        return None if value is None else _currency(value)


class DealMove(RequestBody):
    stage_id: Id = Field(description="A stage of the deal's pipeline.")
    position: int | None = Field(None, ge=0, description="0 = top of the column; omitted: the bottom.")


class DealOut(ResponseBody):
    id: int
    title: str
    pipeline_id: int
    stage_id: int
    position: int
    amount_minor: int
    currency: str
    owner_id: int | None
    expected_close: dt.date | None
    contact_id: int | None
    company_id: int | None
    conversation_ids: list[int] = Field(default_factory=list)
    source: str
    created_at: dt.datetime
    updated_at: dt.datetime
    closed_at: dt.datetime | None


class DealList(Page):
    data: list[DealOut]


class BoardColumn(ResponseBody):
    stage: StageOut
    deals: list[DealOut]
    more: bool = Field(description="The column has more deals than `per_stage`.")


class BoardOut(ResponseBody):
    pipeline_id: int
    columns: list[BoardColumn]


class BoardQuery(RequestBody):
    per_stage: int = Field(100, ge=1, le=500)
    owner_id: Id | None = None


class ForecastQuery(RequestBody):
    group_by: Literal["owner", "month"]
    pipeline_id: Id | None = None
    close_from: dt.date | None = None
    close_to: dt.date | None = None


class ForecastRowOut(ResponseBody):
    group: str | None = Field(
        description="The owner's user id, or the expected-close month `YYYY-MM`; null: none."
    )
    currency: str
    deals: int
    amount_minor: int
    weighted_minor: int = Field(description="Sum of amount * stage probability, in minor units.")


class ForecastOut(ResponseBody):
    group_by: str
    data: list[ForecastRowOut]
