"""The widget's "Stop marketing messages" link in Chromium, on both databases: the choice is stored
on the visitor's contact, audited, and remembered by the widget across a reload (under the strict CSP)."""

from __future__ import annotations

from playwright.async_api import expect
from sqlalchemy import select

from crm_core.models import Consent
from parley.audit import AuditEntry
from tests.conftest import eventually
from tests.test_webchat_browser import Setup, browser, part, setup

__all__ = ["browser", "setup"]


async def test_a_visitor_stops_marketing_messages_from_the_widget(setup: Setup) -> None:
    page = await setup.open_page()
    await part(page, "launcher").click()
    await part(page, "prechat-name").fill("Bob")
    await part(page, "prechat-email").fill("bob@example.com")
    await part(page, "prechat-submit").click()
    await expect(part(page, "no-marketing")).to_be_visible()
    await expect(part(page, "no-marketing-done")).to_be_hidden()

    await part(page, "no-marketing").click()
    await expect(part(page, "no-marketing-done")).to_have_text("You will not receive marketing messages.")
    await expect(part(page, "no-marketing")).to_be_hidden()

    async def recorded() -> bool:
        async with setup.db.sessionmaker() as session:
            rows = (await session.execute(select(Consent.channel, Consent.purpose, Consent.granted))).all()
        return sorted(tuple(r) for r in rows) == [
            ("email", "marketing", False),
            ("webchat", "marketing", False),
        ]

    await eventually(recorded)
    async with setup.db.sessionmaker() as session:
        actors = (await session.execute(select(AuditEntry.actor_type))).scalars().all()
    assert actors == ["contact", "contact"]

    await page.reload()
    await part(page, "launcher").click()
    await expect(part(page, "no-marketing-done")).to_be_visible()
    await expect(part(page, "no-marketing")).to_be_hidden()
    await page.close()
