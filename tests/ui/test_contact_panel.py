"""The contact panel and the contacts pages through the aiohttp client, on both databases.

What the panel shows (identities, typed attributes, tags, company, stage and explained score, open
deals only, conversations, consent), that customer text stays text, edit in place with the API's
own validation messages, the all-or-nothing save, role and tenant limits, search and paging.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest_asyncio
from sqlalchemy import select

from crm_core.consent import record_consent
from crm_core.models import ChannelIdentity, Contact, ContactTag, LifecycleChange
from inbox.models import Conversation, Inbox
from parley.db import Database
from parley.models import Role
from parley.settings import Settings
from tests.ui.adminui_support import ClientFactory, Person, UiClient, make_ui_client


@dataclass
class World:
    ui: UiClient
    admin: Person
    contact_id: int
    other_contact_id: int
    conversation_id: int

    async def contact(self) -> Contact:
        async with self.ui.db.sessionmaker() as session:
            return (await session.execute(select(Contact).where(Contact.id == self.contact_id))).scalar_one()

    async def edit(self, section: str, who: Person | None = None, **fields: str) -> Any:
        return await self.ui.post(
            who or self.admin, f"/contacts/{self.contact_id}/edit", {"section": section, **fields}, htmx=True
        )


async def _setup(ui: UiClient) -> World:
    admin = await ui.person(Role.ADMIN)
    for definition in (
        {"key": "plan", "label": "Plan", "type": "enum", "options": ["free", "gold"]},
        {"key": "seats", "label": "Seats", "type": "number"},
        {"key": "vip", "label": "VIP", "type": "boolean"},
    ):
        status, body = await ui.api(admin, "POST", "/crm/attributes", definition)
        assert status == 201, body
    status, company = await ui.api(
        admin, "POST", "/companies", {"name": "Initech", "domain": "initech.example"}
    )
    assert status == 201, company
    status, contact = await ui.api(
        admin,
        "POST",
        "/contacts",
        {
            "name": "Ann <script>alert(1)</script>",
            "email": "ann@initech.example",
            "phone": "+14155550100",
            "attributes": {"plan": "gold", "seats": 3, "note": "met at <b>expo</b>"},
            "tags": ["vip-prospect"],
            "company_id": company["id"],
        },
    )
    assert status == 201, contact
    status, other = await ui.api(admin, "POST", "/contacts", {"name": "Bob", "email": "bob@example.com"})
    assert status == 201, other
    status, pipeline = await ui.api(
        admin,
        "POST",
        "/pipelines",
        {
            "name": "Sales",
            "stages": [
                {"name": "Proposal", "probability": 40},
                {"name": "Won", "probability": 100, "outcome": "won"},
            ],
        },
    )
    assert status == 201, pipeline
    proposal, won = pipeline["stages"]
    for title, stage in (("Seat expansion", proposal), ("Old renewal", won)):
        status, deal = await ui.api(
            admin,
            "POST",
            "/deals",
            {
                "title": title,
                "amount_minor": 120000,
                "currency": "EUR",
                "contact_id": contact["id"],
                "stage_id": stage["id"],
            },
        )
        assert status == 201, deal
    async with ui.db.transaction() as session:
        session.add(
            ChannelIdentity(
                tenant_id=admin.tenant_id, contact_id=contact["id"], kind="telegram", address="424242"
            )
        )
        inbox = Inbox(
            tenant_id=admin.tenant_id,
            name="Support line",
            channel="twilio_sms",
            settings={},
            secrets_encrypted="",
        )
        session.add(inbox)
        await session.flush()
        phone_identity = (
            await session.execute(
                select(ChannelIdentity.id).where(
                    ChannelIdentity.contact_id == contact["id"], ChannelIdentity.kind == "phone"
                )
            )
        ).scalar_one()
        conversation = Conversation(
            tenant_id=admin.tenant_id, inbox_id=inbox.id, contact_id=contact["id"], identity_id=phone_identity
        )
        session.add(conversation)
        await session.flush()
        await record_consent(
            session,
            tenant_id=admin.tenant_id,
            contact_id=contact["id"],
            channel="sms",
            granted=False,
            source="STOP",
        )
        conversation_id = conversation.id
    return World(ui, admin, contact["id"], other["id"], conversation_id)


@pytest_asyncio.fixture
async def world(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> AsyncIterator[World]:
    yield await _setup(await make_ui_client(aiohttp_client, db, settings))


async def test_the_panel_shows_everything_known_and_customer_text_stays_text(world: World) -> None:
    page = await world.ui.get(world.admin, f"/contacts/{world.contact_id}")
    assert page.status == 200, page.text
    # Customer-written text is escaped, never markup.
    assert "<script>alert(1)</script>" not in page.text
    assert "Ann &lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<b>expo</b>" not in page.text and "met at &lt;b&gt;expo&lt;/b&gt;" in page.text
    text = page.texts()
    for expected in (
        "ann@initech.example",  # email identity
        "+14155550100",  # phone identity
        "424242",  # telegram identity
        "Initech",
        "gold",
        "vip-prospect",
        "Seat expansion",
        "1,200.00 EUR",
        "Sales / Proposal (40%)",
        "withdrawn",
        "STOP",
    ):
        assert expected in text, expected
    assert "Old renewal" not in text  # a won deal is not open
    assert f'href="/inbox/c/{world.conversation_id}"' in page.text
    assert "Tickets" not in text  # no tickets model exists: no section pretends otherwise
    assert 'data-section="details"' in page.text  # an admin may edit


async def test_the_panel_fragment_is_what_the_inbox_includes(world: World) -> None:
    fragment = await world.ui.get(world.admin, f"/contacts/{world.contact_id}/panel", htmx=True)
    assert fragment.status == 200
    assert "<html" not in fragment.text
    assert f'id="contact-panel-{world.contact_id}"' in fragment.text
    assert f'href="/contacts/{world.contact_id}"' in fragment.text  # the pane links to the full page


async def test_an_invalid_email_shows_the_apis_message_and_changes_nothing(world: World) -> None:
    status, api_answer = await world.ui.api(
        world.admin, "PATCH", f"/contacts/{world.contact_id}", {"email": "ann@"}
    )
    assert status == 422
    api_message = api_answer["error"]["details"][0]["message"]

    page = await world.edit(
        "details", name="Ann Renamed", email="ann@", phone="+14155550100", company="Initech"
    )
    assert page.status == 200
    assert 'id="err-email"' in page.text
    assert api_message.replace("'", "&#39;") in page.text or api_message in page.texts()
    assert 'value="ann@"' in page.text  # what was typed stays in the field
    contact = await world.contact()
    assert (contact.name, contact.email) == ("Ann <script>alert(1)</script>", "ann@initech.example")

    page = await world.edit(
        "details",
        name="Ann Smith",
        email="ann.smith@initech.example",
        phone="+14155550100",
        company="Initech",
    )
    assert page.status == 200
    assert "err-email" not in page.text and "Saved." in page.text
    contact = await world.contact()
    assert (contact.name, contact.email) == ("Ann Smith", "ann.smith@initech.example")
    async with world.ui.db.sessionmaker() as session:
        emails = set(
            (
                await session.scalars(
                    select(ChannelIdentity.address).where(
                        ChannelIdentity.contact_id == world.contact_id, ChannelIdentity.kind == "email"
                    )
                )
            ).all()
        )
    assert emails == {"ann@initech.example", "ann.smith@initech.example"}


async def test_an_invalid_phone_is_refused_and_a_national_one_is_stored_as_e164(world: World) -> None:
    page = await world.edit("details", name="Ann", email="ann@initech.example", phone="12", company="Initech")
    assert 'id="err-phone"' in page.text
    assert "is not a phone number" in page.texts() or "is not a valid phone number" in page.texts()
    assert (await world.contact()).phone == "+14155550100"
    page = await world.edit(
        "details", name="Ann", email="ann@initech.example", phone="+44 20 7946 0018", company=""
    )
    assert "err-phone" not in page.text, page.text
    contact = await world.contact()
    assert contact.phone == "+442079460018"
    assert contact.company_id is None  # an empty company unlinks


async def test_a_refusal_half_way_leaves_nothing_behind(world: World) -> None:
    # Bob's email belongs to another contact: the name typed with it must not be saved either.
    page = await world.edit(
        "details", name="Changed", email="bob@example.com", phone="+14155550100", company="Initech"
    )
    assert "already belongs to contact" in page.texts()
    contact = await world.contact()
    assert contact.name == "Ann <script>alert(1)</script>"
    assert contact.email == "ann@initech.example"
    page = await world.edit(
        "details", name="Ann", email="ann@initech.example", phone="+14155550100", company="Nope Inc"
    )
    assert "no company named" in page.texts()
    assert (await world.contact()).name == "Ann <script>alert(1)</script>"


async def test_typed_attributes_tags_and_stage_are_edited_in_place(world: World) -> None:
    page = await world.edit(
        "attributes", **{"attr.plan": "free", "attr.seats": "many", "attr.vip": "yes", "attr.note": ""}
    )
    assert 'id="err-attr-seats"' in page.text
    assert "must be a number" in page.texts()
    assert (await world.contact()).attributes["plan"] == "gold"

    page = await world.edit(
        "attributes",
        **{
            "attr.plan": "free",
            "attr.seats": "12",
            "attr.vip": "yes",
            "attr.note": "",
            "new_key": "source",
            "new_value": "fair",
        },
    )
    assert "Saved." in page.text, page.texts()
    assert (await world.contact()).attributes == {"plan": "free", "seats": 12, "vip": True, "source": "fair"}

    await world.edit("tags", tags="Churn-Risk, vip-prospect ,")
    async with world.ui.db.sessionmaker() as session:
        tags = set(
            (
                await session.scalars(select(ContactTag.tag).where(ContactTag.contact_id == world.contact_id))
            ).all()
        )
    assert tags == {"churn-risk", "vip-prospect"}

    page = await world.edit("stage", lifecycle_stage="customer")
    assert "Saved." in page.text
    contact = await world.contact()
    assert contact.lifecycle_stage == "customer"
    async with world.ui.db.sessionmaker() as session:
        moves = (
            await session.scalars(
                select(LifecycleChange).where(LifecycleChange.contact_id == world.contact_id)
            )
        ).all()
    assert [m.to_stage for m in moves][-1] == "customer"
    page = await world.edit("stage", lifecycle_stage="royalty")
    assert 'id="err-lifecycle_stage"' in page.text


async def test_roles_that_only_read_see_no_forms_and_cannot_post(world: World) -> None:
    marketer = await world.ui.person(Role.MARKETER)
    page = await world.ui.get(marketer, f"/contacts/{world.contact_id}")
    assert page.status == 200
    assert "data-section=" not in page.text and "Edit" not in page.texts()
    refused = await world.edit("details", who=marketer, name="Hacked", email="", phone="", company="")
    assert refused.status == 403
    assert (await world.contact()).name == "Ann <script>alert(1)</script>"
    # Without the CSRF token nothing changes either, whoever posts.
    forged = await world.ui.post(
        world.admin, f"/contacts/{world.contact_id}/edit", {"section": "tags", "tags": "x"}, csrf=False
    )
    assert forged.status == 403


async def test_another_tenants_contact_is_not_found(world: World) -> None:
    stranger = await world.ui.person(Role.ADMIN, tenant="globex")
    for path in (f"/contacts/{world.contact_id}", f"/contacts/{world.contact_id}/panel"):
        page = await world.ui.get(stranger, path)
        assert page.status == 404, path
        assert "Ann" not in page.text
    refused = await world.ui.post(
        stranger, f"/contacts/{world.contact_id}/edit", {"section": "tags", "tags": "pwned"}, htmx=True
    )
    assert refused.status == 404
    listing = await world.ui.get(stranger, "/contacts")
    assert "Ann" not in listing.text and "Bob" not in listing.text
    assert (await world.ui.get(world.admin, "/contacts/99999999")).status == 404
    assert (await world.ui.get(world.admin, "/contacts/abc")).status == 404


async def test_the_list_searches_and_pages(world: World) -> None:
    for n in range(30):
        status, _ = await world.ui.api(world.admin, "POST", "/contacts", {"name": f"Zed {n:02d}"})
        assert status == 201
    first = await world.ui.get(world.admin, "/contacts")
    assert first.status == 200
    assert first.texts().count("Zed ") == 25
    assert 'rel="next"' in first.text
    next_href = (
        first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    )
    second = await world.ui.get(world.admin, next_href)
    assert second.texts().count("Zed ") == 5
    assert "Ann" in second.texts() and "Bob" in second.texts()
    assert 'rel="next"' not in second.text

    found = await world.ui.get(world.admin, "/contacts?q=initech")
    assert "Ann" in found.texts() and "Bob" not in found.texts() and "Zed" not in found.texts()
    # A phone number in another format finds its owner by identity.
    found = await world.ui.get(world.admin, "/contacts?q=%2B1%20415-555-0100")
    assert "Ann" in found.texts() and "Zed" not in found.texts()
    nothing = await world.ui.get(world.admin, "/contacts?q=nobody-here")
    assert "No contact matches" in nothing.texts()
    broken = await world.ui.get(world.admin, "/contacts?cursor=garbage")
    assert broken.status == 400


async def test_the_company_link_lists_the_companys_contacts(world: World) -> None:
    panel = await world.ui.get(world.admin, f"/contacts/{world.contact_id}")
    link = panel.text.split('class="company-link"')[0].rsplit('href="', 1)[1].split('"', 1)[0]
    assert link.startswith("/contacts?company_id=")
    page = await world.ui.get(world.admin, link)
    assert page.status == 200
    assert "Contacts at Initech" in page.texts()
    assert "Ann" in page.texts() and "Bob" not in page.texts()
    stranger = await world.ui.person(Role.ADMIN, tenant="globex")
    hidden = await world.ui.get(stranger, link)
    assert hidden.status == 400 and "Initech" not in hidden.text and "Ann" not in hidden.text
