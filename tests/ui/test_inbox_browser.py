"""The inbox in Chromium against a real `parley serve`: opening conversations, keys, email, phone width.

The harness fails any test whose pages break the Content-Security-Policy or throw a script error.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import expect
from sqlalchemy import select

from inbox.models import Conversation, ConversationRead, ConversationStatus, Message
from parley.db import Database
from parley.media import MediaStore
from parley.models import Role
from parley.outbox import emit
from tests.conftest import eventually, free_port
from tests.fakes.server import serve_on_loopback
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, Smarthost
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot
from tests.ui.inbox_seed import add_message, make_contact, make_conversation, make_inbox

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# A one-pixel transparent GIF.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)


@dataclass
class ImageServer:
    """A loopback web server that counts every image a browser asks it for."""

    url: str = ""
    requests: list[str] = field(default_factory=list)

    async def image(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.Response(body=PIXEL, content_type="image/gif")


@pytest_asyncio.fixture
async def image_server() -> AsyncIterator[ImageServer]:
    server = ImageServer()
    app = web.Application()
    app.router.add_get("/{name}", server.image)
    runner, server.url = await serve_on_loopback(app)
    try:
        yield server
    finally:
        await runner.cleanup()


def expected_block(browsing: Browsing, image_server: ImageServer) -> list[str]:
    """The email frame's policy refusing the remote image (reported by the browser as a CSP violation)."""
    return [
        problem
        for problem in browsing.watch.problems
        if f"{image_server.url}/logo.gif" in problem and '"img-src data:"' in problem
    ]


async def read_mark(db: Database, conversation_id: int) -> int | None:
    async with db.sessionmaker() as session:
        return (
            await session.execute(
                select(ConversationRead.last_read_message_id).where(
                    ConversationRead.conversation_id == conversation_id
                )
            )
        ).scalar_one_or_none()


