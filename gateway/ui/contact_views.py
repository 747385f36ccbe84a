"""The contact panel (third pane of a conversation, and the contact's own page) and the contacts list.

The panel shows everything known about a person: identities per channel, standard fields and typed
custom attributes, tags, company, lifecycle stage and explained score, open deals, previous
conversations and consent. Users who may write contacts edit it in place: each section's form
posts here (htmx swaps the re-rendered panel in), and the change goes through the same service as
`PATCH /api/v1/contacts/{id}`, so the API's validation messages are what the form shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import func, select

from crm_core.attributes import AttributeType, definitions
from crm_core.lifecycle_stages import LifecycleStage
from crm_core.models import (
    AttributeDefinition,
    ChannelIdentity,
    Company,
    Consent,
    Contact,
    ContactTag,
    Deal,
    Pipeline,
    PipelineStage,
)
from crm_core.scoring import explain
from gateway.api.contacts import search_contacts, update_contact
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, _InvalidRequest
from gateway.api.schemas import ContactQuery, ContactUpdate
from gateway.errors import ApiError
from gateway.ui.ticket_views import contact_ticket_rows
from gateway.ui.web import Ui, page, redirect
from inbox.models import Conversation, Inbox

# Icons per identity kind: plain characters, so no image or font is needed.
IDENTITY_ICONS = {
    "phone": "☎",
    "email": "✉",
    "whatsapp": "🟢",
    "telegram": "✈",
    "slack": "#",
    "webchat": "💬",
}
SECTIONS = ("details", "attributes", "tags", "stage")
CONVERSATION_LIMIT = 20
PAGE_CONVERSATION_LIMIT = 200
PAGE_SIZE = 25


@dataclass(frozen=True, slots=True)
class AttributeRow:
    """One custom attribute as the form shows it: its definition (if any) and its value as text."""

    key: str
    label: str
    type: str
    options: Sequence[Any]
    value: Any
    text: str
    defined: bool


def _attribute_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _attribute_rows(
    defined: Mapping[str, AttributeDefinition], values: Mapping[str, Any]
) -> list[AttributeRow]:
    rows = [
        AttributeRow(
            d.key, d.label, d.type, d.options, values.get(d.key), _attribute_text(values.get(d.key)), True
        )
        for d in sorted(defined.values(), key=lambda d: d.label.lower())
    ]
    rows += [
        AttributeRow(key, key, AttributeType.STRING, (), value, _attribute_text(value), False)
        for key, value in sorted(values.items())
        if key not in defined
    ]
    return rows


def _money(amount_minor: int, currency: str) -> str:
    return f"{amount_minor / 100:,.2f} {currency}"


async def tenant_contact(ui: Ui, contact_id: int) -> Contact | None:
    """The signed-in tenant's contact with this id, or None (another tenant's is as good as none)."""
    return (
        await ui.session.execute(
            select(Contact).where(Contact.id == contact_id, Contact.tenant_id == ui.tenant_id)
        )
    ).scalar_one_or_none()


async def contact_panel_context(
    ui: Ui,
    contact_id: int,
    *,
    errors: Mapping[str, str] | None = None,
    values: Mapping[str, str] | None = None,
    open_section: str | None = None,
    notice: str | None = None,
    conversation_limit: int = CONVERSATION_LIMIT,
) -> dict[str, Any]:
    """What `inbox/_contact_panel.html` shows; raises HTTPNotFound if the tenant has no such contact.

    `errors`, `values` and `open_section` redisplay a form that was refused, with what was typed.
    """
    contact = await tenant_contact(ui, contact_id)
    if contact is None:
        raise web.HTTPNotFound(text="No such contact.")
    session = ui.session
    identities = (
        await session.scalars(
            select(ChannelIdentity)
            .where(ChannelIdentity.contact_id == contact.id, ChannelIdentity.tenant_id == ui.tenant_id)
            .order_by(ChannelIdentity.kind, ChannelIdentity.id)
        )
    ).all()
    tags = (
        await session.scalars(
            select(ContactTag.tag)
            .where(ContactTag.contact_id == contact.id, ContactTag.tenant_id == ui.tenant_id)
            .order_by(ContactTag.tag)
        )
    ).all()
    company = None
    if contact.company_id is not None:
        company = (
            await session.execute(
                select(Company).where(Company.id == contact.company_id, Company.tenant_id == ui.tenant_id)
            )
        ).scalar_one_or_none()
    defined = await definitions(session, ui.tenant_id)
    deals = (
        await session.execute(
            select(Deal, PipelineStage, Pipeline)
            .join(PipelineStage, PipelineStage.id == Deal.stage_id)
            .join(Pipeline, Pipeline.id == Deal.pipeline_id)
            .where(
                Deal.contact_id == contact.id,
                Deal.tenant_id == ui.tenant_id,
                PipelineStage.outcome == "open",
            )
            .order_by(Deal.expected_close.is_(None), Deal.expected_close, Deal.id)
        )
    ).all()
    conversations = (
        await session.execute(
            select(Conversation, Inbox)
            .join(Inbox, Inbox.id == Conversation.inbox_id)
            .where(Conversation.contact_id == contact.id, Conversation.tenant_id == ui.tenant_id)
            .order_by(func.coalesce(Conversation.last_message_at, Conversation.created_at).desc())
            .limit(conversation_limit)
        )
    ).all()
    consents = (
        await session.scalars(
            select(Consent)
            .where(Consent.contact_id == contact.id, Consent.tenant_id == ui.tenant_id)
            .order_by(Consent.channel, Consent.purpose)
        )
    ).all()
    score = await explain(session, contact)
    return {
        "contact": contact,
        "identities": [
            {"kind": i.kind, "address": i.address, "icon": IDENTITY_ICONS.get(i.kind, "•")}
            for i in identities
        ],
        "tags": list(tags),
        "company": company,
        "attributes": _attribute_rows(defined, contact.attributes or {}),
        "stages": list(LifecycleStage),
        "score": score,
        "score_contributions": [c for c in score.contributions if not math.isclose(c.current_points, 0.0)],
        "deals": [
            {
                "title": deal.title,
                "amount": _money(deal.amount_minor, deal.currency),
                "stage": stage.name,
                "probability": stage.probability,
                "pipeline": pipeline.name,
                "expected_close": deal.expected_close,
            }
            for deal, stage, pipeline in deals
        ],
        "conversations": [
            {
                "id": c.id,
                "status": c.status,
                "inbox": inbox.name,
                "channel": inbox.channel,
                "last": ui.local(c.last_message_at or c.created_at),
            }
            for c, inbox in conversations
        ],
        "consents": [
            {
                "channel": c.channel,
                "purpose": c.purpose,
                "granted": c.granted,
                "source": c.source,
                "changed_at": ui.local(c.changed_at),
            }
            for c in consents
        ],
        "tickets": await contact_ticket_rows(ui, contact.id),
        "can_edit": ui.may(Permission.WRITE_CONTACTS),
        "errors": dict(errors or {}),
        "values": dict(values or {}),
        "open_section": open_section,
        "notice": notice,
    }


# --- editing --------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def _optional(form: Mapping[str, Any], name: str) -> str | None:
    value = str(form.get(name, "")).strip()
    return value or None


def _attribute_value(kind: str, text: str) -> Any:
    """A typed value from a form field; empty removes the attribute. Values the type refuses pass as
    text, so the API's own check names what is wrong."""
    if text == "":
        return None
    if kind == AttributeType.NUMBER:
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    if kind == AttributeType.BOOLEAN:
        return {"yes": True, "true": True, "no": False, "false": False}.get(text.lower(), text)
    return text


