"""The API's request and response bodies; the OpenAPI document's components are generated from these."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
    model_validator,
)

from channels.registry import CHANNELS
from crm_core.lifecycle_stages import LifecycleStage
from inbox.listing import SORTS, VIEWS, Sort, View
from inbox.models import ConversationPriority, ConversationStatus, MessageStatus
from parley.auth import normalise_email
from parley.models import Presence, Role
from routing.priority import explain as explain_priority

V = TypeVar("V")

# Ids are 64-bit on PostgreSQL: a larger number cannot name a row and must not reach the driver.
MAX_ID = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]

MAX_MESSAGE_LENGTH = 4096
MAX_ATTACHMENTS = 10

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# A plausibility check only: the address is proven by mail reaching it, not by its syntax.


def merge_patch(current: Mapping[str, V], patch: Mapping[str, V | None]) -> dict[str, V]:
    """`current` with `patch` applied, one level deep: a key set to None is removed."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def normalise_phone(value: str) -> str:
    """E.164 for a valid phone number in international format; ValueError otherwise."""
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError("not a phone number in international format (e.g. +14155550100)") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{value!r} is not a valid phone number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _optional_phone(value: str | None) -> str | None:
    return None if value is None else normalise_phone(value)


def _checked_email(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as e:
        raise ValueError(f"{value!r} is not an email address: {e}") from None
    # Identities match case-insensitively: mail systems treat Ann@ and ann@ as one mailbox.
    return normalise_email(checked.normalized)


class RequestBody(BaseModel):
    """Base of every request model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ResponseBody(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- errors -------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    field: str = Field(description="Where the problem is, e.g. `body.settings.account_sid` or `query.limit`.")
    message: str
    type: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `not_found`, `validation_error`.")
    message: str = Field(description="What went wrong, for a person.")
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    """Every error the API answers."""

    error: ErrorBody


# --- pagination ---------------------------------------------------------------------------------


class PageQuery(RequestBody):
    limit: int = Field(50, ge=1, le=200, description="How many items to return (1-200).")
    cursor: str | None = Field(None, description="The `next_cursor` of the previous page.")


class Page(ResponseBody):
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


# --- me -----------------------------------------------------------------------------------------


class TenantOut(ResponseBody):
    id: int
    name: str


class MeOut(ResponseBody):
    user_id: int
    email: str
    name: str | None
    role: Role = Field(description="The role of the token, which may be narrower than the user's.")
    presence: Presence
    tenant: TenantOut


class PresenceUpdate(RequestBody):
    presence: Presence = Field(
        description="online: can take conversations; busy and away: keeps what they have; offline: gone."
    )


# --- inboxes ------------------------------------------------------------------------------------


_CHANNEL_NAMES: list[JsonValue] = [name for name in sorted(CHANNELS)]


def _known_channel(value: str) -> str:
    if value not in CHANNELS:
        raise ValueError(f"unknown channel {value!r}; known channels: {', '.join(sorted(CHANNELS))}")
    return value


class InboxCreate(RequestBody):
    name: Name
    channel: str = Field(json_schema_extra={"enum": _CHANNEL_NAMES})
    settings: dict[str, Any] = Field(default_factory=dict, description="Channel settings (not secret).")
    secrets: dict[str, str] = Field(
        default_factory=dict, description="Credentials, stored encrypted and never shown again."
    )

    _channel = field_validator("channel")(_known_channel)


class InboxUpdate(RequestBody):
    name: Name | None = None
    settings: dict[str, Any] | None = Field(
        None, description="Merged into the current settings; a key set to null is removed."
    )
    secrets: dict[str, str | None] | None = Field(
        None, description="Merged into the current secrets; a key set to null is removed."
    )


class InboxOut(ResponseBody):
    id: int
    name: str
    channel: str
    settings: dict[str, Any]
    secrets_set: list[str] = Field(
        description="Names of the secrets stored for this inbox (never their values)."
    )
    webhook_url: str = Field(description="Give this URL to the provider for incoming messages.")
    status_callback_url: str = Field(description="Give this URL to the provider for delivery reports.")
    created_at: datetime
    updated_at: datetime


class InboxList(Page):
    data: list[InboxOut]


# --- contacts -----------------------------------------------------------------------------------


Tag = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=64)]
ContactSort = Literal[
    "-id", "id", "-created_at", "created_at", "-updated_at", "updated_at", "name", "-name", "-score", "score"
]


class ContactQuery(PageQuery):
    q: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Substring of name, email or phone; an email or phone number (any format) also "
        "finds the contact it is an address of.",
    )
    phone: str | None = Field(None, description="Exact phone number, in international format.")
    email: str | None = Field(None, description="Exact email address (any case).")
    tag: Tag | None = None
    lifecycle_stage: LifecycleStage | None = None
    company_id: Id | None = None
    attribute: str | None = Field(
        None,
        max_length=300,
        description="`key:value`, a custom attribute's value (as text), e.g. `plan:gold`.",
    )
    min_score: float | None = Field(None, description="The score when it last changed is at least this.")
    sort: ContactSort = Field("-id", description="A field, `-` first for descending; `-id` is newest first.")

    _phone = field_validator("phone")(_optional_phone)
    _email = field_validator("email")(_checked_email)


class ContactCreate(RequestBody):
    name: Name | None = None
    email: str | None = None
    phone: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)] | None = (
        Field(
            None,
            description="International, or national in `region` (default: the tenant's CRM default region); "
            "stored as E.164.",
        )
    )
    region: Annotated[str, StringConstraints(pattern="^[A-Za-z]{2}$", to_upper=True)] | None = Field(
        None, description="ISO 3166 country a national-format phone is from, e.g. `GB`."
    )
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Custom attributes, checked by type."
    )
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    company_id: Id | None = None
    lifecycle_stage: LifecycleStage | None = Field(None, description="Default: `lead`.")

    _email = field_validator("email")(_checked_email)

    @model_validator(mode="after")
    def _not_empty(self) -> ContactCreate:
        if self.name is None and self.email is None and self.phone is None:
            raise ValueError("a contact needs a name, an email or a phone")
        return self


class ContactUpdate(RequestBody):
    name: Name | None = None
    email: str | None = None
    phone: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)] | None = (
        Field(
            None,
            description="International, or national in `region` (default: the tenant's CRM default region); "
            "stored as E.164 and added to the contact's identities.",
        )
    )
    region: Annotated[str, StringConstraints(pattern="^[A-Za-z]{2}$", to_upper=True)] | None = Field(
        None, description="ISO 3166 country a national-format phone is from, e.g. `GB`."
    )
    attributes: dict[str, Any] | None = Field(
        None, description="Merged into the current attributes; a key set to null is removed."
    )
    tags: list[Tag] | None = Field(None, max_length=50, description="Replaces the contact's tags.")
    company_id: Id | None = Field(None, description="A company of the tenant; null unlinks.")
    lifecycle_stage: LifecycleStage | None = Field(None, description="A manual move, kept in the history.")

    _email = field_validator("email")(_checked_email)


class ContactOut(ResponseBody):
    id: int
    name: str | None
    email: str | None
    phone: str | None
    attributes: dict[str, Any]
    company_id: int | None
    lifecycle_stage: LifecycleStage
    score: float = Field(
        description="The score when it last changed (it decays): see `/contacts/{id}/score`."
    )
    tags: list[str] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime


class IdentityOut(ResponseBody):
    id: int
    kind: str = Field(description="`phone`, `email`, or a provider's own id kind.")
    address: str
    created_at: datetime


class ConsentOut(ResponseBody):
    channel: str
    purpose: str = Field(description="`all` (every message on the channel) or `marketing`.")
    granted: bool
    source: str
    changed_at: datetime


class ContactDetail(ContactOut):
    identities: list[IdentityOut]
    consents: list[ConsentOut]


class ContactList(Page):
    data: list[ContactOut]


class ContactSummary(ResponseBody):
    id: int
    name: str | None
    email: str | None
    phone: str | None


# --- messages -----------------------------------------------------------------------------------


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return value


class AttachmentIn(RequestBody):
    url: Annotated[str, StringConstraints(max_length=2048)]
    content_type: Annotated[str, StringConstraints(max_length=100)] | None = None

    _url = field_validator("url")(_http_url)


class AttachmentOut(ResponseBody):
    url: str = Field(description="Where to fetch it; empty when it could not be stored (see `error`).")
    content_type: str | None = None
    filename: str | None = None
    size: int | None = None
    error: str | None = Field(None, description="Why Parley could not copy the file from the provider.")


class ButtonIn(RequestBody):
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="What comes back when the customer picks it."
    )
    title: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class TemplateIn(RequestBody):
    name: Annotated[str, StringConstraints(min_length=1, max_length=512)] = Field(
        description="Twilio: the Content SID (HX…); WhatsApp Cloud API: the approved template's name."
    )
    language: Annotated[str, StringConstraints(min_length=2, max_length=15)] | None = Field(
        None, description="The template's language code (Cloud API), e.g. `en_US`."
    )
    variables: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=20)],
        Annotated[str, StringConstraints(max_length=1024)],
    ] = Field(default_factory=dict, max_length=50, description='Values by placeholder: `{"1": "Ann"}`.')


class MessageCreate(RequestBody):
    body: str = Field(
        "", max_length=MAX_MESSAGE_LENGTH, description="Required unless there are attachments or a template."
    )
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)
    buttons: list[ButtonIn] = Field(
        default_factory=list,
        max_length=10,
        description="Quick replies; channels without buttons show them as a numbered list, and the "
        "customer's number is mapped back to the option.",
    )
    template: TemplateIn | None = Field(
        None, description="An approved template, the only thing WhatsApp delivers outside the 24-hour window."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> MessageCreate:
        if not self.body.strip() and not self.attachments and self.template is None:
            raise ValueError("a message needs a body, an attachment or a template")
        if self.buttons and not self.body.strip():
            raise ValueError("buttons need a body to go with them")
        return self


class MessageQuery(PageQuery):
    order: Literal["asc", "desc"] = Field(
        "asc", description="`asc`: oldest first (a thread), `desc`: newest first."
    )


class MessageOut(ResponseBody):
    id: int
    conversation_id: int
    direction: Literal["inbound", "outbound"]
    sender_type: str = Field(description="`contact`, `user`, `bot`…")
    sender_id: int | None
    body: str
    attachments: list[AttachmentOut]
    status: MessageStatus
    content_attributes: dict[str, Any] = Field(
        description="Typed content beyond text: `location`, `shared_contacts`, `button_reply` (inbound); "
        "`buttons`, `template` (outbound); `call`, `recording`, `voicemail` (phone calls); "
        "`mentions` (notes)."
    )
    provider_message_id: str | None = Field(
        description="The provider's id (Twilio's SM… sid) once sent or received."
    )
    error_code: str | None
    error_message: str | None
    private: bool = Field(
        False, description="An agents' note: never sent to the customer (see `/conversations/{id}/notes`)."
    )
    created_at: datetime
    updated_at: datetime


class MessageList(Page):
    data: list[MessageOut]


# --- conversations ------------------------------------------------------------------------------


LabelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class ConversationQuery(PageQuery):
    status: ConversationStatus | None = None
    inbox_id: Id | None = None
    assignee_id: Id | Literal["none"] | None = Field(None, description="A user id, or `none` for unassigned.")
    contact_id: Id | None = None
    view: View = Field(
        "all",
        description="`mine`: assigned to the caller; `unassigned`; `all`.",
        json_schema_extra={"enum": list(VIEWS)},
    )
    channel: str | None = Field(
        None,
        description="The inbox's channel, e.g. `twilio_sms`.",
        json_schema_extra={"enum": _CHANNEL_NAMES},
    )
    team_id: Id | None = Field(None, description="The team the conversation is routed to.")
    label: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] | None = (
        Field(None, description="A label name (any case).")
    )
    priority: ConversationPriority | None = None
    sort: Sort = Field(
        "newest",
        description="`newest`: last message first; `waiting`: the oldest unanswered customer message "
        "first; `priority`: urgent first, then newest.",
        json_schema_extra={"enum": list(SORTS)},
    )

    _channel = field_validator("channel")(lambda v: None if v is None else _known_channel(v))


class ConversationUpdate(RequestBody):
    status: ConversationStatus | None = Field(
        None, description="Resolving sets `resolved_at`; reopening clears it."
    )
    assignee_id: Id | None = Field(None, description="A user of the same tenant; null unassigns.")
    priority: ConversationPriority | None = Field(None, description="none, low, medium, high or urgent.")
    snoozed_until: AwareDatetime | None = Field(
        None,
        description="With `status: snoozed`: when it reopens by itself (in the future). Omitted or null: "
        "when the customer next writes.",
    )

    @field_validator("status", "priority", mode="before")
    @classmethod
    def _status_not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null")
        return value


class LabelSummary(ResponseBody):
    id: int
    name: str
    color: str


class PriorityReason(ResponseBody):
    """One reason for a computed priority: "open deal €12,000" (`deal`) scoring 30 points."""

    signal: Literal["lifecycle", "deal", "urgency", "intent", "waiting", "vip"]
    label: str
    points: int


class ConversationOut(ResponseBody):
    id: int
    inbox_id: int
    contact_id: int
    status: ConversationStatus
    assignee_id: int | None
    last_message_at: datetime | None
    last_inbound_at: datetime | None = Field(description="When the customer last wrote (WhatsApp's window).")
    thread_key: str | None = Field(description="The channel's thread (Slack), when the conversation is one.")
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    priority: ConversationPriority
    snoozed_until: datetime | None = Field(
        description="When a snoozed conversation reopens by itself; null while snoozed: at the "
        "customer's next message."
    )
    merged_into_id: int | None = Field(description="The conversation this one was merged into.")
    labels: list[LabelSummary] = Field(default_factory=list)
    unread_count: int = Field(0, description="Customer messages the caller has not read.")
    priority_source: Literal["computed", "manual", "escalation"] = Field(
        "computed",
        description="Who set `priority`: priority scoring, an agent (`priority_set_by_id`) or an SLA "
        "escalation. A manual or escalated priority stands until the conversation is resolved.",
    )
    priority_set_by_id: int | None = Field(None, description="The agent who set a manual priority.")
    priority_score: int | None = Field(None, description="The computed score (null: not scored yet).")
    priority_reasons: list[PriorityReason] = Field(
        default_factory=list, description="Why the computed score is what it is, strongest signals first."
    )
    priority_explanation: str = Field(
        "", description='"Priority high because: open deal €12,000 · waiting 14 min" (plain text).'
    )

    @field_validator("priority_reasons", mode="before")
    @classmethod
    def _no_reasons(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _explain(self) -> Self:
        if not self.priority_explanation:
            reasons = [r.model_dump() for r in self.priority_reasons]
            self.priority_explanation = explain_priority(str(self.priority), reasons, self.priority_source)
        return self


class ConversationDetail(ConversationOut):
    contact: ContactSummary
    last_message: MessageOut | None


class ConversationListItem(ConversationOut):
    """A line of the agents' list: the conversation and what the list shows of it."""

    contact_name: str = Field(description="The contact's name, else an address.")
    inbox_name: str
    channel: str
    assignee_name: str | None
    last_message_preview: str = Field(description="The last message as one line of plain text, shortened.")
    waiting_since: datetime | None = Field(
        description="When the oldest customer message not answered yet arrived; null: nothing unanswered."
    )


class ConversationList(Page):
    data: list[ConversationListItem]