async def test_an_agent_opens_conversations_and_works_them_from_the_keyboard(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    await make_agent(db, "acme", email="bo@acme.example.com", name="Bo Builder")
    inbox = await make_inbox(db, agent.tenant_id, channel="twilio_whatsapp", name="WhatsApp")
    sms = await make_inbox(db, agent.tenant_id, channel="twilio_sms", name="SMS line")
    names = ["Zoë Adler", "Bruno Diaz", "Chen Wei"]
    ids = []
    for minutes, name in zip((3, 2, 1), names, strict=True):
        contact = await make_contact(db, agent.tenant_id, name=name)
        conversation = await make_conversation(
            db, agent.tenant_id, inbox if name != "Chen Wei" else sms, contact, assignee_id=agent.user_id
        )
        await add_message(db, conversation, f"Hello from {name}, I need help with my order.", ago=minutes + 1)
        await add_message(
            db,
            conversation,
            "Thanks, looking now.",
            inbound=False,
            sender_id=agent.user_id,
            status="read",
            ago=minutes + 0.5,
        )
        await add_message(db, conversation, f"Order {minutes}00{minutes} still not here", ago=minutes)
        ids.append(conversation)
    newest_first = list(reversed(ids))

    page = await browsing.signed_in(parley_server, agent)
    rows = page.locator("#rows .row")
    await expect(rows).to_have_count(3)
    await expect(rows.first).to_contain_text("Chen Wei")
    await expect(page.get_by_role("navigation", name="Views")).to_contain_text("Mine 3")

    # Click: the thread opens beside the list, the URL follows, the conversation is marked read.
    await page.get_by_role("link", name=re.compile("Bruno Diaz")).click()
    await expect(page).to_have_url(re.compile(f"/inbox/c/{ids[1]}$"))
    thread = page.locator("#thread")
    await expect(thread.locator(".msg")).to_have_count(3)
    await expect(thread).to_contain_text("Hello from Bruno Diaz")
    await expect(thread.locator(".tick-read")).to_have_count(1)
    await expect(page.locator(f'#rows .row[data-conversation-id="{ids[1]}"]')).not_to_have_class(
        re.compile("unread")
    )
    assert await read_mark(db, ids[1]) is not None
    await screenshot(page, "inbox")

    # Reload and back/forward keep what was open.
    await page.reload()
    await expect(thread).to_contain_text("Hello from Bruno Diaz")

    # j / k move through the list and open each conversation.
    await page.locator("body").press("j")
    await expect(page).to_have_url(re.compile(f"/inbox/c/{newest_first[2]}$"))
    await expect(thread).to_contain_text("Hello from Zoë Adler")
    await page.locator("body").press("k")
    await page.locator("body").press("k")
    await expect(page).to_have_url(re.compile(f"/inbox/c/{newest_first[0]}$"))
    await expect(thread).to_contain_text("Hello from Chen Wei")
    await page.go_back()
    await expect(thread).to_contain_text("Hello from Bruno Diaz")
    await page.go_forward()
    await expect(thread).to_contain_text("Hello from Chen Wei")

    # A reply written in the composer shows in the thread at once, queued; keys typed there are text.
    await page.locator("#composer-text").fill("We are on it, jk")
    await page.locator("#composer-text").press("Control+Enter")
    sent = thread.locator(".msg.out").last
    await expect(sent).to_contain_text("We are on it, jk")
    await expect(sent.locator(".tick")).to_have_count(1)
    await expect(page).to_have_url(re.compile(f"/inbox/c/{newest_first[0]}$"))

    # Typing in the search box is not a shortcut.
    await page.locator("#thread").focus()
    await page.keyboard.press("/")
    await expect(page.get_by_label("Search messages and contacts")).to_be_focused()
    await page.keyboard.type("jk")
    await expect(page).to_have_url(re.compile(f"/inbox/c/{newest_first[0]}$"))
    await page.keyboard.press("Escape")

    # ? shows the shortcuts; a opens the assignment; e resolves.
    await page.locator("#thread").focus()
    await page.keyboard.press("?")
    await expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_hidden()
    await page.keyboard.press("a")
    await expect(page.get_by_label("Assign to")).to_be_focused()
    await page.get_by_label("Assign to").select_option(label="Bo Builder · offline")
    await page.get_by_role("button", name="Assign", exact=True).click()
    await expect(thread).to_contain_text("Assigned to Bo Builder")
    await page.locator("#thread").focus()
    await page.keyboard.press("e")
    await expect(page.locator("#action-status")).to_contain_text("Resolved.")
    async with db.sessionmaker() as session:
        resolved = await session.get_one(Conversation, newest_first[0])
    assert resolved.status == ConversationStatus.RESOLVED
    # The list was refreshed: Chen's conversation left Mine (assigned away) and the open view.
    await expect(rows).to_have_count(2)

    # Reopening is refused while... nothing else is open for Chen here, so it works and says so.
    await page.get_by_role("button", name="Reopen").click()
    await expect(page.locator("#action-status")).to_contain_text("Status: open.")


async def test_reopening_explains_the_conflict(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", role=Role.SUPERVISOR, name="Sue")
    inbox = await make_inbox(db, agent.tenant_id)
    contact = await make_contact(db, agent.tenant_id, name="Pat")
    old = await make_conversation(db, agent.tenant_id, inbox, contact, status=ConversationStatus.RESOLVED)
    await add_message(db, old, "last week's question")
    newer = await make_conversation(db, agent.tenant_id, inbox, contact)
    await add_message(db, newer, "new question")
    page = await browsing.signed_in(parley_server, agent, path=f"/inbox/c/{old}")
    await expect(page.locator("#thread")).to_contain_text("last week's question")
    await page.get_by_role("button", name="Reopen").click()
    alert = page.locator("#action-status [role=alert]")
    await expect(alert).to_contain_text(f"already has conversation {newer} open")


async def test_email_frames_load_remote_images_only_when_asked(
    db: Database, parley_server: ParleyServer, browsing: Browsing, image_server: ImageServer
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    inbox = await make_inbox(db, agent.tenant_id, channel="email", name="support@acme.example")
    contact = await make_contact(db, agent.tenant_id, name="Olga Berg", email="olga@example.net")
    conversation = await make_conversation(db, agent.tenant_id, inbox, contact, assignee_id=agent.user_id)
    html = (
        "<h2>Invoice 2291</h2><p>Hello, the invoice <b>total</b> looks wrong:</p>"
        f'<p><img src="{image_server.url}/logo.gif" alt="logo" width="40"></p>'
        '<table border="1"><tr><td>Item</td><td>€120</td></tr></table>'
        "<p>Thanks,<br>Olga</p>"
    )
    await add_message(
        db,
        conversation,
        "Hello, the invoice total looks wrong",
        extra={"subject": "Invoice 2291", "html": html},
    )
    page = await browsing.signed_in(parley_server, agent, path=f"/inbox/c/{conversation}")
    frame = page.frame_locator("iframe.email-frame")
    await expect(frame.locator("h2")).to_have_text("Invoice 2291")
    await expect(frame.locator("b")).to_have_text("total")
    await page.wait_for_load_state("networkidle")
    assert image_server.requests == []  # the frame's policy kept the remote image out...
    assert expected_block(browsing, image_server)  # ...by refusing it, as the browser reports
    await screenshot(page, "thread-email")

    await page.get_by_role("button", name="Show remote images").click()
    await expect(frame.locator("h2")).to_have_text("Invoice 2291")
    await eventually(lambda: len(image_server.requests) > 0)
    assert image_server.requests[0] == "/logo.gif"
    # The refusals were the frame's policy at work, the only violations this test expects.
    for problem in expected_block(browsing, image_server):
        browsing.watch.problems.remove(problem)


async def test_a_voicemail_plays_in_the_thread(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    inbox = await make_inbox(db, agent.tenant_id, channel="twilio_voice", name="Phone line")
    contact = await make_contact(db, agent.tenant_id, name="Sam Caller")
    conversation = await make_conversation(db, agent.tenant_id, inbox, contact, assignee_id=agent.user_id)
    store = MediaStore(Path(parley_server.data_dir) / "media", 10_000_000)
    audio = await store.put(
        agent.tenant_id, b"ID3" + bytes(2000), filename="RE1.mp3", content_type="audio/mpeg"
    )
    await add_message(
        db,
        conversation,
        "",
        extra={
            "call": {
                "call_id": "CA1",
                "status": "no-answer",
                "direction": "inbound",
                "duration": 18,
                "leg": None,
            }
        },
        ago=3,
    )
    await add_message(
        db,
        conversation,
        "",
        extra={"recording": {"recording_id": "RE1", "url": "https://api.twilio.example/RE1", "duration": 42}},
        attachments=[
            {"url": audio.url, "content_type": "audio/mpeg", "filename": "RE1.mp3", "media_key": audio.key}
        ],
        ago=2,
    )
    await add_message(
        db,
        conversation,
        "Hi, this is Sam, please call me back about my booking for Friday.",
        extra={
            "voicemail": {
                "transcription_id": "TR1",
                "recording_id": "RE1",
                "status": "completed",
                "transcript": "x",
            }
        },
        ago=1,
    )
    page = await browsing.signed_in(parley_server, agent, path=f"/inbox/c/{conversation}")
    player = page.locator("#thread audio")
    await expect(player).to_have_count(1)
    await expect(page.locator("#thread")).to_contain_text("Inbound call: no-answer · 18 s")
    await expect(page.locator("#thread")).to_contain_text("please call me back")
    # The recording is served by the gateway itself (the page's policy allows nothing else).
    src = await player.get_attribute("src")
    assert src == f"/media/{audio.key}"
    response = await page.request.get(f"{parley_server.url}{src}")
    assert response.status == 200 and (await response.body()).startswith(b"ID3")
    await screenshot(page, "thread-voice")


async def test_at_phone_width_one_pane_shows_at_a_time(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    inbox = await make_inbox(db, agent.tenant_id, channel="webchat", name="Website")
    for name in ("Lena Park", "Omar Haddad"):
        conversation = await make_conversation(
            db,
            agent.tenant_id,
            inbox,
            await make_contact(db, agent.tenant_id, name=name),
            assignee_id=agent.user_id,
        )
        await add_message(db, conversation, f"Hi, {name} here. Do you ship to Norway?")
    page = await browsing.signed_in(parley_server, agent, width=390, height=800)
    await expect(page.locator("#rows .row")).to_have_count(2)
    await expect(page.locator("#thread")).to_be_hidden()
    await screenshot(page, "inbox-phone")
    await page.get_by_role("link", name=re.compile("Lena Park")).click()
    await expect(page.locator("#thread")).to_be_visible()
    await expect(page.locator(".list-pane")).to_be_hidden()
    await expect(page.locator("#thread")).to_contain_text("Do you ship to Norway?")
    await screenshot(page, "thread-phone")
    await page.get_by_role("link", name="Back to the list").click()
    await expect(page.locator(".list-pane")).to_be_visible()
    await expect(page.locator("#thread")).to_be_hidden()


async def test_the_page_follows_live_events_without_reloading(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    inbox = await make_inbox(db, agent.tenant_id, channel="twilio_sms", name="SMS line")
    open_one = await make_conversation(
        db,
        agent.tenant_id,
        inbox,
        await make_contact(db, agent.tenant_id, name="Nia Open"),
        assignee_id=agent.user_id,
    )
    await add_message(db, open_one, "first question", ago=5)
    reply = await add_message(
        db, open_one, "an answer", inbound=False, sender_id=agent.user_id, status="sent", ago=4
    )
    other = await make_conversation(
        db,
        agent.tenant_id,
        inbox,
        await make_contact(db, agent.tenant_id, name="Max Other"),
        assignee_id=agent.user_id,
    )
    await add_message(db, other, "hello", ago=10)
    page = await browsing.signed_in(parley_server, agent, path=f"/inbox/c/{open_one}")
    thread = page.locator("#thread")
    await expect(thread.locator(".msg")).to_have_count(2)
    await expect(thread.locator(f"#m{reply} .tick-sent")).to_have_count(1)
    other_row = page.locator(f'#rows .row[data-conversation-id="{other}"]')
    await expect(other_row.locator(".badge")).to_have_text("1")

    # The customer writes in the open conversation: it appears, and the agent has read it.
    arrived = await add_message(db, open_one, "are you still there?")
    await announce(db, agent.tenant_id, "message.received", open_one, arrived)
    await expect(thread.locator(f"#m{arrived}")).to_contain_text("are you still there?")
    await eventually(lambda: read_mark_is(db, open_one, arrived))

    # Another conversation gets a message: its row moves up with the preview and an unread count.
    elsewhere = await add_message(db, other, "one more thing")
    await announce(db, agent.tenant_id, "message.received", other, elsewhere)
    await expect(other_row.locator(".preview")).to_have_text("one more thing")
    await expect(other_row.locator(".badge")).to_have_text("2")
    await expect(page.locator("#rows .row").first).to_have_attribute("data-conversation-id", str(other))

    # The provider says the reply was delivered: the tick changes.
    async with db.transaction() as session:
        (await session.get_one(Message, reply)).status = "delivered"
    await announce(db, agent.tenant_id, "message.updated", open_one, reply, status="delivered")
    await expect(thread.locator(f"#m{reply} .tick-delivered")).to_have_count(1)

    # A supervisor resolves it elsewhere: the header follows.
    async with db.transaction() as session:
        (await session.get_one(Conversation, open_one)).status = ConversationStatus.RESOLVED
        await emit(
            session,
            agent.tenant_id,
            (
                "conversation.updated",
                {
                    "conversation_id": open_one,
                    "inbox_id": inbox,
                    "contact_id": 0,
                    "changes": {"status": {"old": "open", "new": "resolved"}},
                },
            ),
        )
    await expect(page.locator("#thread-head .status")).to_contain_text("resolved")
    await expect(page.get_by_role("button", name="Reopen")).to_be_visible()

    # Typing indicators from the live socket (an ephemeral event) show under the thread.
    await page.evaluate(
        """id => document.dispatchEvent(new CustomEvent("parley:event", {detail: {
        topic: "conversation.typing", id: null,
        payload: {conversation_id: id, typing: true, by: {type: "contact", id: 1}}}}))""",
        open_one,
    )
    await expect(page.locator("#typing")).to_have_text("The customer is typing…")


async def announce(
    db: Database, tenant_id: int, topic: str, conversation_id: int, message_id: int, **extra: object
) -> None:
    """The outbox event the pipeline would write; `parley serve` passes it on to the live sockets."""
    async with db.transaction() as session:
        await emit(
            session,
            tenant_id,
            (topic, {"conversation_id": conversation_id, "message_id": message_id, **extra}),
        )


async def read_mark_is(db: Database, conversation_id: int, message_id: int) -> bool:
    return await read_mark(db, conversation_id) == message_id


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    host = Smarthost(free_port())
    host.start()
    yield host
    host.stop()


async def test_merge_mark_unread_and_transcript_from_the_actions_bar(
    db: Database, database_url: str, tmp_path: Path, smarthost: Smarthost, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    sms = await make_inbox(db, agent.tenant_id, channel="twilio_sms", name="SMS line")
    chat = await make_inbox(db, agent.tenant_id, channel="webchat", name="Website")
    contact = await make_contact(db, agent.tenant_id, name="Rita Moreno", email="rita@example.net")
    source = await make_conversation(db, agent.tenant_id, sms, contact, assignee_id=agent.user_id)
    await add_message(db, source, "texted about <the invoice>", ago=5)
    target = await make_conversation(db, agent.tenant_id, chat, contact, assignee_id=agent.user_id)
    await add_message(db, target, "and asked on the website", ago=3)
    server = ParleyServer(
        database_url,
        tmp_path,
        env={"PARLEY_SMTP_URL": f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{smarthost.port}"},
    )
    await server.start()
    try:
        page = await browsing.signed_in(server, agent, path=f"/inbox/c/{source}")
        thread = page.locator("#thread")
        await expect(thread).to_contain_text("texted about <the invoice>")

        # Merge into the other conversation of the same contact: the thread becomes the target's.
        await page.get_by_text("More", exact=True).click()
        page.once("dialog", lambda dialog: dialog.accept())
        await page.get_by_label("Merge into another conversation of Rita Moreno").select_option(str(target))
        await page.get_by_role("button", name="Merge").click()
        await expect(page).to_have_url(re.compile(f"/inbox/c/{target}$"))
        await expect(thread.locator(".msg")).to_have_count(2)
        await expect(thread).to_contain_text("Merged from conversation")
        await expect(page.locator(f'#rows .row[data-conversation-id="{source}"]')).to_have_count(0)

        # Mark unread: the row shows its unread count again (and opening it is what reads it).
        await page.get_by_text("More", exact=True).click()
        async with page.expect_response(re.compile(f"/inbox/c/{target}/unread$")):
            await page.get_by_role("button", name="Mark unread").click()
        row = page.locator(f'#rows .row[data-conversation-id="{target}"]')
        await expect(row.locator(".badge")).to_have_text("1")
        # The action answers with the re-rendered thread, its menus closed: wait for that swap, or
        # it could close the menu opened next (the list's badge can come first, by the live socket).
        await expect(page.locator("#thread details.menu[open]")).to_have_count(0)

        # The transcript goes by email through the composer's API; customer text stays text.
        await page.get_by_text("More", exact=True).click()
        await expect(page.get_by_label("Send the transcript to")).to_have_value("rita@example.net")
        await page.get_by_label("Send the transcript to").fill("boss@acme.example.com")
        await page.get_by_role("button", name="Send transcript").click()
        await expect(page.locator("#action-status")).to_contain_text(
            "Transcript sent to boss@acme.example.com."
        )
        assert len(smarthost.received) == 1
        mail = smarthost.received[0].message
        assert mail["To"] == "boss@acme.example.com"
        html = mail.get_body(("html",))
        assert html is not None and "&lt;the invoice&gt;" in html.get_content()

        # A refusal is shown, and nothing is sent.
        await page.get_by_text("More", exact=True).click()
        await page.get_by_label("Send the transcript to").evaluate("e => e.removeAttribute('type')")
        await page.get_by_label("Send the transcript to").fill("not-an-address")
        await page.get_by_role("button", name="Send transcript").click()
        await expect(page.locator("#action-status [role=alert]")).to_contain_text(
            "The transcript was not sent"
        )
        assert len(smarthost.received) == 1
    finally:
        await server.stop()
