"""`/contacts`: people, the addresses they are reachable at, their consent, tags, stage, score, merges."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Select, and_, delete, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.attributes import AttributeType, definitions, validate_attributes
from crm_core.companies import link_company_from_email
from crm_core.duplicates import duplicates_of, tenant_duplicates
from crm_core.identities import match_key, normalise_email, normalise_phone, search_keys
from crm_core.lifecycle import set_stage
from crm_core.lifecycle_stages import LifecycleStage
from crm_core.merge import merge_contacts
from crm_core.models import (
    ChannelIdentity,
    Company,
    Consent,
    Contact,
    ContactMerge,
    ContactTag,
    LifecycleChange,
)
from crm_core.scoring import explain, refresh_score
from crm_core.subscribers import IDENTITY_ADDED_TOPIC
from crm_core.tenant_settings import crm_settings
from gateway.api.crm_schemas import (
    ContributionOut,
    DuplicateList,
    DuplicateOut,
    DuplicateQuery,
    IdentityCreate,
    LifecycleChangeOut,
    LifecycleHistory,
    MergeAuditList,
    MergeAuditOut,
    MergeReportOut,
    MergeRequest,
    ScoreOut,
)
from gateway.api.permissions import Permission
from gateway.api.privacy import audit_merge
from gateway.api.routing import ApiRequest, RouteTable, field_errors
from gateway.api.schemas import (
    ConsentOut,
    ContactCreate,
    ContactDetail,
    ContactList,
    ContactOut,
    ContactQuery,
    ContactUpdate,
    IdentityOut,
    merge_patch,
)
from gateway.api.sorting import SortKey, fetch_sorted_page, iso_datetime
from gateway.errors import ApiError, NotFound
from parley.outbox import emit

routes = RouteTable("contacts")

_SORT_KEYS = {
    "id": SortKey(Contact.id, lambda c: c.id, int),
    "created_at": SortKey(Contact.created_at, lambda c: c.created_at, iso_datetime),
    "updated_at": SortKey(Contact.updated_at, lambda c: c.updated_at, iso_datetime),
    "name": SortKey(func.coalesce(func.lower(Contact.name), ""), lambda c: (c.name or "").lower(), str),
    "score": SortKey(Contact.score, lambda c: c.score, float),
}


async def get_contact_row(call: ApiRequest, contact_id: int) -> Contact:
    """The tenant's contact with this id; 404 if there is none (or it is another tenant's)."""
    contact = (
        await call.session.execute(
            select(Contact).where(Contact.id == contact_id, Contact.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if contact is None:
        raise NotFound("contact")
    return contact


async def _claim_identity(
    call: ApiRequest, contact: Contact, kind: str, address: str
) -> ChannelIdentity | None:
    """Make `address` resolve to `contact`; the new identity (None if it was already the contact's).

    409 if it belongs to another contact: merge the two instead (`POST /contacts/{id}/merge`).
    """
    owner = (
        await call.session.execute(
            select(ChannelIdentity.contact_id).where(
                ChannelIdentity.tenant_id == call.tenant_id,
                ChannelIdentity.kind == kind,
                ChannelIdentity.address == address,
            )
        )
    ).scalar_one_or_none()
    if owner == contact.id:
        return None
    if owner is not None:
        raise ApiError(
            409, "conflict", f"{address} already belongs to contact {owner}; merge the two instead."
        )
    identity = ChannelIdentity(
        tenant_id=call.tenant_id,
        contact_id=contact.id,
        kind=kind,
        address=address,
        match_key=match_key(kind, address),
    )
    call.session.add(identity)
    await call.session.flush()
    return identity


async def _tags_of(call: ApiRequest, contact_ids: Sequence[int]) -> dict[int, list[str]]:
    tags: dict[int, list[str]] = defaultdict(list)
    if contact_ids:
        rows = await call.session.execute(
            select(ContactTag.contact_id, ContactTag.tag)
            .where(ContactTag.contact_id.in_(contact_ids))
            .order_by(ContactTag.tag)
        )
        for contact_id, tag in rows.all():
            tags[contact_id].append(tag)
    return tags


async def contact_out(call: ApiRequest, contact: Contact) -> ContactOut:
    tags = await _tags_of(call, [contact.id])
    return ContactOut.model_validate(contact).model_copy(update={"tags": tags[contact.id]})


async def _set_tags(call: ApiRequest, contact: Contact, tags: Sequence[str]) -> bool:
    current = set((await _tags_of(call, [contact.id]))[contact.id])
    wanted = set(tags)
    if current == wanted:
        return False
    if current - wanted:
        await call.session.execute(
            delete(ContactTag).where(
                ContactTag.contact_id == contact.id, ContactTag.tag.in_(current - wanted)
            )
        )
    for tag in sorted(wanted - current):
        call.session.add(ContactTag(tenant_id=call.tenant_id, contact_id=contact.id, tag=tag))
    await call.session.flush()
    return True


async def _company_id(call: ApiRequest, company_id: int | None, field: str) -> int | None:
    if company_id is None:
        return None
    found = (
        await call.session.execute(
            select(Company.id).where(Company.id == company_id, Company.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if found is None:
        raise field_errors({field: "no such company"})
    return company_id


async def _checked_attributes(call: ApiRequest, values: Mapping[str, Any], field: str) -> dict[str, Any]:
    coerced, errors = validate_attributes(await definitions(call.session, call.tenant_id), values)
    if errors:
        raise field_errors({f"{field}.{key}": message for key, message in errors.items()})
    return coerced


async def _attribute_filter(
    session: AsyncSession, tenant_id: int, stmt: Select[Any], attribute: str
) -> Select[Any]:
    key, sep, value = attribute.partition(":")
    if not sep or not key:
        raise field_errors({"query.attribute": "use key:value"})
    definition = (await definitions(session, tenant_id)).get(key)
    kind = AttributeType(definition.type) if definition else AttributeType.STRING
    element = Contact.attributes[key]
    try:
        if kind is AttributeType.NUMBER:
            return stmt.where(element.as_float() == float(value))
        if kind is AttributeType.BOOLEAN:
            if value not in ("true", "false"):
                raise ValueError
            return stmt.where(element.as_boolean() == (value == "true"))
    except ValueError:
        raise field_errors({"query.attribute": f"{key} is a {kind}; {value!r} is not one"}) from None
    return stmt.where(element.as_string() == value)


async def contact_search(session: AsyncSession, tenant_id: int, query: ContactQuery) -> Select[Contact]:
    """The statement `GET /contacts` runs (bench/crm.py measures it)."""
    stmt = select(Contact).where(Contact.tenant_id == tenant_id)
    if query.q is not None:
        settings = await crm_settings(session, tenant_id)
        addresses = search_keys(query.q, settings.default_region)
        if addresses:
            # A whole email or phone number: the contact whose address it is, by the identity index.
            stmt = stmt.where(
                Contact.id.in_(
                    select(ChannelIdentity.contact_id).where(
                        ChannelIdentity.tenant_id == tenant_id,
                        or_(
                            *(
                                and_(ChannelIdentity.kind == k, ChannelIdentity.address == a)
                                for k, a in addresses
                            )
                        ),
                    )
                )
            )
        else:
            stmt = stmt.where(
                or_(
                    Contact.name.icontains(query.q, autoescape=True),
                    Contact.email.icontains(query.q, autoescape=True),
                    Contact.phone.icontains(query.q, autoescape=True),
                )
            )
    if query.phone is not None:
        stmt = stmt.where(Contact.phone == query.phone)
    if query.email is not None:
        stmt = stmt.where(Contact.email == query.email)
    if query.tag is not None:
        stmt = stmt.where(
            exists().where(
                ContactTag.contact_id == Contact.id,
                ContactTag.tenant_id == tenant_id,
                ContactTag.tag == query.tag,
            )
        )
    if query.lifecycle_stage is not None:
        stmt = stmt.where(Contact.lifecycle_stage == query.lifecycle_stage)
    if query.company_id is not None:
        stmt = stmt.where(Contact.company_id == query.company_id)
    if query.attribute is not None:
        stmt = await _attribute_filter(session, tenant_id, stmt, query.attribute)
    if query.min_score is not None:
        stmt = stmt.where(Contact.score >= query.min_score)
    return stmt


async def search_contacts(
    session: AsyncSession, tenant_id: int, query: ContactQuery
) -> tuple[Sequence[Contact], str | None]:
    """One page of `GET /contacts`: the filtered, sorted contacts and the next cursor."""
    stmt = await contact_search(session, tenant_id, query)
    return await fetch_sorted_page(session, stmt, Contact.id, query.sort, _SORT_KEYS, query)


@routes.get("/contacts", allow=Permission.READ_CONTACTS, errors=[400])
async def list_contacts(call: ApiRequest, *, query: ContactQuery) -> ContactList:
    """List contacts, filtered and sorted (newest first by default).

    `q` matches a substring of the name, email or phone; a whole email address or phone number
    (any format; national ones in the tenant's default region) finds the contact whose address it
    is, on any channel. `phone` and `email` match exactly; `tag`, `lifecycle_stage`, `company_id`,
    `attribute` (`key:value`) and `min_score` filter.
    """
    rows, next_cursor = await search_contacts(call.session, call.tenant_id, query)
    tags = await _tags_of(call, [c.id for c in rows])
    return ContactList(
        data=[ContactOut.model_validate(c).model_copy(update={"tags": tags[c.id]}) for c in rows],
        next_cursor=next_cursor,
    )


@routes.post("/contacts", allow=Permission.WRITE_CONTACTS, errors=[409])
async def create_contact(call: ApiRequest, *, body: ContactCreate) -> ContactOut:
    """Create a contact.

    The phone (stored as E.164; a national number is read in `region`, else the tenant's default
    region) and the email become the contact's identities, so messages from them resolve to this
    contact; 409 if another contact already has one of them. Custom attributes are checked against
    their definitions (422 naming each one at fault). A business email links the company of its
    domain (created if needed).
    """
    phone = None
    if body.phone is not None:
        region = body.region or (await crm_settings(call.session, call.tenant_id)).default_region
        try:
            phone = normalise_phone(body.phone, region)
        except ValueError as e:
            raise field_errors({"body.phone": str(e)}) from None
    attributes = await _checked_attributes(call, body.attributes, "body.attributes")
    contact = Contact(
        tenant_id=call.tenant_id,
        name=body.name,
        email=body.email,
        phone=phone,
        attributes={k: v for k, v in attributes.items() if v is not None},
        company_id=await _company_id(call, body.company_id, "body.company_id"),
        lifecycle_stage=body.lifecycle_stage or LifecycleStage.LEAD,
    )
    call.session.add(contact)
    await call.session.flush()
    if phone is not None:
        await _claim_identity(call, contact, "phone", phone)
    if body.email is not None:
        await _claim_identity(call, contact, "email", body.email)
        await link_company_from_email(call.session, contact, body.email)
    await _set_tags(call, contact, body.tags)
    await call.session.flush()
    await emit(call.session, call.tenant_id, ("contact.created", {"contact_id": contact.id}))
    call.notify_after_commit()
    return await contact_out(call, contact)


# Before /contacts/{contact_id}: routes match in the order they are added.
@routes.get("/contacts/duplicates", allow=Permission.READ_CONTACTS)
async def list_duplicates(call: ApiRequest, *, query: DuplicateQuery) -> DuplicateList:
    """Pairs of contacts likely to be one person: an email or phone in another form, a name at a company.

    Emails match across case, `+tags`, and dots in Gmail addresses; phones across the mobile
    prefixes WhatsApp adds or drops (Mexico, Brazil). Exact matches never appear here: they
    resolve to one contact by themselves.
    """
    pairs = await tenant_duplicates(call.session, call.tenant_id, limit=query.limit)
    return DuplicateList(
        data=[
            DuplicateOut(contact_id=p.contact_id, other_id=p.other_id, reasons=list(p.reasons)) for p in pairs
        ]
    )


@routes.get("/contacts/{contact_id}", allow=Permission.READ_CONTACTS)
async def get_contact(call: ApiRequest, *, contact_id: int) -> ContactDetail:
    """Get a contact with its identities and consent decisions."""
    contact = await get_contact_row(call, contact_id)
    identities = (
        await call.session.execute(
            select(ChannelIdentity)
            .where(ChannelIdentity.contact_id == contact.id)
            .order_by(ChannelIdentity.id)
        )
    ).scalars()
    consents = (
        await call.session.execute(
            select(Consent).where(Consent.contact_id == contact.id).order_by(Consent.channel, Consent.purpose)
        )
    ).scalars()
    return ContactDetail(
        **(await contact_out(call, contact)).model_dump(),
        identities=[IdentityOut.model_validate(i) for i in identities],
        consents=[ConsentOut.model_validate(c) for c in consents],
    )


@routes.patch("/contacts/{contact_id}", allow=Permission.WRITE_CONTACTS, errors=[409])
async def update_contact(call: ApiRequest, *, contact_id: int, body: ContactUpdate) -> ContactOut:
    """Change a contact's name, email, phone, attributes, tags, company or lifecycle stage.

    Attributes are merged into the current ones (a key set to null is removed) and checked against
    their definitions. A new email or phone is added to the contact's identities; the old one is
    kept, since past conversations refer to it. A phone is read like `POST /contacts`'s. A stage
    set here is recorded in the lifecycle history.
    """
    contact = await get_contact_row(call, contact_id)
    changed: list[str] = []
    events: list[tuple[str, dict[str, Any]]] = []
    given = body.model_fields_set
    if "name" in given and body.name != contact.name:
        contact.name = body.name
        changed.append("name")
    if "email" in given and body.email != contact.email:
        contact.email = body.email
        changed.append("email")
        if body.email is not None:
            identity = await _claim_identity(call, contact, "email", body.email)
            if identity is not None:
                events.append((IDENTITY_ADDED_TOPIC, {"contact_id": contact.id, "identity_id": identity.id}))
    if "phone" in given:
        phone = None
        if body.phone is not None:
            region = body.region or (await crm_settings(call.session, call.tenant_id)).default_region
            try:
                phone = normalise_phone(body.phone, region)
            except ValueError as e:
                raise field_errors({"body.phone": str(e)}) from None
        if phone != contact.phone:
            contact.phone = phone
            changed.append("phone")
            if phone is not None:
                identity = await _claim_identity(call, contact, "phone", phone)
                if identity is not None:
                    events.append(
                        (IDENTITY_ADDED_TOPIC, {"contact_id": contact.id, "identity_id": identity.id})
                    )
    if body.attributes is not None:
        checked = await _checked_attributes(call, body.attributes, "body.attributes")
        attributes = merge_patch(contact.attributes, checked)
        if attributes != contact.attributes:
            contact.attributes = attributes
            changed.append("attributes")
    if body.tags is not None and await _set_tags(call, contact, body.tags):
        changed.append("tags")
    if "company_id" in given:
        company_id = await _company_id(call, body.company_id, "body.company_id")
        if company_id != contact.company_id:
            contact.company_id = company_id
            changed.append("company_id")
    if body.lifecycle_stage is not None and await set_stage(
        call.session, contact, body.lifecycle_stage, reason="set by a user", user_id=call.principal.user_id
    ):
        changed.append("lifecycle_stage")
    if "attributes" in changed:
        await refresh_score(call.session, contact)  # attribute rules may now match
    if changed:
        await call.session.flush()
        events.append(("contact.updated", {"contact_id": contact.id, "changed": changed}))
    if events:
        await emit(call.session, call.tenant_id, *events)
        call.notify_after_commit()
    return await contact_out(call, contact)


@routes.post("/contacts/{contact_id}/identities", allow=Permission.WRITE_CONTACTS, errors=[409])
async def add_identity(call: ApiRequest, *, contact_id: int, body: IdentityCreate) -> IdentityOut:
    """Add an address the contact is reachable at (a phone, an email, a provider's user id).

    Messages from it then resolve to this contact. 409 if another contact already has it: merge
    the two instead.
    """
    contact = await get_contact_row(call, contact_id)
    address = body.address
    try:
        if body.kind == "phone":
            region = body.region or (await crm_settings(call.session, call.tenant_id)).default_region
            address = normalise_phone(address, region)
        elif body.kind == "email":
            address = normalise_email(address)
    except ValueError as e:
        raise field_errors({"body.address": str(e)}) from None
    identity = await _claim_identity(call, contact, body.kind, address)
    if identity is None:
        raise ApiError(409, "conflict", f"{address} is already this contact's.")
    if body.kind == "phone" and contact.phone is None:
        contact.phone = address
    if body.kind == "email" and contact.email is None:
        contact.email = address
    await emit(
        call.session,
        call.tenant_id,
        (IDENTITY_ADDED_TOPIC, {"contact_id": contact.id, "identity_id": identity.id}),
    )
    call.notify_after_commit()
    return IdentityOut.model_validate(identity)


# --- duplicates and merges -----------------------------------------------------------------------


@routes.get("/contacts/{contact_id}/duplicates", allow=Permission.READ_CONTACTS)
async def contact_duplicates(call: ApiRequest, *, contact_id: int) -> DuplicateList:
    """Contacts that are likely the same person as this one, and why."""
    contact = await get_contact_row(call, contact_id)
    found = await duplicates_of(call.session, contact)
    return DuplicateList(
        data=[
            DuplicateOut(contact_id=p.contact_id, other_id=p.other_id, reasons=list(p.reasons)) for p in found
        ]
    )


async def _merge(call: ApiRequest, contact_id: int, body: MergeRequest, *, preview: bool) -> MergeReportOut:
    survivor = await get_contact_row(call, contact_id)
    if body.merge_id == survivor.id:
        raise field_errors({"body.merge_id": "a contact cannot be merged with itself"})
    merged = await get_contact_row(call, body.merge_id)
    report = await merge_contacts(
        call.session, survivor, merged, user_id=call.principal.user_id, reason=body.reason, preview=preview
    )
    if not preview:
        call.notify_after_commit()
        await audit_merge(call, survivor.id, body.merge_id, report.merge_id)
    return MergeReportOut.model_validate(report.as_dict())


@routes.post("/contacts/{contact_id}/merge/preview", allow=Permission.MERGE_CONTACTS, status=200)
async def preview_merge(call: ApiRequest, *, contact_id: int, body: MergeRequest) -> MergeReportOut:
    """What merging `merge_id` into this contact would do; changes nothing."""
    return await _merge(call, contact_id, body, preview=True)


@routes.post("/contacts/{contact_id}/merge", allow=Permission.MERGE_CONTACTS, status=200, errors=[409])
async def merge_contact(call: ApiRequest, *, contact_id: int, body: MergeRequest) -> MergeReportOut:
    """Merge contact `merge_id` into this one, which survives; the other is deleted.

    Its identities, conversations, deals, consent, score events, lifecycle history and tags move
    here, in one transaction, audited (`GET /contacts/{id}/merges`) and announced as
    `contact.merged`. If both have an unresolved conversation in one inbox, the merged contact's is
    resolved. Consent: a withdrawal on either contact wins, else the most recent decision.
    """
    return await _merge(call, contact_id, body, preview=False)


@routes.get("/contacts/{contact_id}/merges", allow=Permission.READ_CONTACTS)
async def list_merges(call: ApiRequest, *, contact_id: int) -> MergeAuditList:
    """The merges this contact survived, newest first: who, when, what moved, the merged contact as it was."""
    contact = await get_contact_row(call, contact_id)
    rows = await call.session.execute(
        select(ContactMerge)
        .where(ContactMerge.survivor_id == contact.id, ContactMerge.tenant_id == call.tenant_id)
        .order_by(ContactMerge.id.desc())
    )
    return MergeAuditList(data=[MergeAuditOut.model_validate(m) for m in rows.scalars()])


# --- lifecycle and score -------------------------------------------------------------------------


@routes.get("/contacts/{contact_id}/lifecycle", allow=Permission.READ_CONTACTS)
async def lifecycle_history(call: ApiRequest, *, contact_id: int) -> LifecycleHistory:
    """The contact's lifecycle stage and every move that led there, oldest first."""
    contact = await get_contact_row(call, contact_id)
    rows = await call.session.execute(
        select(LifecycleChange)
        .where(and_(LifecycleChange.contact_id == contact.id, LifecycleChange.tenant_id == call.tenant_id))
        .order_by(LifecycleChange.created_at, LifecycleChange.id)
    )
    return LifecycleHistory(
        stage=LifecycleStage(contact.lifecycle_stage),
        history=[LifecycleChangeOut.model_validate(r) for r in rows.scalars()],
    )


@routes.get("/contacts/{contact_id}/score", allow=Permission.READ_CONTACTS)
async def contact_score(call: ApiRequest, *, contact_id: int) -> ScoreOut:
    """The contact's score now, explained: each rule's points and what is left of them after decay."""
    contact = await get_contact_row(call, contact_id)
    explanation = await explain(call.session, contact)
    return ScoreOut(
        score=explanation.score,
        mql_threshold=explanation.mql_threshold,
        half_life_days=explanation.half_life_days,
        contributions=[ContributionOut.model_validate(c) for c in explanation.contributions],
    )