async def _company_id(ui: Ui, name: str | None) -> int | None:
    if name is None:
        return None
    found = (
        await ui.session.scalars(
            select(Company.id)
            .where(Company.tenant_id == ui.tenant_id, func.lower(Company.name) == name.lower())
            .order_by(Company.id)
            .limit(1)
        )
    ).first()
    if found is None:
        raise _Refused({"company": f"no company named {name!r}"})
    return found


async def _patch_for(ui: Ui, contact: Contact, section: str, form: Mapping[str, Any]) -> dict[str, Any]:
    """The PATCH body the section's form stands for."""
    if section == "details":
        return {
            "name": _optional(form, "name"),
            "email": _optional(form, "email"),
            "phone": _optional(form, "phone"),
            "company_id": await _company_id(ui, _optional(form, "company")),
        }
    if section == "attributes":
        rows = _attribute_rows(await definitions(ui.session, ui.tenant_id), contact.attributes or {})
        attributes = {
            row.key: _attribute_value(row.type, str(form.get(f"attr.{row.key}", "")).strip()) for row in rows
        }
        new_key = _optional(form, "new_key")
        if new_key is not None:
            attributes[new_key] = _optional(form, "new_value")
        return {"attributes": attributes}
    if section == "tags":
        text = str(form.get("tags", ""))
        return {"tags": [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]}
    if section == "stage":
        return {"lifecycle_stage": _optional(form, "lifecycle_stage")}
    raise _Refused({"form": "unknown section"})


