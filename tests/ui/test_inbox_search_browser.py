"""The inbox's search box in Chromium, on PostgreSQL: results open the conversation at the message.

PostgreSQL because it is the production store, and because on this branch SQLite's message index
loses its triggers: a later migration rebuilds `messages` (batch mode) until the branches' migrations
are chained with search last.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from parley.db import Database
from tests.ui.conftest import Browsing, ParleyServer, make_agent
from tests.ui.inbox_seed import add_message, make_contact, make_conversation, make_inbox

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def test_search_opens_the_conversation_at_the_message(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    inbox = await make_inbox(db, agent.tenant_id, channel="twilio_sms", name="SMS line")
    conversation = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id, name="Ines <b>Costa</b>")
    )
    for n in range(30):
        await add_message(db, conversation, f"filler message {n}", ago=60 - n)
    target = await add_message(db, conversation, "my refund for <order> 7781 never came", ago=20)
    for n in range(30):
        await add_message(db, conversation, f"later message {n}", ago=19 - n * 0.1)
    elsewhere = await make_conversation(db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id))
    await add_message(db, elsewhere, "nothing to see")

    page = await browsing.signed_in(parley_server, agent, path=f"/inbox/c/{elsewhere}")
    await page.locator("body").press("/")
    await page.keyboard.type("refun")
    results = page.get_by_role("region", name="Search results")
    hit = results.get_by_role("link", name=re.compile("my refund for <order> 7781"))
    await expect(hit).to_be_visible()
    await expect(hit.locator("mark")).to_have_text("refund")
    await expect(hit).to_contain_text("Ines <b>Costa</b>")  # a name shown as text, tags and all
    await page.keyboard.press("ArrowDown")
    await expect(hit).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(f"/inbox/c/{conversation}\\?at={target}#m{target}$"))
    message = page.locator(f"#m{target}")
    await expect(message).to_have_class(re.compile("highlight"))
    await expect(message).to_be_in_viewport()
    await expect(page.locator("#thread .msg").last).not_to_be_in_viewport()
