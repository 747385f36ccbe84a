"""Ticket screens through the aiohttp client, on both databases: CSRF, roles, tenants, the contact panel."""

from __future__ import annotations

import pytest_asyncio
from sqlalchemy import func, select

from crm_core.ticket_models import Ticket
from parley.db import Database
from parley.models import Role
from parley.settings import Settings
from tests.ui.adminui_support import ClientFactory, UiClient, make_ui_client
from tests.ui.inbox_seed import add_message, make_contact, make_conversation, make_inbox


@pytest_asyncio.fixture
async def ui(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> UiClient:
    return await make_ui_client(aiohttp_client, db, settings)


async def _tickets(db: Database) -> int:
    async with db.sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(Ticket))).scalar_one())


async def test_ticket_screens_check_csrf_roles_and_tenants(ui: UiClient, db: Database) -> None:
    agent = await ui.person(Role.AGENT)
    inbox_id = await make_inbox(db, agent.tenant_id)
    contact = await make_contact(db, agent.tenant_id)
    conversation_id = await make_conversation(db, agent.tenant_id, inbox_id, contact)
    await add_message(db, conversation_id, "Refund <script>alert(1)</script>")

    thread = await ui.get(agent, f"/inbox/c/{conversation_id}")
    assert thread.status == 200 and 'data-testid="create-ticket-form"' in thread.text

    forged = await ui.post(agent, f"/inbox/c/{conversation_id}/tickets", {"type": "question"}, csrf=False)
    assert forged.status == 403 and await _tickets(db) == 0
    created = await ui.post(
        agent, f"/inbox/c/{conversation_id}/tickets", {"type": "question", "priority": "high"}
    )
    assert created.status == 303
    ticket_path = created.headers["Location"]
    page = await ui.get(agent, ticket_path)
    assert page.status == 200
    assert "Refund &lt;script&gt;" in page.text and "<script>alert" not in page.text
    panel = await ui.get(agent, f"/contacts/{contact[0]}")
    assert 'data-testid="contact-tickets"' in panel.text and "#1 Refund" in panel.texts()

    # Another tenant: no ticket page, no creating in our conversation, no editing.
    stranger = await ui.person(Role.ADMIN, tenant="globex")
    assert (await ui.get(stranger, ticket_path)).status == 404
    assert (await ui.post(stranger, f"/inbox/c/{conversation_id}/tickets", {})).status == 404
    assert (await ui.post(stranger, f"{ticket_path}/edit", {"status": "solved"})).status == 404
    assert await _tickets(db) == 1

    # A marketer neither sees tickets on the contact nor opens ticket pages.
    marketer = await ui.person(Role.MARKETER)
    assert "contact-tickets" not in (await ui.get(marketer, f"/contacts/{contact[0]}")).text
    assert (await ui.get(marketer, ticket_path)).status == 403

    # A closed ticket cannot be reopened: the page says why.
    for status in ("solved", "closed"):
        assert (await ui.post(agent, f"{ticket_path}/edit", {"status": status})).status == 303
    refused = await ui.post(agent, f"{ticket_path}/edit", {"status": "open"})
    assert refused.status == 422 and "cannot become open" in refused.text
