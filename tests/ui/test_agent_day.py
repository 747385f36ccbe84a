"""An agent's first day, as issue 4 describes it, in Chromium against a real `parley serve`.

A signed inbound SMS posted to the webhook appears in the list and the open thread without a
reload; the reply typed in the composer reaches the Twilio fake; the delivered tick appears when
Twilio's signed status callback arrives; the agent resolves. Hostile customer text stays text.
Two agents in two browsers see an assignment change live. Another tenant's conversation is not
found by URL.
"""

from __future__ import annotations

import re
import uuid

import aiohttp
import pytest
from playwright.async_api import Page, expect
from sqlalchemy import select

from inbox.models import Conversation, ConversationStatus
from parley.db import Database
from parley.models import Role
from tests.conftest import eventually, make_twilio_inbox
from tests.fakes.twilio_api import FakeTwilioApi, post_signed
from tests.test_sms_end_to_end import inbound_sms
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


async def text_in(server: ParleyServer, fake: FakeTwilioApi, inbox_id: int, body: str) -> None:
    """The customer texts `body`: Twilio's documented webhook, signed with the account's token."""
    sid = "SM" + uuid.uuid4().hex
    async with aiohttp.ClientSession() as http:
        result = await post_signed(
            http, f"{server.url}/webhooks/{inbox_id}", inbound_sms(sid=sid, body=body), fake.auth_token
        )
    assert result.status == 200, result.text


async def conversation_of(db: Database, tenant_id: int) -> Conversation:
    async with db.sessionmaker() as session:
        return (
            await session.execute(select(Conversation).where(Conversation.tenant_id == tenant_id))
        ).scalar_one()


def row_with(page: Page, text: str):  # type: ignore[no-untyped-def]
    return page.locator("#rows .row").filter(has_text=text)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_an_agent_answers_an_sms_and_resolves_it_without_reloading(
    db: Database, parley_server: ParleyServer, browsing: Browsing, fake_twilio: FakeTwilioApi
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    inbox_id = await make_twilio_inbox(
        db, agent.tenant_id, fake_twilio.base_url, fake_twilio.account_sid, fake_twilio.auth_token
    )
    page = await browsing.signed_in(parley_server, agent, path="/inbox?view=all")
    navigations: list[str] = []
    page.on(
        "framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None
    )

    await text_in(parley_server, fake_twilio, inbox_id, "Hi, where is my order?")
    row = row_with(page, "where is my order")
    await expect(row).to_have_count(1)
    await row.locator("a.row-link").click()
    thread = page.locator("#thread")
    await expect(thread.locator(".msg")).to_contain_text(["Hi, where is my order?"])

    # The customer writes again while the thread is open, hostile markup included: it shows, as text.
    await text_in(parley_server, fake_twilio, inbox_id, HOSTILE)
    await expect(thread.locator(".msg").last).to_contain_text(HOSTILE)
    assert await page.evaluate("window.__pwned") is None
    await expect(thread.locator(".msg img[src='x']")).to_have_count(0)

    # The agent answers with Ctrl+Enter; the provider receives it.
    composer = page.locator("#composer-text")
    await composer.fill("It ships tomorrow, sorry for the wait!")
    await composer.press("Control+Enter")
    await eventually(
        lambda: any(m["body"].startswith("It ships tomorrow") for m in fake_twilio.messages.values())
    )
    sid = next(s for s, m in fake_twilio.messages.items() if m["body"].startswith("It ships tomorrow"))
    reply = thread.locator(".msg").filter(has_text="It ships tomorrow")
    await expect(reply).to_have_count(1)

    # Twilio's signed status callback: the delivered tick appears without a reload.
    assert await fake_twilio.send_status(sid, "delivered") == 200
    await expect(reply.locator(".tick-delivered")).to_have_count(1)
    await screenshot(page, "agent-day-thread")

    await page.get_by_role("button", name="Resolve").click()
    await expect(page.locator("#thread-head .status")).to_contain_text("resolved")
    await eventually(lambda: _resolved(db, agent.tenant_id))
    # Everything above happened on the one page load the agent started with (history pushes aside).
    assert not [url for url in navigations if "/login" in url]

    # Another tenant's agent, guessing the URL, finds nothing.
    stranger = await make_agent(db, "globex", email="eve@globex.example.com")
    other = await browsing.signed_in(parley_server, stranger, path="/inbox")
    conversation = await conversation_of(db, agent.tenant_id)
    response = await other.goto(f"{parley_server.url}/inbox/c/{conversation.id}")
    assert response is not None and response.status == 404
    await expect(other.locator("body")).not_to_contain_text("where is my order")


async def _resolved(db: Database, tenant_id: int) -> bool:
    return (await conversation_of(db, tenant_id)).status == ConversationStatus.RESOLVED


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_two_agents_see_an_assignment_change_live(
    db: Database, parley_server: ParleyServer, browsing: Browsing, fake_twilio: FakeTwilioApi
) -> None:
    ada = await make_agent(db, "acme", name="Ada Agent")
    sam = await make_agent(db, "acme", role=Role.SUPERVISOR, name="Sam Supervisor")
    inbox_id = await make_twilio_inbox(
        db, ada.tenant_id, fake_twilio.base_url, fake_twilio.account_sid, fake_twilio.auth_token
    )
    await text_in(parley_server, fake_twilio, inbox_id, "Can someone call me back?")
    conversation = await conversation_of(db, ada.tenant_id)
    ada_page = await browsing.signed_in(parley_server, ada, path="/inbox?view=all")
    sam_page = await browsing.signed_in(parley_server, sam, path=f"/inbox/c/{conversation.id}?view=all")
    ada_row = row_with(ada_page, "call me back")
    await expect(ada_row.locator(".assignee")).to_have_text("Unassigned")

    await sam_page.get_by_label("Assign to").select_option(value=f"user:{ada.user_id}")
    await sam_page.locator(".assign-form").get_by_role("button", name="Assign").click()
    # Ada's list follows without a reload.
    await expect(ada_row.locator(".assignee")).to_have_text("Ada Agent")
    await screenshot(ada_page, "agent-day-assigned-live")
    assert re.search(r"/inbox\?view=all$", ada_page.url)
