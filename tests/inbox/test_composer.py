"""The composer's services on both databases: notes, mentions, canned templates in the sandbox,
reply windows at their edges, transcripts; and that a note never reaches the customer's side."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, cast

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from jinja2.exceptions import SecurityError
from sqlalchemy import select

from channels.base import Button
from crm_core.models import ChannelIdentity, Contact
from gateway.app import create_app
from gateway.keys import NOTIFIER
from gateway.webchat import Visitor, history
from inbox import canned
from inbox.lookup import InvalidInput, NotFoundError
from inbox.models import Conversation, Inbox, Message, MessageStatus, Notification
from inbox.notes import add_note, mentioned_handles, resolve_mentions
from inbox.reply_options import reply_options
from inbox.runtime import InboxRuntime
from inbox.service import queue_outbound
from inbox.transcript import build_transcript
from parley.crypto import SecretBox
from parley.db import Database, utcnow
from parley.models import OutboxEvent
from parley.settings import Settings
from tests.conftest import SECRET_KEY, eventually, make_tenant, make_twilio_inbox, message_row
from tests.fakes.twilio_api import FakeTwilioApi
from tests.test_sms_end_to_end import Gateway, inbound_sms

# --- mentions -----------------------------------------------------------------------------------


def test_handles_are_email_local_parts_not_addresses_in_prose() -> None:
    body = "@Ann, ask @bob.smith+eu. Not me@example.com nor x@y; (@Carol) @ @-x email@@dave"
    assert mentioned_handles(body) == {"ann", "bob.smith+eu", "carol"}


async def _conversation(db: Database, tenant_id: int, channel: str = "twilio_sms", **settings: Any) -> int:
    async with db.transaction() as session:
        inbox = Inbox(
            tenant_id=tenant_id,
            name="Support",
            channel=channel,
            settings=settings,
            secrets_encrypted=SecretBox(SECRET_KEY).seal({}),
        )
        contact = Contact(tenant_id=tenant_id, name="Ann Customer", phone="+14155550100", attributes={})
        session.add_all([inbox, contact])
        await session.flush()
        identity = ChannelIdentity(
            tenant_id=tenant_id, contact_id=contact.id, kind="phone", address="+14155550100"
        )
        session.add(identity)
        await session.flush()
        conversation = Conversation(
            tenant_id=tenant_id, inbox_id=inbox.id, contact_id=contact.id, identity_id=identity.id
        )
        session.add(conversation)
        await session.flush()
        return conversation.id


async def test_mentions_resolve_within_the_tenant_and_unknown_ids_are_refused(db: Database) -> None:
    admin = await make_tenant(db, "acme")
    ann = await make_tenant(db, "acme", email="ann@acme.example.com")
    await make_tenant(db, "globex", email="bob@globex.example.com")
    outsider = await make_tenant(db, "globex", email="eve@globex.example.com")
    async with db.sessionmaker() as session:
        assert await resolve_mentions(session, admin.tenant_id, "hi @ANN and @bob") == [ann.user_id]
        assert await resolve_mentions(session, admin.tenant_id, "no mentions here") == []
        with pytest.raises(InvalidInput) as refused:
            await resolve_mentions(session, admin.tenant_id, "hi", [outsider.user_id, 10**12])
    assert refused.value.code == "unknown_users"


async def test_a_note_writes_its_events_and_notifications_in_one_transaction_and_nothing_outbound(
    db: Database,
) -> None:
    admin = await make_tenant(db, "acme")
    ann = await make_tenant(db, "acme", email="ann@acme.example.com")
    conversation_id = await _conversation(db, admin.tenant_id)
    async with db.transaction() as session:
        added = await add_note(
            session,
            tenant_id=admin.tenant_id,
            user_id=admin.user_id,
            conversation_id=conversation_id,
            body="@ann please call back, @admin noted",
        )
    assert added.notified_user_ids == [ann.user_id]
    async with db.sessionmaker() as session:
        topics = list((await session.execute(select(OutboxEvent.topic).order_by(OutboxEvent.id))).scalars())
        [notification] = (await session.execute(select(Notification))).scalars()
    assert topics == ["note.created", "notification.created"]
    assert (notification.user_id, notification.kind, notification.actor_id, notification.read_at) == (
        ann.user_id,
        "mention",
        admin.user_id,
        None,
    )

    # A failing note (an unknown conversation, another tenant's) leaves nothing behind.
    other = await make_tenant(db, "globex")
    with pytest.raises(NotFoundError):
        async with db.transaction() as session:
            await add_note(
                session,
                tenant_id=other.tenant_id,
                user_id=other.user_id,
                conversation_id=conversation_id,
                body="x",
            )
    async with db.sessionmaker() as session:
        assert len((await session.execute(select(Message))).all()) == 1


# --- a note between an offer and the customer's answer ------------------------------------------


@pytest_asyncio.fixture
async def gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_twilio: FakeTwilioApi,
) -> AsyncIterator[Gateway]:
    tenant = await make_tenant(db, "acme")
    inbox_id = await make_twilio_inbox(
        db, tenant.tenant_id, fake_twilio.base_url, fake_twilio.account_sid, fake_twilio.auth_token
    )
    client = await aiohttp_client(
        create_app(settings), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    yield Gateway(client, db, tenant, inbox_id, fake_twilio, f"http://127.0.0.1:{public_port}")


async def test_a_note_is_never_sent_and_does_not_hide_the_options_the_customer_answers(
    gateway: Gateway,
) -> None:
    assert (await gateway.post(inbound_sms(sid="SM" + "1" * 32)))[0] == 200
    async with gateway.db.transaction() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        offer = await queue_outbound(
            session,
            conversation,
            body="How can we help?",
            sender_type="bot",
            sender_id=None,
            buttons=[Button("track", "Track my order"), Button("human", "Talk to a person")],
        )
        note = await add_note(
            session,
            tenant_id=conversation.tenant_id,
            user_id=gateway.tenant.user_id,
            conversation_id=conversation.id,
            body="They usually want a person",
        )
    gateway.client.app[NOTIFIER].notify()

    async def sent() -> bool:
        return (await message_row(gateway.db, offer.id)).status == "sent"

    await eventually(sent)
    assert (await gateway.post(inbound_sms(sid="SM" + "2" * 32, body="2")))[0] == 200
    async with gateway.db.sessionmaker() as session:
        answer = (await session.execute(select(Message).order_by(Message.id.desc()).limit(1))).scalar_one()
    assert answer.content_attributes["button_reply"] == {"id": "human", "title": "Talk to a person"}
    # Only the offer went to Twilio; the note is where it was written.
    assert [r["Body"] for r in gateway.fake.requests] == [
        ["How can we help?\n\n1. Track my order\n2. Talk to a person\n\nReply with a number."]
    ]
    stored = await message_row(gateway.db, note.message.id)
    assert (stored.status, stored.provider_message_id, stored.attempts) == (MessageStatus.RECEIVED, None, 0)


async def test_the_web_chat_visitor_never_sees_a_note(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    conversation_id = await _conversation(db, tenant.tenant_id, channel="webchat")
    address = "1:v:visitor"
    async with db.transaction() as session:
        conversation = (
            await session.execute(select(Conversation).where(Conversation.id == conversation_id))
        ).scalar_one()
        conversation.thread_key = address
        await queue_outbound(session, conversation, body="Hello visitor", sender_type="user", sender_id=None)
        await add_note(
            session,
            tenant_id=tenant.tenant_id,
            user_id=tenant.user_id,
            conversation_id=conversation_id,
            body="Secret: this visitor is a competitor",
        )
        inbox_id = conversation.inbox_id
    runtime = InboxRuntime(inbox_id, tenant.tenant_id, "webchat", cast(Any, None), {})
    frames = await history(db, Visitor(runtime, cast(Any, None), address), 0)
    assert [frame["text"] for frame in frames] == ["Hello visitor"]


# --- canned templates ---------------------------------------------------------------------------


VARIABLES = {
    "contact": {"name": "Ann Lee", "first_name": "Ann", "last_name": "Lee"},
    "agent": {"first_name": "Sam"},
    "conversation": {"id": "7"},
}


def test_the_sandbox_itself_refuses_python_internals_even_unchecked() -> None:
    """Defence in depth: the environment under the checks answers no on its own."""
    env = canned._ENV
    for source in ("{{ contact.__class__ }}", "{{ contact['__init__'] }}", "{{ contact.name.upper }}"):
        with pytest.raises(SecurityError):
            env.from_string(source).render(contact={"name": "Ann"})
    assert env.from_string("[{{ contact.missing }}]").render(contact={}) == "[]"


def test_missing_values_are_empty_or_their_default_and_values_stay_plain_text() -> None:
    text = canned.render_template(
        "Hi {{ contact.first_name | default('there') }}{{ contact.email }}, "
        "{{ agent.name | default('the team') }} | {{ contact.name | upper }} | "
        "{{ contact.company | default('') | title }}",
        VARIABLES,
    )
    assert text == "Hi Ann, the team | ANN LEE | "
    hostile = {**VARIABLES, "contact": {"first_name": "{{ 7*7 }}<b>&amp;"}}
    assert canned.render_template("{{ contact.first_name }}", hostile) == "{{ 7*7 }}<b>&amp;"


def test_template_problems_name_their_line() -> None:
    with pytest.raises(canned.TemplateProblem) as problem:
        canned.check_template("Hello\n\n{% if contact.name %}unclosed")
    assert problem.value.line == 3 and problem.value.code == "invalid_template"
    with pytest.raises(canned.TemplateProblem) as problem:
        canned.check_template("ok\n{{ agent.password }}")
    assert problem.value.line == 2 and "agent has no field `password`" in problem.value.message
    with pytest.raises(canned.TemplateProblem):
        canned.check_template("x" * (canned.MAX_CONTENT_LENGTH + 1))


def test_a_rendering_longer_than_a_message_is_refused() -> None:
    long = {**VARIABLES, "contact": {"name": "x" * 200}}
    with pytest.raises(canned.TemplateProblem) as problem:
        canned.render_template("{{ contact.name }}" * 30, long)
    assert "longer than a message" in problem.value.message


def test_templates_are_compiled_once_per_distinct_text() -> None:
    source = "Cached {{ contact.first_name }} " + str(id(object()))
    before = canned._compiled.cache_info()
    for _ in range(5):
        assert canned.render_template(source, VARIABLES).startswith("Cached Ann")
    after = canned._compiled.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 4)


# --- reply windows ------------------------------------------------------------------------------


async def test_the_reply_window_is_open_up_to_the_second_it_closes(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    conversation_id = await _conversation(db, tenant.tenant_id, channel="whatsapp_cloud")
    wrote = utcnow() - timedelta(hours=1)
    async with db.transaction() as session:
        conversation = (
            await session.execute(select(Conversation).where(Conversation.id == conversation_id))
        ).scalar_one()
        conversation.last_inbound_at = wrote
    closes = wrote + timedelta(hours=24)
    other = await make_tenant(db, "globex")
    async with db.sessionmaker() as session:
        at_close = await reply_options(
            session, tenant_id=tenant.tenant_id, conversation_id=conversation_id, now=closes
        )
        after = await reply_options(
            session,
            tenant_id=tenant.tenant_id,
            conversation_id=conversation_id,
            now=closes + timedelta(seconds=1),
        )
        with pytest.raises(NotFoundError):
            await reply_options(session, tenant_id=other.tenant_id, conversation_id=conversation_id)
    assert at_close.can_reply and at_close.window is not None and at_close.window.closes_at == closes
    assert not after.can_reply and after.reason_code == "outside_reply_window"
    assert after.templates == [] and after.can_send_template  # the inbox lists none yet


# --- transcripts --------------------------------------------------------------------------------


async def test_a_transcript_leaves_out_notes_and_failures_and_escapes_html(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    conversation_id = await _conversation(db, tenant.tenant_id)
    async with db.transaction() as session:
        conversation = (
            await session.execute(select(Conversation).where(Conversation.id == conversation_id))
        ).scalar_one()
        await queue_outbound(
            session, conversation, body='<img src=x onerror="alert(1)">', sender_type="bot", sender_id=None
        )
        failed = await queue_outbound(session, conversation, body="lost", sender_type="bot", sender_id=None)
        failed.status = MessageStatus.FAILED
        await add_note(
            session,
            tenant_id=tenant.tenant_id,
            user_id=tenant.user_id,
            conversation_id=conversation_id,
            body="psst",
        )
    async with db.sessionmaker() as session:
        public = await build_transcript(session, tenant_id=tenant.tenant_id, conversation_id=conversation_id)
        internal = await build_transcript(
            session, tenant_id=tenant.tenant_id, conversation_id=conversation_id, include_notes=True
        )
    assert public.message_count == 1 and internal.message_count == 2
    assert '<img src=x onerror="alert(1)">' in public.text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in public.html and "<img" not in public.html
    assert "psst" not in public.text + public.html and "lost" not in public.text
    assert "Agent (internal note):\npsst" in internal.text
