"""Tickets in a real browser against `parley serve`: from a conversation, in the contact panel, solved."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from crm_core.ticket_models import Ticket, TicketConversation
from parley.db import Database
from parley.models import Role
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot
from tests.ui.inbox_seed import add_message, make_contact, make_conversation, make_inbox

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_an_agent_opens_a_ticket_from_a_conversation_sees_it_on_the_contact_and_solves_it(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", role=Role.AGENT, name="Ada Agent")
    inbox_id = await make_inbox(db, agent.tenant_id)
    contact = await make_contact(db, agent.tenant_id, name="Ann Customer")
    conversation_id = await make_conversation(
        db, agent.tenant_id, inbox_id, contact, assignee_id=agent.user_id
    )
    await add_message(db, conversation_id, "The <b>app</b> crashes on login\nSince this morning", ago=5)

    page = await browsing.signed_in(parley_server, agent, path=f"/inbox/c/{conversation_id}")
    await page.get_by_text("Create ticket", exact=True).first.click()
    form = page.get_by_test_id("create-ticket-form")
    await form.get_by_label("Type").select_option("incident")
    await form.get_by_role("button", name="Create ticket").click()

    await expect(page).to_have_url(re.compile(r"/tickets/\d+$"))
    # The subject is the customer's first line, shown as text (never markup).
    await expect(page.get_by_role("heading", level=1)).to_have_text("#1 The <b>app</b> crashes on login")
    await expect(page.locator("[data-field=status]")).to_have_text("open")
    await expect(page.locator("[data-field=assignee]")).to_have_text("Ada Agent")
    async with db.sessionmaker() as session:
        ticket = (await session.execute(select(Ticket))).scalar_one()
        links = (await session.scalars(select(TicketConversation.conversation_id))).all()
    assert (ticket.type, ticket.source, ticket.contact_id, ticket.created_by) == (
        "incident",
        "agent",
        contact[0],
        agent.user_id,
    )
    assert links == [conversation_id]

    # The contact panel lists it among the open tickets.
    await page.goto(f"{parley_server.url}/contacts/{contact[0]}")
    tickets = page.get_by_test_id("contact-tickets")
    await expect(tickets).to_contain_text("#1 The <b>app</b> crashes on login")
    await expect(tickets.locator(".ticket-status")).to_have_text("open")
    await screenshot(page, "contact-panel-tickets")

    # Solve it from its page; it leaves the panel's open list.
    await tickets.get_by_role("link").first.click()
    await expect(page).to_have_url(re.compile(f"/tickets/{ticket.id}$"))
    await page.get_by_label("Status").select_option("solved")
    await page.get_by_test_id("ticket-edit").get_by_role("button", name="Save").click()
    await expect(page.locator("[data-field=status]")).to_have_text("solved")
    await screenshot(page, "ticket-solved")
    async with db.sessionmaker() as session:
        solved = await session.get(Ticket, ticket.id)
        assert solved is not None and solved.status == "solved" and solved.solved_at is not None
    await page.goto(f"{parley_server.url}/contacts/{contact[0]}")
    await expect(page.get_by_text("No open tickets.")).to_be_visible()
