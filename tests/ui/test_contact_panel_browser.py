"""The contact panel in a real browser against `parley serve`: edit in place with htmx, refusals inline."""

from __future__ import annotations

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from crm_core.models import ChannelIdentity, Contact, ContactTag
from parley.db import Database
from parley.models import Role
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def _contact(db: Database, tenant_id: int) -> int:
    async with db.transaction() as session:
        contact = Contact(
            tenant_id=tenant_id,
            name="Ann <b>Customer</b>",
            email="ann@example.com",
            phone="+14155550100",
            attributes={"plan": "gold"},
        )
        session.add(contact)
        await session.flush()
        for kind, address in (
            ("email", "ann@example.com"),
            ("phone", "+14155550100"),
            ("telegram", "424242"),
        ):
            session.add(
                ChannelIdentity(tenant_id=tenant_id, contact_id=contact.id, kind=kind, address=address)
            )
        session.add(ContactTag(tenant_id=tenant_id, contact_id=contact.id, tag="vip"))
        return contact.id


async def test_an_agent_edits_a_contacts_email_in_place(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", role=Role.AGENT, name="Ada Agent")
    contact_id = await _contact(db, agent.tenant_id)
    page = await browsing.signed_in(parley_server, agent, path=f"/contacts/{contact_id}")
    panel = page.locator(f"#contact-panel-{contact_id}")
    await expect(panel.get_by_role("heading", name="Ann <b>Customer</b>")).to_be_visible()  # text, not markup
    await expect(panel.locator("[data-field=email]")).to_have_text("ann@example.com")

    await panel.get_by_label("Edit details").click()
    await panel.get_by_label("Email").fill("ann@")
    await panel.get_by_role("button", name="Save").first.click()
    error = page.locator("#err-email")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("email")
    await expect(page.get_by_label("Email")).to_have_value("ann@")  # what was typed stays
    async with db.sessionmaker() as session:
        assert (await session.get(Contact, contact_id)).email == "ann@example.com"  # type: ignore[union-attr]

    await page.get_by_label("Email").fill("ann.new@example.com")
    await page.locator(f"#contact-panel-{contact_id}").get_by_role("button", name="Save").first.click()
    await expect(page.get_by_role("status")).to_have_text("Saved.")
    await expect(page.locator("#err-email")).to_have_count(0)
    await expect(page.locator("[data-field=email]")).to_have_text("ann.new@example.com")
    await expect(page.locator(".identities")).to_contain_text("ann.new@example.com")
    async with db.sessionmaker() as session:
        contact = await session.get(Contact, contact_id)
        assert contact is not None and contact.email == "ann.new@example.com"
        addresses = (
            await session.scalars(
                select(ChannelIdentity.address).where(ChannelIdentity.contact_id == contact_id)
            )
        ).all()
    assert "ann.new@example.com" in addresses
    await screenshot(page, "contact-panel")

    # Phone width: the same page still works.
    narrow = await browsing.new_page(width=390, height=844)
    await narrow.context.add_cookies(await page.context.cookies())
    await narrow.goto(f"{parley_server.url}/contacts")
    await expect(narrow.get_by_role("link", name="Ann <b>Customer</b>")).to_be_visible()
    await screenshot(narrow, "contacts-phone")


async def test_the_contacts_list_searches_as_you_type(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", role=Role.AGENT)
    await _contact(db, agent.tenant_id)
    async with db.transaction() as session:
        session.add(Contact(tenant_id=agent.tenant_id, name="Bob Builder", attributes={}))
    page = await browsing.signed_in(parley_server, agent, path="/contacts")
    await expect(page.get_by_role("link", name="Bob Builder")).to_be_visible()
    await page.get_by_label("Search contacts").fill("+1 (415) 555-0100")
    await expect(page.get_by_role("link", name="Bob Builder")).to_have_count(0)
    await expect(page.get_by_role("link", name="Ann <b>Customer</b>")).to_be_visible()
    await screenshot(page, "contacts")
