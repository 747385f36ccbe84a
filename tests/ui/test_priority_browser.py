"""Priority scoring in Chromium against a real `parley serve`: the thread header says why."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from crm_core.models import ContactTag, Deal, Pipeline, PipelineStage
from parley.db import Database
from parley.outbox import emit
from routing.prioritizer import recompute
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot
from tests.ui.inbox_seed import add_message, make_contact, make_conversation, make_inbox

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# htmx marks the elements it has taken over; a change on a menu swapped in an instant earlier is not.
_TAKEN_OVER = """(id) => {
    const form = document.getElementById(id)?.form;
    return Boolean(form?.['htmx-internal-data']?.initHash);
}"""


async def set_priority_in_header(page: Page, cid: int, level: str) -> None:
    """Pick a priority in the header's menu, as an agent does once live refreshes have settled."""
    menu = page.locator(f"#priority-{cid}")
    for attempt in range(3):
        await page.wait_for_load_state("networkidle")
        await page.wait_for_function(_TAKEN_OVER, arg=f"priority-{cid}")
        try:
            async with page.expect_response(
                lambda r: r.url.endswith(f"/inbox/c/{cid}/priority"), timeout=5000
            ):
                if attempt == 0 or await menu.input_value() != level:
                    await menu.select_option(level)
                else:  # a live refresh replaced the menu as it was used: the agent picks again
                    await menu.dispatch_event("change")
            return
        except PlaywrightTimeoutError:
            continue
    raise AssertionError("the priority menu never sent its form")


async def test_the_thread_header_explains_the_priority_and_who_overrode_it(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    inbox = await make_inbox(db, agent.tenant_id)
    contact = await make_contact(db, agent.tenant_id, name="Zoë Adler")
    cid = await make_conversation(db, agent.tenant_id, inbox, contact)
    await add_message(db, cid, "Hello, where is my order?", ago=14.2)
    async with db.transaction() as session:
        pipeline = Pipeline(tenant_id=agent.tenant_id, name="Sales")
        session.add(pipeline)
        await session.flush()
        stage = PipelineStage(tenant_id=agent.tenant_id, pipeline_id=pipeline.id, name="Talking", position=0)
        session.add(stage)
        await session.flush()
        session.add(
            Deal(
                tenant_id=agent.tenant_id,
                pipeline_id=pipeline.id,
                stage_id=stage.id,
                title="Fleet",
                amount_minor=1_200_000,
                currency="EUR",
                contact_id=contact[0],
            )
        )
        session.add(ContactTag(contact_id=contact[0], tag="newsletter", tenant_id=agent.tenant_id))
    async with db.transaction() as session:
        await recompute(session, agent.tenant_id, [cid])

    page = await browsing.signed_in(parley_server, agent, path=f"/inbox/c/{cid}")
    why = page.locator(f"#priority-why-{cid}")
    await expect(why).to_have_text(
        re.compile(r"Priority high because: open deal €12,000 · waiting 1[45] min")
    )
    badge = page.locator("#thread-head .prio")
    await expect(badge).to_have_text("high")
    await expect(badge).to_have_attribute("aria-describedby", f"priority-why-{cid}")
    await screenshot(page, "priority-thread-header")

    # The customer writes again: the server's dispatcher rescores, and the open header follows live.
    message = await add_message(db, cid, "This is an emergency, it is urgent!")
    async with db.transaction() as session:
        payload = {"message_id": message, "conversation_id": cid, "inbox_id": inbox, "contact_id": contact[0]}
        await emit(session, agent.tenant_id, ("message.received", payload))
    await expect(why).to_have_text(
        re.compile(
            r"Priority urgent because: open deal €12,000 · waiting 1[45] min · "
            r"said 'emergency' · said 'urgent'"
        )
    )
    await expect(page.locator("#thread-head .prio")).to_have_text("urgent")

    await set_priority_in_header(page, cid, "low")
    await expect(why).to_have_text(
        re.compile(r"Priority low, set by Ada Agent\. It stands until the conversation is resolved")
    )
    await expect(page.locator("#thread-head .prio")).to_have_text("low")