def _field_name(location: str) -> str:
    """`body.attributes.plan` → `attr.plan`; `body.email` → `email` (the form's field names)."""
    parts = location.split(".")
    if parts and parts[0] == "body":
        parts = parts[1:]
    if len(parts) >= 2 and parts[0] == "attributes":
        return f"attr.{parts[1]}"
    if parts and parts[0] == "company_id":
        return "company"
    return parts[0] if parts else "form"


async def _apply(ui: Ui, contact: Contact, section: str, form: Mapping[str, Any]) -> None:
    """Apply one section's form through the API's own update; _Refused with its messages by field."""
    body = await _patch_for(ui, contact, section, form)
    try:
        update = ContactUpdate.model_validate(body)
    except ValidationError as e:
        raise _Refused(
            {_field_name(".".join(map(str, err["loc"]))): err["msg"] for err in e.errors()}
        ) from None
    call = ApiRequest(ui.request, ui.user.principal, ui.session)
    try:
        # A savepoint: a refusal half-way (a taken email after the name changed) leaves nothing behind.
        async with ui.session.begin_nested():
            await update_contact(call, contact_id=contact.id, body=update)
    except _InvalidRequest as e:
        raise _Refused({_field_name(d.field): d.message for d in e.details}) from None
    except ApiError as e:
        raise _Refused({"form": e.message}) from None
    ui.notify_after_commit()


def _contact_id(ui: Ui) -> int | None:
    raw = ui.request.match_info["contact_id"]
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None


def _not_found(ui: Ui) -> web.Response:
    return ui.render("contacts/not_found.html", status=404)


@page(allow=Permission.WRITE_CONTACTS)
async def edit_contact(ui: Ui) -> web.StreamResponse:
    """One section of the panel submitted: apply it and show the panel again (with errors if refused)."""
    contact_id = _contact_id(ui)
    contact = None if contact_id is None else await tenant_contact(ui, contact_id)
    if contact is None:
        return _not_found(ui)
    form = await ui.request.post()
    section = str(form.get("section", ""))
    layout = "page" if form.get("layout") == "page" else "pane"
    try:
        if section not in SECTIONS:
            raise _Refused({"form": "unknown section"})
        await _apply(ui, contact, section, form)
    except _Refused as refused:
        await ui.session.refresh(contact)
        context = await contact_panel_context(
            ui,
            contact.id,
            errors=refused.errors,
            values={k: str(v) for k, v in form.items() if k != "csrf_token"},
            open_section=section,
        )
        context["layout"] = layout
        if ui.is_htmx():
            # 200, so htmx swaps the form with its messages in; a plain post gets the real status.
            return ui.render("inbox/_contact_panel.html", context)
        return ui.render("contacts/detail.html", await _detail_context(ui, context), status=422)
    if not ui.is_htmx():
        return redirect(f"/contacts/{contact.id}")
    await ui.session.refresh(contact)
    context = await contact_panel_context(ui, contact.id, notice="Saved.")
    context["layout"] = layout
    return ui.render("inbox/_contact_panel.html", context)


