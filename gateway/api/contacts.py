"""`/contacts`: people, the addresses they are reachable at, and their consent."""

from __future__ import annotations

from sqlalchemy import or_, select

from crm_core.models import ChannelIdentity, Consent, Contact
from gateway.api.pagination import fetch_page
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable
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
from gateway.errors import ApiError, NotFound
from parley.outbox import emit

routes = RouteTable("contacts")


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


async def _claim_identity(call: ApiRequest, contact: Contact, kind: str, address: str) -> None:
    """Make `address` resolve to `contact`; 409 if it already belongs to another contact."""
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
        return
    if owner is not None:
        raise ApiError(409, "conflict", f"{address} already belongs to contact {owner}.")
    call.session.add(
        ChannelIdentity(tenant_id=call.tenant_id, contact_id=contact.id, kind=kind, address=address)
    )


@routes.get("/contacts", allow=Permission.READ_CONTACTS)
async def list_contacts(call: ApiRequest, *, query: ContactQuery) -> ContactList:
    """List contacts, newest first.

    `q` matches a substring of the name, email or phone; `phone` matches a number exactly.
    """
    stmt = select(Contact).where(Contact.tenant_id == call.tenant_id)
    if query.q is not None:
        stmt = stmt.where(
            or_(
                Contact.name.icontains(query.q, autoescape=True),
                Contact.email.icontains(query.q, autoescape=True),
                Contact.phone.icontains(query.q, autoescape=True),
            )
        )
    if query.phone is not None:
        stmt = stmt.where(Contact.phone == query.phone)
    rows, next_cursor = await fetch_page(call.session, stmt, Contact.id, query)
    return ContactList(data=[ContactOut.model_validate(c) for c in rows], next_cursor=next_cursor)


@routes.post("/contacts", allow=Permission.WRITE_CONTACTS, errors=[409])
async def create_contact(call: ApiRequest, *, body: ContactCreate) -> ContactOut:
    """Create a contact.

    The phone (E.164) and email become the contact's identities, so messages from them resolve to
    this contact; 409 if another contact already has one of them.
    """
    contact = Contact(
        tenant_id=call.tenant_id, name=body.name, email=body.email, phone=body.phone, attributes={}
    )
    call.session.add(contact)
    await call.session.flush()
    if body.phone is not None:
        await _claim_identity(call, contact, "phone", body.phone)
    if body.email is not None:
        await _claim_identity(call, contact, "email", body.email)
    await call.session.flush()
    await emit(call.session, call.tenant_id, ("contact.created", {"contact_id": contact.id}))
    call.notify_after_commit()
    return ContactOut.model_validate(contact)


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
        **ContactOut.model_validate(contact).model_dump(),
        identities=[IdentityOut.model_validate(i) for i in identities],
        consents=[ConsentOut.model_validate(c) for c in consents],
    )


@routes.patch("/contacts/{contact_id}", allow=Permission.WRITE_CONTACTS, errors=[409])
async def update_contact(call: ApiRequest, *, contact_id: int, body: ContactUpdate) -> ContactOut:
    """Change a contact's name, email or attributes.

    Attributes are merged into the current ones (a key set to null is removed). A new email is
    added to the contact's identities; the old one is kept, since past conversations refer to it.
    """
    contact = await get_contact_row(call, contact_id)
    changed: list[str] = []
    given = body.model_fields_set
    if "name" in given and body.name != contact.name:
        contact.name = body.name
        changed.append("name")
    if "email" in given and body.email != contact.email:
        contact.email = body.email
        changed.append("email")
        if body.email is not None:
            await _claim_identity(call, contact, "email", body.email)
    if body.attributes is not None:
        attributes = merge_patch(contact.attributes, body.attributes)
        if attributes != contact.attributes:
            contact.attributes = attributes
            changed.append("attributes")
    if changed:
        await call.session.flush()
        await emit(
            call.session, call.tenant_id, ("contact.updated", {"contact_id": contact.id, "changed": changed})
        )
        call.notify_after_commit()
    return ContactOut.model_validate(contact)
