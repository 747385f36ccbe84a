"""Privacy through the API: the audit log, consent per contact, export, erasure, retention policies."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator
from sqlalchemy import delete, select

from crm_core.consent import PURPOSES, change_consent
from crm_core.models import Consent
from gateway.api.pagination import fetch_page
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable, _bearer_token
from gateway.api.schemas import Id, Page, PageQuery, RequestBody, ResponseBody
from gateway.errors import ApiError, NotFound
from gateway.keys import MEDIA
from inbox.models import ConversationDailyStats, Inbox, RetentionPolicy
from inbox.privacy import ContactNotFound, delete_media, erase_contact, export_contact
from parley.audit import Actor, ActorType, AuditEntry, audit
from parley.outbox import emit

routes = RouteTable("privacy")

ERASED_TOPIC = "contact.erased"
Purpose = Literal["all", "marketing", "transactional"]
Channel = Annotated[str, StringConstraints(pattern=r"^[a-z_]{2,20}$")]

assert set(Purpose.__args__) == set(PURPOSES)  # type: ignore[attr-defined]


def actor_of(call: ApiRequest) -> Actor:
    """The audit actor of an API call: the user, through a token or a signed-in session."""
    kind: ActorType = "api_token" if _bearer_token(call.request) is not None else "user"
    return Actor(kind, call.principal.user_id, call.request.remote)


async def audit_merge(call: ApiRequest, survivor_id: int, merged_id: int, merge_id: int | None) -> None:
    """The audit entry of a contact merge (ids only: the merge's own record keeps the snapshot)."""
    await audit(
        call.session,
        tenant_id=call.tenant_id,
        actor=actor_of(call),
        action="contact.merged",
        object_type="contact",
        object_id=survivor_id,
        details={"merged_id": merged_id, "merge_id": merge_id},
    )


# --- audit log ------------------------------------------------------------------------------------


class AuditQuery(PageQuery):
    action: Annotated[str, StringConstraints(max_length=60)] | None = Field(
        None, description="Only this action, e.g. `consent.changed`, `contact.erased`, `retention.swept`."
    )
    object_type: Annotated[str, StringConstraints(max_length=40)] | None = None
    object_id: Id | None = None
    actor_type: Literal["user", "api_token", "contact", "system"] | None = None
    actor_id: Id | None = None
    since: datetime | None = Field(None, description="Entries at or after this time.")
    until: datetime | None = Field(None, description="Entries before this time.")


class AuditEntryOut(ResponseBody):
    id: int
    at: datetime
    actor_type: str
    actor_id: int | None
    action: str
    object_type: str
    object_id: int | None
    details: dict[str, Any]
    ip: str | None


class AuditLog(Page):
    data: list[AuditEntryOut]


@routes.get("/audit-log", allow=Permission.READ_AUDIT_LOG)
async def list_audit_log(call: ApiRequest, *, query: AuditQuery) -> AuditLog:
    """The tenant's audit log, newest first: consent changes, exports, erasures, retention sweeps."""
    stmt = select(AuditEntry).where(AuditEntry.tenant_id == call.tenant_id)
    for column, value in (
        (AuditEntry.action, query.action),
        (AuditEntry.object_type, query.object_type),
        (AuditEntry.object_id, query.object_id),
        (AuditEntry.actor_type, query.actor_type),
        (AuditEntry.actor_id, query.actor_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if query.since is not None:
        stmt = stmt.where(AuditEntry.at >= query.since)
    if query.until is not None:
        stmt = stmt.where(AuditEntry.at < query.until)
    rows, cursor = await fetch_page(call.session, stmt, AuditEntry.id, query)
    return AuditLog(data=[AuditEntryOut.model_validate(r) for r in rows], next_cursor=cursor)


# --- consent --------------------------------------------------------------------------------------


class ConsentDecision(ResponseBody):
    channel: str
    purpose: str
    granted: bool
    source: str
    changed_at: datetime


class ConsentList(ResponseBody):
    contact_id: int
    data: list[ConsentDecision]


class ConsentIn(RequestBody):
    channel: Channel = Field(description="`sms`, `whatsapp`, `email`, `webchat`, `telegram`…")
    purpose: Purpose = Field(
        description="`all` messages on the channel, or only `marketing` or `transactional`."
    )
    granted: bool
    source: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)] = Field(
        "api", description="Where the decision was made (a form, a call…); stored as `api:<source>`."
    )


async def _contact_exists(call: ApiRequest, contact_id: int) -> None:
    from crm_core.models import Contact

    found = await call.session.execute(
        select(Contact.id).where(Contact.id == contact_id, Contact.tenant_id == call.tenant_id)
    )
    if found.scalar_one_or_none() is None:
        raise NotFound("contact")


async def _consents(call: ApiRequest, contact_id: int) -> ConsentList:
    rows = await call.session.execute(
        select(Consent)
        .where(Consent.contact_id == contact_id, Consent.tenant_id == call.tenant_id)
        .order_by(Consent.channel, Consent.purpose)
    )
    return ConsentList(
        contact_id=contact_id, data=[ConsentDecision.model_validate(c) for c in rows.scalars()]
    )


@routes.get("/contacts/{contact_id}/consent", allow=Permission.READ_CONTACTS)
async def get_consent(call: ApiRequest, *, contact_id: int) -> ConsentList:
    """The contact's consent decisions per channel and purpose, with their source and time."""
    await _contact_exists(call, contact_id)
    return await _consents(call, contact_id)


@routes.put("/contacts/{contact_id}/consent", allow=Permission.WRITE_CONTACTS)
async def put_consent(call: ApiRequest, *, contact_id: int, body: ConsentIn) -> ConsentList:
    """Record a consent decision for a channel and purpose; audited, announced as `contact.consent_changed`.

    A withdrawal of `all` stops every message on the channel; of `marketing` only campaigns; of
    `transactional` also replies in conversations. Repeating the current decision changes nothing.
    """
    await _contact_exists(call, contact_id)
    changed = await change_consent(
        call.session,
        tenant_id=call.tenant_id,
        contact_id=contact_id,
        channel=body.channel,
        purpose=body.purpose,
        granted=body.granted,
        source=f"api:{body.source}" if body.source != "api" else "api",
        actor=actor_of(call),
    )
    if changed:
        call.notify_after_commit()
    return await _consents(call, contact_id)


# --- export and erasure ---------------------------------------------------------------------------


class ContactExport(ResponseBody):
    format: str
    exported_at: datetime
    contact: dict[str, Any]
    company: dict[str, Any] | None
    records: dict[str, list[dict[str, Any]]] = Field(
        description="Every other table referring to the contact, by table name (identities, tags, deals…)."
    )
    conversations: list[dict[str, Any]] = Field(
        description="Each with its `messages`; attachments carry `download_url`."
    )
    conversation_records: dict[str, list[dict[str, Any]]] = Field(
        description="Every other table referring to those conversations (labels, SLA clocks…)."
    )
    consent_history: list[dict[str, Any]]
    audit: list[dict[str, Any]]


@routes.get("/contacts/{contact_id}/export", allow=Permission.EXPORT_CONTACTS)
async def export_contact_data(call: ApiRequest, *, contact_id: int) -> ContactExport:
    """Everything held about a contact, as JSON (a GDPR access request); audited.

    Contact-linked tables are found from the database schema, so a feature's new table is included.
    """
    try:
        data = await export_contact(
            call.session, tenant_id=call.tenant_id, contact_id=contact_id, media=call.app[MEDIA]
        )
    except ContactNotFound:
        raise NotFound("contact") from None
    await audit(
        call.session,
        tenant_id=call.tenant_id,
        actor=actor_of(call),
        action="contact.exported",
        object_type="contact",
        object_id=contact_id,
        details={
            "conversations": len(data["conversations"]),
            "tables": sorted(name for name, rows in data["records"].items() if rows),
        },
    )
    return ContactExport.model_validate(data)


class ErasureIn(RequestBody):
    confirm: Literal["erase"] = Field(description='Must be "erase": erasure cannot be undone.')
    reason: Annotated[str, StringConstraints(max_length=500)] = Field(
        "", description="Kept in the audit log."
    )


class ErasureOut(ResponseBody):
    contact_id: int
    name: str
    identities: int
    tags: int
    conversations: int
    messages: int
    attachments: int
    merge_audits: int
    other_columns: dict[str, int]
    files_deleted: int


@routes.post("/contacts/{contact_id}/erase", allow=Permission.ERASE_CONTACTS, status=200, errors=[422])
async def erase_contact_data(call: ApiRequest, *, contact_id: int, body: ErasureIn) -> ErasureOut:
    """Anonymise a contact (GDPR erasure): name, addresses, attributes, tags, message text and files.

    Rows stay (conversations, messages, deals), so counts and reports still add up; consent
    decisions stay, so an opt-out is still honoured. One transaction; attachment files are deleted
    after it commits. Audited without the erased data; announced as `contact.erased`.
    """
    media = call.app[MEDIA]
    try:
        report = await erase_contact(
            call.session, tenant_id=call.tenant_id, contact_id=contact_id, media=media
        )
    except ContactNotFound:
        raise NotFound("contact") from None
    counts = report.counts()
    await audit(
        call.session,
        tenant_id=call.tenant_id,
        actor=actor_of(call),
        action="contact.erased",
        object_type="contact",
        object_id=contact_id,
        details={**counts, "reason": body.reason},
    )
    await emit(call.session, call.tenant_id, (ERASED_TOPIC, {"contact_id": contact_id}))
    call.notify_after_commit()
    out = ErasureOut(contact_id=contact_id, name=f"Erased contact #{contact_id}", files_deleted=0, **counts)

    async def remove_files() -> None:
        # After the commit: a rollback must not leave messages pointing at deleted files.
        out.files_deleted = await delete_media(media, report.media_keys)

    call.after_commit(remove_files)
    return out


# --- retention ------------------------------------------------------------------------------------


class RetentionRule(RequestBody):
    inbox_id: Id | None = Field(
        None, description="This inbox's conversations; null: every inbox without its own rule."
    )
    resolved_after_days: int = Field(
        ge=1, le=36500, description="Delete resolved conversations this many days after."
    )


class RetentionIn(RequestBody):
    policies: list[RetentionRule] = Field(
        max_length=500, description="The whole set; an empty list keeps everything."
    )

    @model_validator(mode="after")
    def _one_per_inbox(self) -> RetentionIn:
        inboxes = [p.inbox_id for p in self.policies]
        if len(inboxes) != len(set(inboxes)):
            raise ValueError("one policy per inbox (and one default, inbox_id null)")
        return self


class RetentionRuleOut(ResponseBody):
    inbox_id: int | None
    resolved_after_days: int
    updated_at: datetime


class RetentionOut(ResponseBody):
    policies: list[RetentionRuleOut]


async def _retention(call: ApiRequest) -> RetentionOut:
    rows = await call.session.execute(
        select(RetentionPolicy)
        .where(RetentionPolicy.tenant_id == call.tenant_id)
        .order_by(RetentionPolicy.id)
    )
    return RetentionOut(policies=[RetentionRuleOut.model_validate(r) for r in rows.scalars()])


@routes.get("/retention", allow=Permission.MANAGE_RETENTION)
async def get_retention(call: ApiRequest) -> RetentionOut:
    """The tenant's retention policies."""
    return await _retention(call)


@routes.put("/retention", allow=Permission.MANAGE_RETENTION, errors=[422])
async def put_retention(call: ApiRequest, *, body: RetentionIn) -> RetentionOut:
    """Replace the retention policies: resolved conversations older than N days are deleted by a sweep.

    The sweep runs hourly (in `parley serve`, or the `parley.retention_sweep` beat task) and keeps
    per-day counts of what it deleted (`GET /retention/stats`). Audited.
    """
    wanted = {p.inbox_id for p in body.policies if p.inbox_id is not None}
    if wanted:
        found = set(
            (
                await call.session.execute(
                    select(Inbox.id).where(Inbox.id.in_(wanted), Inbox.tenant_id == call.tenant_id)
                )
            ).scalars()
        )
        missing = sorted(wanted - found)
        if missing:
            raise ApiError(422, "unknown_inbox", f"No inbox {missing[0]} in this tenant.")
    before = await _retention(call)
    await call.session.execute(delete(RetentionPolicy).where(RetentionPolicy.tenant_id == call.tenant_id))
    for rule in body.policies:
        call.session.add(
            RetentionPolicy(
                tenant_id=call.tenant_id, inbox_id=rule.inbox_id, resolved_after_days=rule.resolved_after_days
            )
        )
    await call.session.flush()
    await audit(
        call.session,
        tenant_id=call.tenant_id,
        actor=actor_of(call),
        action="retention.changed",
        object_type="tenant",
        object_id=call.tenant_id,
        details={
            "before": [p.model_dump(include={"inbox_id", "resolved_after_days"}) for p in before.policies],
            "after": [p.model_dump() for p in body.policies],
        },
    )
    return await _retention(call)


class StatsQuery(RequestBody):
    since: date | None = None
    until: date | None = None
    inbox_id: Id | None = None


class DailyStatsOut(ResponseBody):
    inbox_id: int
    day: date
    conversations: int
    messages_in: int
    messages_out: int


class DailyStatsList(ResponseBody):
    data: list[DailyStatsOut]


@routes.get("/retention/stats", allow=Permission.MANAGE_RETENTION)
async def retention_stats(call: ApiRequest, *, query: StatsQuery) -> DailyStatsList:
    """What retention deleted, counted per inbox and the day each conversation was opened.

    Add these to live counts for reports that reach back past the retention period.
    """
    stmt = select(ConversationDailyStats).where(ConversationDailyStats.tenant_id == call.tenant_id)
    if query.since is not None:
        stmt = stmt.where(ConversationDailyStats.day >= query.since)
    if query.until is not None:
        stmt = stmt.where(ConversationDailyStats.day < query.until)
    if query.inbox_id is not None:
        stmt = stmt.where(ConversationDailyStats.inbox_id == query.inbox_id)
    rows = await call.session.execute(
        stmt.order_by(ConversationDailyStats.day, ConversationDailyStats.inbox_id).limit(10000)
    )
    return DailyStatsList(data=[DailyStatsOut.model_validate(r) for r in rows.scalars()])
