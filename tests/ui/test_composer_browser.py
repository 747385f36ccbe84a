"""The composer in Chromium against a real `parley serve`: replies reach the (fake) provider, notes
never do and light the mentioned agent's bell, `/` inserts canned responses filled in for the
contact, files are uploaded and sent, and WhatsApp outside its window sends a template."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Page, expect
from sqlalchemy import func, select, update

from inbox.models import Conversation, Message, Notification
from parley.auth import hash_password
from parley.db import Database, utcnow
from parley.models import OutboxEvent, Role, User
from tests.conftest import eventually
from tests.fakes.twilio_api import FakeTwilioApi
from tests.ui.composer_support import (
    CONTENT_SID,
    WHATSAPP_TEMPLATES,
    make_canned,
    make_conversation,
    make_inbox,
)
from tests.ui.conftest import (
    PASSWORD,
    Agent,
    Browsing,
    ParleyServer,
    make_agent,
    screenshot,
    sign_in,
)

# The browser is what is new here: SQLite for most, both databases for the two main paths.
on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
on_both = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
)


@dataclass
class Desk:
    db: Database
    server: ParleyServer
    browsing: Browsing
    fake: FakeTwilioApi
    ada: Agent
    bob: Agent
    sms_inbox: int

    async def open_composer(self, conversation_id: int, agent: Agent | None = None) -> Page:
        page = await self.browsing.signed_in(
            self.server, agent or self.ada, path=f"/compose/{conversation_id}"
        )
        await expect(page.locator("#composer[data-composer-ready]")).to_be_attached()
        return page

    async def count(self, model: type, *where: object) -> int:
        async with self.db.sessionmaker() as session:
            query = select(func.count()).select_from(model).where(*where)
            return int((await session.execute(query)).scalar_one())


@pytest_asyncio.fixture
async def desk(
    db: Database, parley_server: ParleyServer, browsing: Browsing, fake_twilio: FakeTwilioApi
) -> AsyncIterator[Desk]:
    ada = await make_agent(db, "acme", role=Role.ADMIN, email="ada@acme.example.com", name="Ada Lovelace")
    async with db.transaction() as session:
        bob_user = User(
            tenant_id=ada.tenant_id,
            email="bob@acme.example.com",
            password_hash=hash_password(PASSWORD),
            role=Role.AGENT,
            name="Bob Builder",
        )
        session.add(bob_user)
        await session.flush()
        bob = Agent(bob_user.email, PASSWORD, bob_user.id, ada.tenant_id)
    sms_inbox = await make_inbox(db, ada.tenant_id, "twilio_sms", fake_twilio)
    yield Desk(db, parley_server, browsing, fake_twilio, ada, bob, sms_inbox)


@on_both
async def test_ctrl_enter_sends_the_reply_with_its_attachment_to_twilio(desk: Desk, tmp_path: Path) -> None:
    conversation = await make_conversation(desk.db, desk.ada.tenant_id, desk.sms_inbox)
    page = await desk.open_composer(conversation)
    box = page.get_by_label("Reply", exact=True)
    await box.fill("Your parcel left this morning.")
    # Enter is a new line, not a send.
    await box.press("Enter")
    await box.type("Tracking attached.")
    # The draft survives a reload (a live refresh of the page, a misclick).
    await page.reload()
    await expect(page.locator("#composer[data-composer-ready]")).to_be_attached()
    box = page.get_by_label("Reply", exact=True)
    await expect(box).to_have_value("Your parcel left this morning.\nTracking attached.")

    label = tmp_path / "label.png"
    label.write_bytes(PNG)
    await page.locator("#composer-file").set_input_files(str(label))
    await expect(page.locator(".composer-file")).to_contain_text("label.png · image/png")
    assert desk.fake.requests == []

    await box.press("Control+Enter")
    await expect(page.locator("[data-composer-status]")).to_have_text("Sent")
    await expect(box).to_have_value("")
    await expect(page.locator(".composer-file")).to_have_count(0)
    await eventually(lambda: len(desk.fake.requests) == 1)
    sent = desk.fake.requests[0]
    assert sent["Body"] == ["Your parcel left this morning.\nTracking attached."]
    assert sent["To"] == ["+14155550100"]
    [media_url] = sent["MediaUrl"]
    assert media_url.startswith(f"{desk.server.url}/media/{desk.ada.tenant_id}/")
    # The URL Twilio is given serves the uploaded bytes.
    response = await page.request.get(media_url)
    assert response.status == 200 and await response.body() == PNG
    # After a send, nothing is left to restore.
    await page.reload()
    await expect(page.get_by_label("Reply", exact=True)).to_have_value("")


@on_sqlite
async def test_a_refused_reply_keeps_its_text_and_says_why(desk: Desk) -> None:
    conversation = await make_conversation(desk.db, desk.ada.tenant_id, desk.sms_inbox)
    page = await desk.open_composer(conversation)
    box = page.get_by_label("Reply", exact=True)
    await box.fill("x" * 1601)  # over SMS's 1600 characters
    await box.press("Control+Enter")
    error = page.locator("#composer-form [data-composer-error]")
    await expect(error).to_contain_text("at most 1600 characters")
    await expect(box).to_have_value("x" * 1601)
    assert desk.fake.requests == []


@on_both
async def test_a_note_never_reaches_the_customer_and_rings_the_mentioned_agents_bell(desk: Desk) -> None:
    conversation = await make_conversation(desk.db, desk.ada.tenant_id, desk.sms_inbox)
    bob_page = await desk.browsing.signed_in(desk.server, desk.bob, path="/account")
    bell = bob_page.get_by_role("button", name="Notifications")
    await expect(bell).to_be_visible()
    await expect(bob_page.locator("[data-bell-count]")).to_be_hidden()
    await bob_page.wait_for_function("window.parley.live && window.parley.live.connected")

    page = await desk.open_composer(conversation)
    await page.get_by_role("tab", name="Private note").click()
    await expect(page.locator("#composer")).to_have_class("composer note-mode")
    box = page.get_by_label("Private note", exact=True)
    await box.type("Refund approved? @bo")
    suggestions = page.get_by_role("listbox", name="People to mention")
    await expect(suggestions.get_by_role("option")).to_have_count(1)
    await expect(suggestions.get_by_role("option")).to_contain_text("Bob Builder")
    await box.press("Enter")
    await expect(box).to_have_value("Refund approved? @bob ")
    await box.type("please check the order first.")
    await screenshot(page, "composer-note")
    await box.press("Meta+Enter")
    await expect(page.locator("[data-composer-status]")).to_have_text("Note added, 1 notified")

    async with desk.db.sessionmaker() as session:
        note = (await session.execute(select(Message))).scalar_one()
    assert note.private and note.body == "Refund approved? @bob please check the order first."
    assert await desk.count(OutboxEvent, OutboxEvent.topic == "message.outbound") == 0
    assert await desk.count(Notification, Notification.user_id == desk.bob.user_id) == 1

    # Live: Bob's page, open all along, hears of it over /live (live.js) and counts it.
    await expect(bob_page.locator("[data-bell-count]")).to_have_text("1")
    await expect(bell).to_have_attribute("aria-label", "Notifications, 1 unread")
    await bell.click()
    item = bob_page.locator(".bell-item.unread a")
    await expect(item).to_contain_text("Ada Lovelace mentioned you on Ann Lee")
    await expect(item).to_contain_text("Refund approved? @bob please check")
    await expect(item).to_have_attribute("href", f"/inbox/c/{conversation}#m{note.id}")
    await screenshot(bob_page, "composer-bell")
    await item.click()
    await bob_page.wait_for_url(f"**/inbox/c/{conversation}#m{note.id}")
    await eventually(lambda: _all_read(desk, desk.bob.user_id))
    assert desk.fake.requests == []


async def _all_read(desk: Desk, user_id: int) -> bool:
    unread = Notification.read_at.is_(None)
    return await desk.count(Notification, Notification.user_id == user_id, unread) == 0


@on_sqlite
async def test_slash_inserts_a_canned_response_filled_in_for_the_contact(desk: Desk) -> None:
    conversation = await make_conversation(desk.db, desk.ada.tenant_id, desk.sms_inbox, name="Ann Lee")
    await make_canned(
        desk.db,
        desk.ada.tenant_id,
        "greet",
        "Greeting",
        "Hi {{ contact.first_name | default('there') }}, {{ agent.first_name }} here. How can I help?",
    )
    await make_canned(desk.db, desk.ada.tenant_id, "refund", "Refund policy", "Refunds take 5 days.")
    page = await desk.open_composer(conversation)
    box = page.get_by_label("Reply", exact=True)
    await box.type("/")
    listbox = page.get_by_role("listbox", name="Canned responses")
    await expect(listbox.get_by_role("option")).to_have_count(2)
    await box.type("g")
    await expect(listbox.get_by_role("option")).to_have_count(1)
    await box.press("Backspace")
    await expect(listbox.get_by_role("option")).to_have_count(2)
    await box.press("ArrowDown")
    await expect(listbox.get_by_role("option", selected=True)).to_contain_text("/refund")
    await box.press("ArrowUp")
    await expect(listbox.get_by_role("option", selected=True)).to_contain_text("/greet")
    await box.press("Enter")
    await expect(box).to_have_value("Hi Ann, Ada here. How can I help?")
    await expect(listbox).to_be_hidden()
    assert desk.fake.requests == []


@on_sqlite
async def test_whatsapp_outside_its_window_sends_an_approved_template(desk: Desk) -> None:
    whatsapp = await make_inbox(
        desk.db,
        desk.ada.tenant_id,
        "twilio_whatsapp",
        desk.fake,
        phone_number="+14155238886",
        templates=WHATSAPP_TEMPLATES,
    )
    conversation = await make_conversation(
        desk.db, desk.ada.tenant_id, whatsapp, last_inbound_ago=timedelta(hours=30)
    )
    page = await desk.open_composer(conversation)
    template_form = page.locator("#composer-template-form")
    await expect(template_form).to_be_visible()
    await expect(page.locator("#composer-form")).to_be_hidden()
    await expect(template_form).to_contain_text("24 hours")
    await expect(page.get_by_label("{{first_name}}")).to_have_value("Ann")
    await page.get_by_label("{{2}}").fill("A-1001")
    await expect(page.locator("[data-template-preview]")).to_have_text(
        "Hi Ann, your order A-1001 is ready. Reply to this message to talk to us."
    )
    await screenshot(page, "composer-template")
    await page.get_by_role("button", name="Send template").click()
    await expect(page.locator("[data-composer-status]")).to_have_text("Template sent")
    await eventually(lambda: len(desk.fake.requests) == 1)
    sent = desk.fake.requests[0]
    assert sent["ContentSid"] == [CONTENT_SID]
    assert json.loads(sent["ContentVariables"][0]) == {"first_name": "Ann", "2": "A-1001"}
    assert sent["To"] == ["whatsapp:+14155550100"]
    # Notes still work outside the window.
    await page.get_by_role("tab", name="Private note").click()
    await expect(page.locator("#composer-form")).to_be_visible()
    await expect(template_form).to_be_hidden()


@on_sqlite
async def test_inside_the_window_a_countdown_and_the_phone_layout(desk: Desk) -> None:
    whatsapp = await make_inbox(
        desk.db, desk.ada.tenant_id, "twilio_whatsapp", desk.fake, phone_number="+14155238886"
    )
    conversation = await make_conversation(
        desk.db, desk.ada.tenant_id, whatsapp, last_inbound_ago=timedelta(hours=21)
    )
    page = await desk.browsing.new_page(width=390, height=800)
    await sign_in(page, desk.server, desk.ada, path=f"/compose/{conversation}")
    await expect(page.locator("#composer-window")).to_contain_text("Window closes in 2 h 59 min")
    box = page.get_by_label("Reply", exact=True)
    await expect(box).to_be_visible()
    width = await box.evaluate("el => el.getBoundingClientRect().width")
    assert 300 < width <= 390
    # The top bar fits the phone: nothing pushes the page wider than the screen, sign-out in reach.
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    sign_out = await page.get_by_role("button", name="Sign out").bounding_box()
    assert sign_out is not None and sign_out["x"] + sign_out["width"] <= 390
    await screenshot(page, "composer-phone")


@on_sqlite
async def test_the_customer_writing_again_reopens_the_window_without_losing_the_draft(desk: Desk) -> None:
    whatsapp = await make_inbox(
        desk.db,
        desk.ada.tenant_id,
        "twilio_whatsapp",
        desk.fake,
        phone_number="+14155238886",
        templates=WHATSAPP_TEMPLATES,
    )
    conversation = await make_conversation(
        desk.db, desk.ada.tenant_id, whatsapp, last_inbound_ago=timedelta(hours=30)
    )
    page = await desk.open_composer(conversation)
    await expect(page.locator("#composer-template-form")).to_be_visible()
    await page.get_by_role("tab", name="Private note").click()
    await page.get_by_label("Private note", exact=True).fill("Customer asked about A-1001")

    async with desk.db.transaction() as session:
        await session.execute(
            update(Conversation).where(Conversation.id == conversation).values(last_inbound_at=utcnow())
        )
    # What live.js dispatches when the customer's message arrives.
    await page.evaluate(
        """(id) => document.dispatchEvent(new CustomEvent("parley:event",
            {detail: {topic: "message.received", payload: {conversation_id: id}, id: 7}}))""",
        conversation,
    )
    await expect(page.locator("#composer")).to_have_attribute("data-template-mode", "false")
    await expect(page.locator("#composer-template-form")).to_have_count(0)
    await expect(page.get_by_label("Private note", exact=True)).to_have_value("Customer asked about A-1001")
    await page.get_by_role("tab", name="Reply").click()
    countdown = re.compile(r"Window closes in (23 h 59|24 h 0) min")
    await expect(page.locator("#composer-window")).to_contain_text(countdown)
    box = page.get_by_label("Reply", exact=True)
    await expect(box).to_be_enabled()
    await box.fill("Thanks for writing back!")
    await box.press("Control+Enter")
    await eventually(lambda: len(desk.fake.requests) == 1)
    assert desk.fake.requests[0]["Body"] == ["Thanks for writing back!"]


async def _drop_file(page: Page, name: str, data: bytes, content_type: str) -> None:
    """Drop a file on the composer as a desktop drag would (a DataTransfer holding a File)."""
    transfer = await page.evaluate_handle(
        """([name, bytes, type]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type}));
            return transfer;
        }""",
        [name, list(data), content_type],
    )
    await page.dispatch_event("#composer-form", "dragover", {"dataTransfer": transfer})
    await page.dispatch_event("#composer-form", "drop", {"dataTransfer": transfer})


@on_sqlite
async def test_files_dropped_on_the_box_are_attached_or_refused_with_a_reason(desk: Desk) -> None:
    conversation = await make_conversation(desk.db, desk.ada.tenant_id, desk.sms_inbox)
    page = await desk.open_composer(conversation)
    # Declared a PNG by the browser, it is text: attached as what its bytes are.
    await _drop_file(page, "notes.png", b"order A-1001: two boxes", "image/png")
    await expect(page.locator(".composer-file")).to_contain_text("notes.png · text/plain")
    await page.get_by_role("button", name="Remove notes.png").click()
    await expect(page.locator(".composer-file")).to_have_count(0)

    slack = await make_inbox(desk.db, desk.ada.tenant_id, "slack")
    in_slack = await make_conversation(
        desk.db, desk.ada.tenant_id, slack, kind="slack", address="U123", phone="+14155550144"
    )
    await page.goto(f"{desk.server.url}/compose/{in_slack}")
    await expect(page.locator("#composer[data-composer-ready]")).to_be_attached()
    await expect(page.locator("#composer-form")).to_contain_text("slack carries no files.")
    await _drop_file(page, "label.png", PNG, "image/png")
    await expect(page.locator("#composer-form [data-composer-error]")).to_have_text(
        "slack cannot carry files: send a link in the text instead."
    )
    await expect(page.locator(".composer-file")).to_have_count(0)


@on_sqlite
async def test_a_window_closing_while_the_agent_writes_turns_to_templates_and_keeps_the_text(
    desk: Desk,
) -> None:
    whatsapp = await make_inbox(
        desk.db,
        desk.ada.tenant_id,
        "twilio_whatsapp",
        desk.fake,
        phone_number="+14155238886",
        templates=WHATSAPP_TEMPLATES,
    )
    conversation = await make_conversation(
        desk.db, desk.ada.tenant_id, whatsapp, last_inbound_ago=timedelta(hours=23)
    )
    page = await desk.open_composer(conversation)
    box = page.get_by_label("Reply", exact=True)
    await box.fill("Here is what we can do for your order")
    async with desk.db.transaction() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == conversation)
            .values(last_inbound_at=utcnow() - timedelta(hours=25))
        )
    await box.press("Control+Enter")
    template_form = page.locator("#composer-template-form")
    await expect(template_form).to_be_visible()
    await expect(template_form.locator("[data-composer-error]")).to_contain_text("your text is kept")
    assert desk.fake.requests == []
    # The customer writes again: the reply box is back with the text.
    async with desk.db.transaction() as session:
        await session.execute(
            update(Conversation).where(Conversation.id == conversation).values(last_inbound_at=utcnow())
        )
    await page.reload()
    box = page.get_by_label("Reply", exact=True)
    await expect(box).to_have_value("Here is what we can do for your order")
