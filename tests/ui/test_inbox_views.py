"""The inbox pages through the HTTP client, on both databases: what each pane shows, who may see it,
what the actions change in the database, and that customer text stays text."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.ui import inbox_views
from inbox.models import Conversation, ConversationRead, ConversationStatus, Label, Message
from parley.db import Database
from parley.models import OutboxEvent, Role, User
from parley.sessions import SESSION_COOKIE, start_session
from parley.settings import Settings
from routing.models import AgentProfile, ConversationRouting, Team
from tests.conftest import make_tenant
from tests.ui.inbox_seed import add_message, make_contact, make_conversation, make_inbox

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(1)>"


class Agent:
    """A signed-in browser: the session cookie, and the CSRF token its pages carry."""

    def __init__(self, client: TestClient[Any, Any], cookie: str, user_id: int, tenant_id: int) -> None:
        self.client = client
        self.cookie = cookie
        self.user_id = user_id
        self.tenant_id = tenant_id
        self.csrf = ""

    @property
    def cookies(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}"}

    async def get(self, path: str, *, target: str | None = None) -> tuple[int, str]:
        headers = dict(self.cookies)
        if target is not None:
            headers |= {"HX-Request": "true", "HX-Target": target}
        async with self.client.get(path, headers=headers, allow_redirects=False) as response:
            text = await response.text()
            found = re.search(r'<meta name="csrf-token" content="([^"]+)">', text)
            if found:
                self.csrf = found.group(1)
            return response.status, text

    async def post(self, path: str, data: dict[str, Any] | list[tuple[str, str]]) -> tuple[int, str]:
        if not self.csrf:
            await self.get("/inbox")
        headers = self.cookies | {"HX-Request": "true", "HX-Target": "thread", "X-CSRF-Token": self.csrf}
        async with self.client.post(path, data=data, headers=headers, allow_redirects=False) as response:
            return response.status, await response.text()


async def sign_in(client: TestClient[Any, Any], db: Database, user_id: int) -> Agent:
    async with db.transaction() as session:
        user = await session.get_one(User, user_id)
        token = await start_session(session, user)
        return Agent(client, token, user.id, user.tenant_id)


async def make_user(db: Database, tenant_id: int, email: str, *, role: Role, name: str | None = None) -> int:
    async with db.transaction() as session:
        user = User(tenant_id=tenant_id, email=email, password_hash="x", role=role, name=name)
        session.add(user)
        await session.flush()
        return user.id


@pytest.fixture
async def client(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def agent(client: TestClient[Any, Any], db: Database) -> Agent:
    tenant = await make_tenant(db, "acme", role=Role.AGENT)
    return await sign_in(client, db, tenant.user_id)


async def events(db: Database, topic: str) -> list[dict[str, Any]]:
    async with db.sessionmaker() as session:
        rows = await session.execute(
            select(OutboxEvent).where(OutboxEvent.topic == topic).order_by(OutboxEvent.id)
        )
        return [row.payload for row in rows.scalars()]


async def conversation_row(db: Database, conversation_id: int) -> Conversation:
    async with db.sessionmaker() as session:
        return await session.get_one(Conversation, conversation_id)


async def test_the_list_shows_each_conversation_with_its_contact_preview_and_unread_count(
    db: Database, agent: Agent
) -> None:
    inbox = await make_inbox(db, agent.tenant_id, channel="twilio_whatsapp", name="WhatsApp line")
    mine = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id, name="Zoë")
    )
    await add_message(db, mine, "first", ago=5)
    await add_message(db, mine, "Where is my parcel?", ago=1)
    waiting = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id, name="Bob")
    )
    await add_message(db, waiting, "hello?", ago=2)
    async with db.transaction() as session:
        (await session.get_one(Conversation, mine)).assignee_id = agent.user_id

    status, html = await agent.get("/inbox")
    assert status == 200
    rows = re.findall(r'<li class="row[^"]*" data-conversation-id="(\d+)"', html)
    assert rows == [str(mine)]  # the default view is Mine
    assert "Zoë" in html and "Where is my parcel?" in html
    assert 'aria-label="2 unread"' in html
    assert 'aria-label="WhatsApp"' in html

    status, html = await agent.get("/inbox?view=unassigned")
    rows = re.findall(r'<li class="row[^"]*" data-conversation-id="(\d+)"', html)
    assert rows == [str(waiting)]
    # The tabs count every view: Mine 1, Unassigned 1, All 2.
    counts = re.findall(r'<span class="count" title="(\d+) conversations">', html)
    assert counts == ["1", "1", "2"]

    # htmx asks for the list alone when a tab or filter changes.
    status, fragment = await agent.get("/inbox?view=all&sort=waiting", target="list")
    assert status == 200 and "<html" not in fragment
    rows = re.findall(r'data-conversation-id="(\d+)"', fragment)
    assert rows == [str(mine), str(waiting)]  # Zoë has waited 5 minutes for an answer, Bob 2
    assert fragment.count('<span class="waiting">waiting since ') == 2


async def test_filters_narrow_the_list(db: Database, agent: Agent) -> None:
    sms = await make_inbox(db, agent.tenant_id, channel="twilio_sms", name="SMS")
    mail = await make_inbox(db, agent.tenant_id, channel="email", name="Mail")
    a = await make_conversation(db, agent.tenant_id, sms, await make_contact(db, agent.tenant_id))
    b = await make_conversation(db, agent.tenant_id, mail, await make_contact(db, agent.tenant_id))
    resolved = await make_conversation(
        db, agent.tenant_id, sms, await make_contact(db, agent.tenant_id), status=ConversationStatus.RESOLVED
    )

    def ids(html: str) -> list[int]:
        return sorted(int(i) for i in re.findall(r'data-conversation-id="(\d+)"', html))

    assert ids((await agent.get("/inbox?view=all", target="list"))[1]) == [a, b]
    assert ids((await agent.get("/inbox?view=all&channel=email", target="list"))[1]) == [b]
    assert ids((await agent.get(f"/inbox?view=all&inbox_id={sms}", target="list"))[1]) == [a]
    assert ids((await agent.get("/inbox?view=all&status=resolved", target="list"))[1]) == [resolved]
    assert ids((await agent.get("/inbox?view=all&status=", target="list"))[1]) == [a, b, resolved]


async def test_the_thread_shows_customer_text_as_text(db: Database, agent: Agent) -> None:
    inbox = await make_inbox(db, agent.tenant_id)
    conversation = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id, name=HOSTILE)
    )
    await add_message(db, conversation, HOSTILE + "\nsecond line https://example.com/a?b=1&c=<x>")

    for path in ("/inbox?view=all", f"/inbox/c/{conversation}"):
        status, html = await agent.get(path)
        assert status == 200
        assert "<script>alert(1)</script>" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    # Links are made clickable after escaping; what follows them stays text.
    assert '<a href="https://example.com/a?b=1&amp;c=" rel="noopener noreferrer nofollow"' in html
    assert "&lt;x&gt;" in html
    assert "second line" in html


async def test_the_thread_shows_senders_ticks_failures_notes_attachments_and_intents(
    db: Database, agent: Agent
) -> None:
    async with db.transaction() as session:
        (await session.get_one(User, agent.user_id)).name = "Ada Agent"
        session.add(AgentProfile(user_id=agent.user_id, tenant_id=agent.tenant_id, time_zone="Asia/Tokyo"))
    inbox = await make_inbox(db, agent.tenant_id)
    conversation = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id)
    )
    at = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    await add_message(
        db,
        conversation,
        "a photo",
        attachments=[
            {
                "url": "https://api.twilio.example/m/1",
                "content_type": "image/jpeg",
                "media_key": f"{agent.tenant_id}/abc",
            },
            {
                "url": "https://api.twilio.example/m/2",
                "content_type": "application/pdf",
                "filename": "invoice.pdf",
            },
        ],
    )
    sent = await add_message(
        db, conversation, "on its way", inbound=False, sender_id=agent.user_id, status="delivered"
    )
    await add_message(
        db,
        conversation,
        "never arrived",
        inbound=False,
        sender_id=agent.user_id,
        status="failed",
        error_code="63016",
        error_message="Outside the allowed window",
    )
    await add_message(
        db,
        conversation,
        "Your order ships tomorrow.",
        inbound=False,
        sender_type="bot",
        extra={"nlu": {"intent": {"name": "order_status", "confidence": 0.87}}},
    )
    note = await add_message(
        db, conversation, "internal: <check> the refund", inbound=False, sender_id=agent.user_id, private=True
    )
    timed = await add_message(db, conversation, "timed")
    async with db.transaction() as session:
        (await session.get_one(Message, timed)).created_at = at

    status, html = await agent.get(f"/inbox/c/{conversation}")
    assert status == 200
    assert f'id="m{sent}"' in html
    assert "Ada Agent" in html and ">Agent<" in html and ">Customer<" in html and ">Bot<" in html
    assert 'aria-label="Delivered"' in html
    note_html = (
        html.split(f'id="m{note}"')[0].rsplit("<li", 1)[1] + html.split(f'id="m{note}"')[1].split("</li>")[0]
    )
    assert "msg-note" in note_html and "Private note" in note_html and "&lt;check&gt;" in note_html
    assert "tick" not in note_html  # a note is never sent, so it has no delivery ticks
    assert "Not delivered (63016): Outside the allowed window" in html
    assert "Intent: <strong>order_status</strong> (87%)" in html
    assert f'<img src="/media/{agent.tenant_id}/abc"' in html  # copied into the store: shown inline
    assert (
        "https://api.twilio.example/m/1"
        not in html.split(f"/media/{agent.tenant_id}/abc")[1].split("</li>")[0]
    )
    assert "invoice.pdf" in html and "(not copied yet)" in html  # the provider's file is a plain link
    # Times are in the agent's zone: 23:30 UTC is 08:30 the next day in Tokyo.
    assert "2026-03-02 08:30" in html
    assert 'datetime="2026-03-02T08:30:00+09:00"' in html


async def test_a_call_shows_a_recording_player_and_the_voicemail_transcript(
    db: Database, agent: Agent
) -> None:
    inbox = await make_inbox(db, agent.tenant_id, channel="twilio_voice", name="Phone line")
    conversation = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id)
    )
    await add_message(
        db,
        conversation,
        "",
        extra={"call": {"call_id": "CA1", "status": "completed", "direction": "inbound", "duration": 64}},
    )
    await add_message(
        db,
        conversation,
        "",
        extra={"recording": {"recording_id": "RE1", "url": "https://api.twilio.example/RE1", "duration": 42}},
        attachments=[
            {
                "url": "x",
                "content_type": "audio/mpeg",
                "media_key": f"{agent.tenant_id}/rec",
                "filename": "RE1.mp3",
            }
        ],
    )
    await add_message(
        db,
        conversation,
        "Please call me back about <the invoice>",
        extra={
            "voicemail": {
                "transcription_id": "TR1",
                "recording_id": "RE1",
                "status": "completed",
                "transcript": "x",
            }
        },
    )
    _, html = await agent.get(f"/inbox/c/{conversation}")
    assert "Inbound call" in html and "completed · 64 s" in html
    assert f'<audio controls preload="none" src="/media/{agent.tenant_id}/rec"' in html
    assert "Voicemail recording · 42 s" in html
    assert "Voicemail transcript" in html
    assert "Please call me back about &lt;the invoice&gt;" in html


async def test_email_html_is_served_to_a_sandboxed_frame_under_its_own_policy(
    db: Database, agent: Agent, client: TestClient[Any, Any]
) -> None:
    inbox = await make_inbox(db, agent.tenant_id, channel="email", name="Mail")
    conversation = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id)
    )
    html_body = '<p>Hello <b>there</b></p><img src="https://tracker.example/p.gif"><script>alert(1)</script>'
    message = await add_message(
        db, conversation, "Hello there", extra={"subject": "Invoice <42>", "html": html_body}
    )
    _, page = await agent.get(f"/inbox/c/{conversation}")
    assert '<iframe class="email-frame" sandbox="allow-popups allow-popups-to-escape-sandbox"' in page
    assert f'src="/ui/messages/{message}/email"' in page
    assert "Invoice &lt;42&gt;" in page
    assert "tracker.example" not in page  # the HTML never enters the page itself

    async with client.get(f"/ui/messages/{message}/email", headers=agent.cookies) as response:
        assert response.status == 200
        body = await response.text()
        policy = response.headers["Content-Security-Policy"]
        assert "img-src data:;" in policy and "default-src 'none'" in policy and "https:" not in policy
        assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "<b>there</b>" in body and "<script" not in body
    async with client.get(f"/ui/messages/{message}/email?images=1", headers=agent.cookies) as response:
        assert "img-src data: https: http:" in response.headers["Content-Security-Policy"]

    # Another tenant's agent gets nothing, as if the message did not exist.
    other = await make_tenant(db, "globex", role=Role.AGENT)
    stranger = await sign_in(client, db, other.user_id)
    async with client.get(f"/ui/messages/{message}/email", headers=stranger.cookies) as response:
        assert response.status == 404
        assert "Hello" not in await response.text()


async def test_another_tenants_conversation_is_not_found(
    db: Database, agent: Agent, client: TestClient[Any, Any]
) -> None:
    other = await make_tenant(db, "globex", role=Role.ADMIN)
    inbox = await make_inbox(db, other.tenant_id)
    theirs = await make_conversation(
        db, other.tenant_id, inbox, await make_contact(db, other.tenant_id, name="Secret Sam")
    )
    await add_message(db, theirs, "top secret")
    status, html = await agent.get(f"/inbox/c/{theirs}")
    assert status == 404
    assert "Secret Sam" not in html and "top secret" not in html
    assert (await agent.get(f"/inbox/c/{theirs}", target="thread"))[0] == 404
    assert (await agent.post(f"/inbox/c/{theirs}/status", {"status": "resolved"}))[0] == 404
    assert (await agent.post(f"/inbox/c/{theirs}/read", {}))[0] == 404
    assert (await conversation_row(db, theirs)).status == ConversationStatus.OPEN


async def test_a_marketer_cannot_open_the_inbox(db: Database, client: TestClient[Any, Any]) -> None:
    marketer = await make_tenant(db, "acme", role=Role.MARKETER)
    browser = await sign_in(client, db, marketer.user_id)
    status, html = await browser.get("/inbox")
    assert status == 403
    assert "Not allowed" in html


async def test_signed_out_the_inbox_sends_to_sign_in(client: TestClient[Any, Any]) -> None:
    async with client.get("/inbox/c/1", allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/login?next=/inbox/c/1"


async def test_actions_change_the_conversation_and_announce_it(db: Database, agent: Agent) -> None:
    inbox = await make_inbox(db, agent.tenant_id)
    contact = await make_contact(db, agent.tenant_id)
    conversation = await make_conversation(db, agent.tenant_id, inbox, contact)
    await add_message(db, conversation, "hi")

    status, html = await agent.post(f"/inbox/c/{conversation}/assign", {"take": "1"})
    assert status == 200 and "Assigned to you." in html
    assert (await conversation_row(db, conversation)).assignee_id == agent.user_id

    status, html = await agent.post(f"/inbox/c/{conversation}/priority", {"priority": "urgent"})
    assert status == 200 and (await conversation_row(db, conversation)).priority == "urgent"
    status, html = await agent.post(f"/inbox/c/{conversation}/priority", {"priority": "whenever"})
    assert (
        status == 422
        and "priority" in html
        and (await conversation_row(db, conversation)).priority == "urgent"
    )

    status, html = await agent.post(f"/inbox/c/{conversation}/status", {"status": "resolved"})
    assert status == 200
    row = await conversation_row(db, conversation)
    assert row.status == ConversationStatus.RESOLVED and row.resolved_at is not None
    changes = [e["changes"] for e in await events(db, "conversation.updated")]
    assert {"assignee_id": {"old": None, "new": agent.user_id}} in changes
    assert any(c.get("status", {}).get("new") == "resolved" for c in changes)

    # Reopening would make two open conversations for the contact in this inbox: refused, explained.
    newer = await make_conversation(db, agent.tenant_id, inbox, contact)
    status, html = await agent.post(f"/inbox/c/{conversation}/status", {"status": "open"})
    assert status == 409
    assert 'role="alert"' in html and str(newer) in html
    assert (await conversation_row(db, conversation)).status == ConversationStatus.RESOLVED


async def test_snooze_takes_the_time_in_the_agents_zone(db: Database, agent: Agent) -> None:
    async with db.transaction() as session:
        session.add(
            AgentProfile(user_id=agent.user_id, tenant_id=agent.tenant_id, time_zone="America/New_York")
        )
    inbox = await make_inbox(db, agent.tenant_id)
    conversation = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id)
    )
    later = datetime.now(UTC) + timedelta(days=2)
    local = later.astimezone(ZoneInfo("America/New_York")).replace(second=0, microsecond=0)
    status, html = await agent.post(
        f"/inbox/c/{conversation}/snooze", {"until": local.strftime("%Y-%m-%dT%H:%M")}
    )
    assert status == 200, html
    row = await conversation_row(db, conversation)
    assert row.status == ConversationStatus.SNOOZED
    assert row.snoozed_until is not None and row.snoozed_until == local.astimezone(UTC)
    assert f"until {local:%Y-%m-%d %H:%M}" in html

    status, html = await agent.post(f"/inbox/c/{conversation}/status", {"status": "open"})
    status, html = await agent.post(f"/inbox/c/{conversation}/snooze", {})
    row = await conversation_row(db, conversation)
    assert row.status == ConversationStatus.SNOOZED and row.snoozed_until is None
    assert "until the customer replies" in html

    status, html = await agent.post(f"/inbox/c/{conversation}/snooze", {"until": "2001-01-01T10:00"})
    assert status == 422 and 'role="alert"' in html


async def test_labels_merge_and_read_marks(db: Database, client: TestClient[Any, Any]) -> None:
    admin = await make_tenant(db, "acme", role=Role.ADMIN)
    agent = await sign_in(client, db, admin.user_id)
    inbox = await make_inbox(db, admin.tenant_id)
    other_inbox = await make_inbox(db, admin.tenant_id, name="Other")
    contact = await make_contact(db, admin.tenant_id)
    source = await make_conversation(db, admin.tenant_id, inbox, contact)
    target = await make_conversation(db, admin.tenant_id, other_inbox, contact)
    first = await add_message(db, source, "from the source")
    await add_message(db, target, "in the target")

    status, html = await agent.post(f"/inbox/c/{source}/labels", [("new_label", "VIP")])
    assert status == 200 and '<span class="label">VIP</span>' in html
    status, _ = await agent.post(f"/inbox/c/{source}/labels", [("labels", "VIP"), ("new_label", "billing")])
    async with db.sessionmaker() as session:
        names = sorted((await session.execute(select(Label.name))).scalars())
    assert names == ["VIP", "billing"]
    _, listed = await agent.get("/inbox?view=all&label=vip", target="list")
    assert re.findall(r'data-conversation-id="(\d+)"', listed) == [str(source)]

    # Viewing marks read; "mark unread" brings the newest customer message back.
    assert (await agent.post(f"/inbox/c/{source}/read", {}))[0] == 204
    async with db.sessionmaker() as session:
        mark = (
            await session.execute(
                select(ConversationRead.last_read_message_id).where(
                    ConversationRead.conversation_id == source
                )
            )
        ).scalar_one()
    assert mark == first
    await agent.post(f"/inbox/c/{source}/unread", {})
    _, listed = await agent.get("/inbox?view=all", target="list")
    assert 'aria-label="1 unread"' in listed

    status, html = await agent.post(f"/inbox/c/{source}/merge", {"into": str(target)})
    assert status == 200
    assert "from the source" in html and "in the target" in html
    assert (await conversation_row(db, source)).merged_into_id == target


async def test_partial_panes_for_live_refreshes(db: Database, agent: Agent) -> None:
    inbox = await make_inbox(db, agent.tenant_id)
    conversation = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id)
    )
    await add_message(db, conversation, "first")
    status, messages = await agent.get(f"/inbox/c/{conversation}", target="messages")
    assert status == 200 and "first" in messages and "thread-head" not in messages and "<html" not in messages
    status, head = await agent.get(f"/inbox/c/{conversation}", target="thread-head")
    assert status == 200 and "Resolve" in head and "first" not in head


async def test_a_long_thread_shows_its_newest_messages_and_reaches_back_to_a_search_hit(
    db: Database, agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_views, "THREAD_WINDOW", 5)
    inbox = await make_inbox(db, agent.tenant_id)
    conversation = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id)
    )
    ids = [await add_message(db, conversation, f"message number {n}", ago=20 - n) for n in range(10)]

    def shown(html: str) -> list[int]:
        return [int(i) for i in re.findall(r'data-message-id="(\d+)"', html)]

    _, html = await agent.get(f"/inbox/c/{conversation}")
    assert shown(html) == ids[5:]
    assert "5 earlier messages not shown" in html
    _, html = await agent.get(f"/inbox/c/{conversation}?at={ids[2]}")
    assert shown(html) == ids[2:]
    assert "2 earlier messages not shown" in html


async def test_teams_filter_the_list_and_take_conversations_into_their_queue(
    db: Database, agent: Agent
) -> None:
    async with db.transaction() as session:
        team = Team(tenant_id=agent.tenant_id, name="Billing")
        session.add(team)
        await session.flush()
        team_id = team.id
    inbox = await make_inbox(db, agent.tenant_id)
    handed = await make_conversation(
        db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id), assignee_id=agent.user_id
    )
    kept = await make_conversation(db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id))
    status, html = await agent.post(f"/inbox/c/{handed}/assign", {"assignee": f"team:{team_id}"})
    assert status == 200, html
    assert "Handed to Billing." in html
    async with db.sessionmaker() as session:
        routing = await session.get_one(ConversationRouting, handed)
    assert routing.team_id == team_id
    assert (await conversation_row(db, handed)).assignee_id is None
    _, listed = await agent.get(f"/inbox?view=all&team_id={team_id}", target="list")
    assert re.findall(r'data-conversation-id="(\d+)"', listed) == [str(handed)]
    assert str(kept) not in re.findall(r'data-conversation-id="(\d+)"', listed)

    # Another tenant's team is not a choice.
    other = await make_tenant(db, "globex")
    async with db.transaction() as session:
        theirs = Team(tenant_id=other.tenant_id, name="Theirs")
        session.add(theirs)
        await session.flush()
        their_team = theirs.id
    status, html = await agent.post(f"/inbox/c/{kept}/assign", {"assignee": f"team:{their_team}"})
    assert status == 422 and "No such team." in html