@page(allow=Permission.READ_CONTACTS)
async def contact_panel(ui: Ui) -> web.StreamResponse:
    """The panel alone (htmx fetches it to refresh the third pane)."""
    contact_id = _contact_id(ui)
    if contact_id is None or await tenant_contact(ui, contact_id) is None:
        return _not_found(ui)
    context = await contact_panel_context(ui, contact_id)
    context["layout"] = "page" if ui.request.query.get("layout") == "page" else "pane"
    return ui.render("inbox/_contact_panel.html", context)


async def _detail_context(ui: Ui, panel: dict[str, Any]) -> dict[str, Any]:
    return {**panel, "layout": "page"}


@page(allow=Permission.READ_CONTACTS)
async def contact_page(ui: Ui) -> web.StreamResponse:
    """A contact's own page: the panel, full width, with all their conversations."""
    contact_id = _contact_id(ui)
    if contact_id is None or await tenant_contact(ui, contact_id) is None:
        return _not_found(ui)
    context = await contact_panel_context(ui, contact_id, conversation_limit=PAGE_CONVERSATION_LIMIT)
    return ui.render("contacts/detail.html", await _detail_context(ui, context))


@page(allow=Permission.READ_CONTACTS)
async def contacts_list(ui: Ui) -> web.StreamResponse:
    """Contacts, newest first, with a search box (name, email or phone; a whole address finds its owner)."""
    q = ui.request.query.get("q", "").strip()[:200]
    cursor = ui.request.query.get("cursor") or None
    raw_company = ui.request.query.get("company_id", "")
    company = None
    if raw_company.isascii() and raw_company.isdigit() and len(raw_company) <= 18:
        company = (
            await ui.session.execute(
                select(Company).where(Company.id == int(raw_company), Company.tenant_id == ui.tenant_id)
            )
        ).scalar_one_or_none()
    error = None
    rows: Sequence[Contact] = []
    next_cursor = None
    try:
        if raw_company and company is None:
            raise ApiError(404, "not_found", "company not found")
        query = ContactQuery(
            q=q or None, cursor=cursor, limit=PAGE_SIZE, company_id=company.id if company else None
        )
        rows, next_cursor = await search_contacts(ui.session, ui.tenant_id, query)
    except (ValidationError, ApiError, _InvalidRequest):
        error = (
            "There is no such company."
            if raw_company and company is None
            else "That page of results is no longer valid; start the search again."
        )
    companies: dict[int, str] = {}
    company_ids = {c.company_id for c in rows if c.company_id is not None}
    if company_ids:
        found = await ui.session.execute(
            select(Company.id, Company.name).where(
                Company.id.in_(company_ids), Company.tenant_id == ui.tenant_id
            )
        )
        companies = {company_id: name for company_id, name in found.all()}
    context = {
        "q": q,
        "company": company,
        "contacts": [
            {
                "id": c.id,
                "name": c.name,
                "email": c.email,
                "phone": c.phone,
                "company": companies.get(c.company_id) if c.company_id is not None else None,
                "stage": c.lifecycle_stage,
                "score": c.score,
                "created_at": ui.local(c.created_at),
            }
            for c in rows
        ],
        "next_cursor": next_cursor,
        "first_page": cursor is None,
        "error": error,
    }
    return ui.render("contacts/list.html", context, status=200 if error is None else 400)


def setup_contact_routes(app: web.Application) -> None:
    app.router.add_get("/contacts", contacts_list)
    app.router.add_get("/contacts/{contact_id}", contact_page)
    app.router.add_get("/contacts/{contact_id}/panel", contact_panel)
    app.router.add_post("/contacts/{contact_id}/edit", edit_contact)
