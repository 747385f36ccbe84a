"""The composer's API on both databases: notes, mentions, notifications, canned responses, reply
options and transcripts (through a real SMTP smarthost)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from crm_core.models import Company, Contact
from gateway.app import create_app
from inbox.models import CannedResponse, Conversation, Inbox, Message, MessageStatus, Notification
from parley.crypto import SecretBox
from parley.db import Database, utcnow
from parley.models import Role, User
from parley.settings import Settings
from tests.conftest import SECRET_KEY, TenantAccess, eventually, free_port, make_tenant
from tests.fakes.twilio_api import FakeTwilioApi
from tests.gateway.test_api import Api, add_conversation
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, Smarthost

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

CONTENT_SID = "HX" + "0123456789abcdef" * 2


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    host = Smarthost(free_port())
    host.start()
    yield host
    host.stop()


@pytest_asyncio.fixture
async def api(
    aiohttp_client: ClientFactory,
    db: Database,
    settings: Settings,
    fake_twilio: FakeTwilioApi,
    smarthost: Smarthost,
) -> AsyncIterator[Api]:
    admin = await make_tenant(db, "acme")
    smtp_url = f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{smarthost.port}"
    client = await aiohttp_client(create_app(dataclasses.replace(settings, smtp_url=smtp_url)))
    yield Api(client, db, settings, fake_twilio, admin)


async def add_user(api: Api, email: str, *, role: Role = Role.AGENT, tenant: str = "acme") -> TenantAccess:
    return await make_tenant(api.db, tenant, role=role, email=email)


async def sms_conversation(api: Api, phone: str = "+14155550100") -> tuple[int, int]:
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, phone)
    return inbox_id, conversation_id


async def add_inbox(
    db: Database, tenant_id: int, channel: str, settings: dict[str, Any] | None = None
) -> int:
    """An inbox row as stored (reply options read the class and settings; nothing is sent)."""
    async with db.transaction() as session:
        inbox = Inbox(
            tenant_id=tenant_id,
            name=f"{channel} inbox",
            channel=channel,
            settings=settings or {},
            secrets_encrypted=SecretBox(SECRET_KEY).seal({}),
        )
        session.add(inbox)
        await session.flush()
        return inbox.id


# --- notes --------------------------------------------------------------------------------------


async def test_a_note_is_listed_as_private_and_never_reaches_the_provider(api: Api) -> None:
    inbox_id, conversation_id = await sms_conversation(api)

    status, note = await api.call(
        "POST", f"/conversations/{conversation_id}/notes", body={"body": "VIP: refund without asking"}
    )
    assert status == 201, note
    assert (note["private"], note["status"], note["sender_id"]) == (True, "received", api.admin.user_id)
    assert note["notified_user_ids"] == []
    assert await api.events("message.outbound") == []
    assert await api.events("note.created") == [
        {
            "message_id": note["id"],
            "conversation_id": conversation_id,
            "inbox_id": inbox_id,
            "author_id": api.admin.user_id,
            "private": True,
            "mentions": [],
        }
    ]

    # A reply after the note is sent; by the time it reaches the provider the note had its chance.
    status, reply = await api.call(
        "POST", f"/conversations/{conversation_id}/messages", body={"body": "Hello!"}
    )
    assert status == 201, reply
    await eventually(lambda: len(api.fake.messages) == 1)
    assert [m["body"] for m in api.fake.messages.values()] == ["Hello!"]
    assert (await api.events("message.outbound"))[0]["message_id"] == reply["id"]

    _, page = await api.call("GET", f"/conversations/{conversation_id}/messages")
    assert [(m["body"], m["private"]) for m in page["data"]] == [
        ("VIP: refund without asking", True),
        ("Hello!", False),
    ]
    async with api.db.sessionmaker() as session:
        stored = (await session.execute(select(Message).where(Message.id == note["id"]))).scalar_one()
    assert (stored.private, stored.status, stored.provider_message_id) == (True, MessageStatus.RECEIVED, None)


async def test_notes_are_validated_and_scoped_to_the_tenant(api: Api) -> None:
    _, conversation_id = await sms_conversation(api)
    other = await make_tenant(api.db, "globex")
    for body in ({"body": "   "}, {"body": ""}, {"body": "x" * 4097}, {"body": "hi", "extra": 1}):
        status, answer = await api.call("POST", f"/conversations/{conversation_id}/notes", body=body)
        assert (status, answer["error"]["code"]) == (422, "validation_error"), body
    status, answer = await api.call(
        "POST", f"/conversations/{conversation_id}/notes", who=other, body={"body": "hi"}
    )
    assert (status, answer["error"]["code"]) == (404, "not_found")
    marketer = await add_user(api, "mia@acme.example.com", role=Role.MARKETER)
    status, _ = await api.call(
        "POST", f"/conversations/{conversation_id}/notes", who=marketer, body={"body": "hi"}
    )
    assert status == 403
    assert await api.count(Message) == 0


# --- mentions and notifications -----------------------------------------------------------------


async def test_mentions_notify_users_of_the_tenant_by_handle_or_id_but_never_the_author(api: Api) -> None:
    _, conversation_id = await sms_conversation(api)
    ann = await add_user(api, "Ann.Lee@acme.example.com")
    bob = await add_user(api, "bob@acme.example.com")
    await add_user(api, "carol@globex.example.com", tenant="globex")  # same handle, other tenant
    other_tenant_user = await add_user(api, "dave@globex.example.com", tenant="globex")

    body = "@ANN.LEE, can you check? @carol too. Mail them at bob@example.com. @nobody @admin"
    status, note = await api.call(
        "POST", f"/conversations/{conversation_id}/notes", body={"body": body, "mentions": [bob.user_id]}
    )
    assert status == 201, note
    # @admin is the author: mentioned, not notified. carol is another tenant's; nobody is nobody.
    assert sorted(note["notified_user_ids"]) == sorted([ann.user_id, bob.user_id])
    assert note["content_attributes"]["mentions"] == sorted([ann.user_id, bob.user_id, api.admin.user_id])
    created = await api.events("notification.created")
    assert sorted(e["user_id"] for e in created) == sorted([ann.user_id, bob.user_id])
    assert {(e["kind"], e["conversation_id"], e["message_id"], e["actor_id"]) for e in created} == {
        ("mention", conversation_id, note["id"], api.admin.user_id)
    }

    # An id that is not a user of this tenant is refused and nothing is stored.
    before = await api.count(Message)
    status, answer = await api.call(
        "POST",
        f"/conversations/{conversation_id}/notes",
        body={"body": "hi", "mentions": [other_tenant_user.user_id]},
    )
    assert (status, answer["error"]["code"]) == (422, "unknown_users")
    assert await api.count(Message) == before
    assert await api.count(Notification) == 2


async def test_notifications_are_mine_unread_first_paginated_and_marked_read(api: Api) -> None:
    _, conversation_id = await sms_conversation(api)
    ann = await add_user(api, "ann@acme.example.com")
    bob = await add_user(api, "bob@acme.example.com")
    outsider = await make_tenant(api.db, "globex")
    note_ids = []
    for n in range(3):
        _, note = await api.call(
            "POST", f"/conversations/{conversation_id}/notes", body={"body": f"@ann #{n}"}
        )
        note_ids.append(note["id"])

    status, page = await api.call("GET", "/notifications", who=ann)
    assert status == 200
    assert page["unread_count"] == 3
    assert [n["message_id"] for n in page["data"]] == note_ids[::-1]
    middle = page["data"][1]["id"]

    # Only ann can mark ann's notification read: bob and another tenant get 404.
    for who in (bob, outsider):
        status, answer = await api.call("POST", f"/notifications/{middle}/read", who=who)
        assert (status, answer["error"]["code"]) == (404, "not_found")
    status, read = await api.call("POST", f"/notifications/{middle}/read", who=ann)
    assert status == 200 and read["read_at"] is not None
    assert (await api.call("GET", "/notifications", who=bob))[1]["data"] == []

    # Unread first (newest first), then read; keyset pages neither skip nor repeat.
    status, first = await api.call("GET", "/notifications", who=ann, params={"limit": 2})
    assert first["unread_count"] == 2
    assert [n["message_id"] for n in first["data"]] == [note_ids[2], note_ids[0]]
    assert all(n["read_at"] is None for n in first["data"])
    status, second = await api.call(
        "GET", "/notifications", who=ann, params={"limit": 2, "cursor": first["next_cursor"]}
    )
    assert [n["message_id"] for n in second["data"]] == [note_ids[1]]
    assert second["next_cursor"] is None
    status, answer = await api.call("GET", "/notifications", who=ann, params={"cursor": "garbage"})
    assert (status, answer["error"]["code"]) == (400, "invalid_cursor")

    status, done = await api.call("POST", "/notifications/read-all", who=ann)
    assert (status, done) == (200, {"marked_read": 2})
    assert (await api.call("GET", "/notifications", who=ann))[1]["unread_count"] == 0
    assert [e["user_id"] for e in await api.events("notification.read")] == [ann.user_id, ann.user_id]


# --- canned responses ---------------------------------------------------------------------------


async def test_canned_responses_crud_permissions_and_search(api: Api) -> None:
    agent = await add_user(api, "ann@acme.example.com")
    supervisor = await add_user(api, "sam@acme.example.com", role=Role.SUPERVISOR)
    outsider = await make_tenant(api.db, "globex")
    greeting = {"short_code": "/Hello", "title": "Greeting", "content": "Hi {{ contact.first_name }}!"}

    status, answer = await api.call("POST", "/canned-responses", who=agent, body=greeting)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, hello = await api.call("POST", "/canned-responses", who=supervisor, body=greeting)
    assert status == 201, hello
    assert (hello["short_code"], hello["created_by"]) == ("hello", supervisor.user_id)
    status, answer = await api.call("POST", "/canned-responses", body={**greeting, "short_code": "HELLO"})
    assert (status, answer["error"]["code"]) == (422, "short_code_taken")
    for code in ("has space", "é", "-x"):
        status, answer = await api.call("POST", "/canned-responses", body={**greeting, "short_code": code})
        assert (status, answer["error"]["code"]) == (422, "invalid_short_code"), code
    _, refund = await api.call(
        "POST",
        "/canned-responses",
        body={"short_code": "refund", "title": "Refund policy", "content": "30 days."},
    )
    _, thanks = await api.call(
        "POST", "/canned-responses", body={"short_code": "ty", "title": "Hello again", "content": "Thanks!"}
    )

    status, listed = await api.call("GET", "/canned-responses", who=agent)
    assert status == 200
    assert [c["short_code"] for c in listed["data"]] == ["hello", "refund", "ty"]
    for q, expected in (("/he", ["hello", "ty"]), ("RE", ["refund"]), ("%", []), ("_", []), ("x", [])):
        _, found = await api.call("GET", "/canned-responses", who=agent, params={"q": q})
        assert [c["short_code"] for c in found["data"]] == expected, q
    _, first = await api.call("GET", "/canned-responses", params={"limit": 2})
    _, rest = await api.call("GET", "/canned-responses", params={"limit": 2, "cursor": first["next_cursor"]})
    assert [c["short_code"] for c in first["data"] + rest["data"]] == ["hello", "refund", "ty"]
    assert rest["next_cursor"] is None

    # Another tenant sees nothing and cannot touch them.
    assert (await api.call("GET", "/canned-responses", who=outsider))[1]["data"] == []
    for method, body in (("GET", None), ("PATCH", {"title": "x"}), ("DELETE", None)):
        status, _ = await api.call(method, f"/canned-responses/{hello['id']}", who=outsider, body=body)
        assert status == 404, method

    status, patched = await api.call(
        "PATCH", f"/canned-responses/{refund['id']}", body={"content": "Within {{ '30' }} days."}
    )
    assert status == 200 and patched["content"] == "Within {{ '30' }} days."
    status, answer = await api.call("PATCH", f"/canned-responses/{refund['id']}", body={"short_code": "ty"})
    assert (status, answer["error"]["code"]) == (422, "short_code_taken")
    assert (await api.call("DELETE", f"/canned-responses/{thanks['id']}", who=agent))[0] == 403
    assert (await api.call("DELETE", f"/canned-responses/{thanks['id']}"))[0] == 204
    assert (await api.call("GET", f"/canned-responses/{thanks['id']}"))[0] == 404
    changes = [(e["short_code"], e["change"]) for e in await api.events("canned_response.changed")]
    assert changes == [("hello", "created"), ("refund", "created"), ("ty", "created"), ("refund", "updated"),
                       ("ty", "deleted")]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("Hi\n{{ contact.name ", "line 2"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "Python internals"),
        ("{{ contact.name.upper() }}", "calling a function"),
        ("{{ ''.__class__ }}", "Python internals"),
        ("{{ contact['__class__'] }}", "Python internals"),
        ("{{ contact.name.__globals__ }}", "Python internals"),
        ("{{ cycler.__init__.__globals__.os }}", "Python internals"),
        ("{{ self._TemplateReference__context }}", "Python internals"),
        ("{{ config }}", "unknown variable `config`"),
        ("{{ contact.nmae }}", "contact has no field `nmae`"),
        ("{% for i in range(9999999) %}x{% endfor %}", "a loop"),
        ("{{ 'x' * 100000000 }}", "arithmetic"),
        ("{{ contact.name | attr('__class__') }}", "No filter named 'attr'"),
        ("{% include '/etc/passwd' %}", "include"),
        ("{% set x = 1 %}", "{% set %}"),
    ],
)
async def test_templates_that_reach_for_python_or_do_not_parse_are_refused_on_save(
    api: Api, content: str, says: str
) -> None:
    status, answer = await api.call(
        "POST", "/canned-responses", body={"short_code": "bad", "title": "Bad", "content": content}
    )
    assert (status, answer["error"]["code"]) == (422, "invalid_template"), answer
    assert says in answer["error"]["message"]
    assert await api.count(CannedResponse) == 0


async def test_rendering_fills_in_the_conversation_as_plain_text(api: Api) -> None:
    _, conversation_id = await sms_conversation(api)
    async with api.db.transaction() as session:
        company = Company(tenant_id=api.admin.tenant_id, name="Initech", attributes={})
        session.add(company)
        await session.flush()
        conversation = (
            await session.execute(select(Conversation).where(Conversation.id == conversation_id))
        ).scalar_one()
        await session.execute(
            update(Contact)
            .where(Contact.id == conversation.contact_id)
            .values(name="Ann <script>alert(1)</script> {{ 7*7 }}", company_id=company.id, email=None)
        )
        await session.execute(update(User).where(User.id == api.admin.user_id).values(name="Sam Agent"))
    content = (
        "Hi {{ contact.first_name }} ({{ contact.last_name }}) from {{ contact.company }}!\n"
        "Email: {{ contact.email | default('none on file') }}; phone {{ contact.phone }}.\n"
        "{% if contact.email %}has email{% else %}no email{% endif %}."
        "-- {{ agent.first_name }} <{{ agent.email }}>, "
        "#{{ conversation.id }} in {{ conversation.inbox_name }}"
    )
    _, canned = await api.call(
        "POST", "/canned-responses", body={"short_code": "hi", "title": "Hi", "content": content}
    )
    status, rendered = await api.call(
        "POST", f"/conversations/{conversation_id}/canned-responses/{canned['id']}/render"
    )
    assert status == 200, rendered
    assert rendered["text"] == (
        "Hi Ann (<script>alert(1)</script> {{ 7*7 }}) from Initech!\n"
        "Email: none on file; phone +14155550100.\n"
        f"no email.-- Sam <admin@acme.example.com>, #{conversation_id} in Support line"
    )

    # Another tenant's conversation or canned response is 404.
    outsider = await make_tenant(api.db, "globex")
    path = f"/conversations/{conversation_id}/canned-responses/{canned['id']}/render"
    assert (await api.call("POST", path, who=outsider))[0] == 404


async def test_a_stored_template_that_escapes_the_sandbox_renders_nothing_and_answers_422(api: Api) -> None:
    """A row written around the API (an import, an old version) is checked again before rendering."""
    _, conversation_id = await sms_conversation(api)
    async with api.db.transaction() as session:
        evil = CannedResponse(
            tenant_id=api.admin.tenant_id,
            short_code="evil",
            title="Evil",
            content="{{ contact.__class__.__mro__ }}",
        )
        session.add(evil)
        await session.flush()
        evil_id = evil.id
    status, answer = await api.call(
        "POST", f"/conversations/{conversation_id}/canned-responses/{evil_id}/render"
    )
    assert (status, answer["error"]["code"]) == (422, "invalid_template")
    assert "Python internals" in answer["error"]["message"]
    assert "object" not in answer["error"]["message"]


# --- reply options ------------------------------------------------------------------------------


WHATSAPP_TEMPLATES = {
    "twilio_whatsapp": [{"name": CONTENT_SID, "variables": ["1"], "body": "Hi {{1}}, your order shipped."}],
    "whatsapp_cloud": [
        {"name": "order_update", "language": "en_US", "variables": ["1"], "body": "Hi {{1}}, an update."}
    ],
}


@pytest.mark.parametrize("channel", ["twilio_whatsapp", "whatsapp_cloud"])
async def test_whatsapp_offers_templates_once_the_24_hour_window_closes(api: Api, channel: str) -> None:
    inbox_id = await add_inbox(
        api.db, api.admin.tenant_id, channel, {"templates": WHATSAPP_TEMPLATES[channel]}
    )
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    path = f"/conversations/{conversation_id}/reply-options"

    async def wrote(ago: timedelta | None) -> Any:
        async with api.db.transaction() as session:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values(last_inbound_at=None if ago is None else utcnow() - ago)
            )
        status, options = await api.call("GET", path)
        assert status == 200, options
        return options

    expected_templates = [
        {"language": None, **t} if channel == "twilio_whatsapp" else t for t in WHATSAPP_TEMPLATES[channel]
    ]
    never = await wrote(None)
    assert (never["channel"], never["can_reply"], never["reason_code"]) == (
        channel,
        False,
        "outside_reply_window",
    )
    assert never["window"] == {"open": False, "closes_at": None}
    assert never["can_send_template"] is True
    assert never["templates"] == expected_templates

    inside = await wrote(timedelta(hours=23))
    assert (inside["can_reply"], inside["reason"], inside["window"]["open"]) == (True, None, True)
    assert inside["window"]["closes_at"] is not None

    outside = await wrote(timedelta(hours=25))
    assert (outside["can_reply"], outside["reason_code"], outside["window"]["open"]) == (
        False,
        "outside_reply_window",
        False,
    )
    assert "24 hours" in outside["reason"]
    assert outside["templates"] == expected_templates


@pytest.mark.parametrize(
    ("channel", "can_reply", "reason_code"),
    [("twilio_sms", True, None), ("email", True, None), ("twilio_voice", False, "replies_unsupported")],
)
async def test_channels_without_a_window_answer_plainly(
    api: Api, channel: str, can_reply: bool, reason_code: str | None
) -> None:
    inbox_id = await add_inbox(api.db, api.admin.tenant_id, channel)
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    status, options = await api.call("GET", f"/conversations/{conversation_id}/reply-options")
    assert status == 200
    assert options == {
        "channel": channel,
        "can_reply": can_reply,
        "reason": options["reason"],
        "reason_code": reason_code,
        "window": None,
        "can_send_template": False,
        "templates": [],
    }
    assert (options["reason"] is None) is can_reply
    outsider = await make_tenant(api.db, "globex")
    assert (await api.call("GET", f"/conversations/{conversation_id}/reply-options", who=outsider))[0] == 404


async def test_inbox_templates_are_checked_against_the_channel(api: Api) -> None:
    whatsapp = {
        "name": "WhatsApp",
        "channel": "twilio_whatsapp",
        "settings": {
            "account_sid": api.fake.account_sid,
            "phone_number": "whatsapp:+15017122661",
            "api_base_url": api.fake.base_url,
            "templates": [{"name": CONTENT_SID, "variables": ["1", "2"], "body": "Hi {{1}}"}],
        },
        "secrets": {"auth_token": api.fake.auth_token},
    }
    status, inbox = await api.call("POST", "/inboxes", body=whatsapp)
    assert status == 201, inbox
    assert inbox["settings"]["templates"] == [
        {"name": CONTENT_SID, "language": None, "variables": ["1", "2"], "body": "Hi {{1}}"}
    ]
    bad = [
        [{"name": "order_update"}],  # Twilio wants a Content SID
        [{"name": CONTENT_SID, "variables": "1"}],
        [{"name": CONTENT_SID, "colour": "red"}],
        [{"name": CONTENT_SID}, {"name": CONTENT_SID}],
        {"name": CONTENT_SID},
    ]
    for templates in bad:
        status, answer = await api.call(
            "PATCH", f"/inboxes/{inbox['id']}", body={"settings": {"templates": templates}}
        )
        assert (status, answer["error"]["code"]) == (422, "invalid_channel_config"), templates
    status, patched = await api.call(
        "PATCH", f"/inboxes/{inbox['id']}", body={"settings": {"templates": None}}
    )
    assert status == 200 and "templates" not in patched["settings"]

    sms = api.twilio_config()
    sms["settings"]["templates"] = [{"name": CONTENT_SID}]
    status, answer = await api.call("POST", "/inboxes", body=sms)
    assert (status, answer["error"]["code"]) == (422, "invalid_channel_config")
    assert "twilio_sms has no message templates" in answer["error"]["message"]


# --- transcripts --------------------------------------------------------------------------------


async def _conversation_with_history(api: Api) -> int:
    _, conversation_id = await sms_conversation(api)
    async with api.db.transaction() as session:
        conversation = (
            await session.execute(select(Conversation).where(Conversation.id == conversation_id))
        ).scalar_one()
        await session.execute(update(Contact).where(Contact.id == conversation.contact_id).values(name="Ann"))
        await session.execute(update(User).where(User.id == api.admin.user_id).values(name="Sam"))

        def message(direction: str, sender: str, body: str, **more: Any) -> Message:
            return Message(
                tenant_id=conversation.tenant_id,
                inbox_id=conversation.inbox_id,
                conversation_id=conversation.id,
                direction=direction,
                sender_type=sender,
                sender_id=api.admin.user_id if sender == "user" else conversation.contact_id,
                body=body,
                **more,
            )

        session.add_all(
            [
                message("inbound", "contact", "<script>alert('x')</script> & my order?", status="received"),
                message("outbound", "user", "It ships today.", status="delivered"),
                message("outbound", "user", "Never arrived", status="failed"),
                message("outbound", "user", "Customer is upset", status="received", private=True),
            ]
        )
    return conversation_id


async def test_a_transcript_is_mailed_as_text_and_escaped_html_without_notes(
    api: Api, smarthost: Smarthost
) -> None:
    conversation_id = await _conversation_with_history(api)
    status, sent = await api.call(
        "POST", f"/conversations/{conversation_id}/transcript", body={"email": "Ann@Example.com"}
    )
    assert status == 200, sent
    assert sent == {"sent_to": "Ann@example.com", "include_notes": False, "message_count": 2}
    await eventually(lambda: len(smarthost.received) == 1)
    [received] = smarthost.received
    assert received.rcpt_tos == ["Ann@example.com"]
    mail = received.message
    assert mail["Subject"] == f"Conversation #{conversation_id} with Ann (Support line)"
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
    assert "Ann:\n<script>alert('x')</script> & my order?" in text
    assert "Sam:\nIt ships today." in text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; my order?" in html
    assert "<script>" not in html
    for hidden in ("Customer is upset", "Never arrived"):
        assert hidden not in text and hidden not in html
    assert [e["to"] for e in await api.events("conversation.transcript_sent")] == ["Ann@example.com"]


async def test_notes_go_only_to_internal_recipients(api: Api, smarthost: Smarthost) -> None:
    conversation_id = await _conversation_with_history(api)
    path = f"/conversations/{conversation_id}/transcript"
    status, answer = await api.call("POST", path, body={"email": "ann@example.com", "include_notes": True})
    assert (status, answer["error"]["code"]) == (422, "notes_are_internal")
    status, sent = await api.call(
        "POST", path, body={"email": "ADMIN@acme.example.com", "include_notes": True}
    )
    assert status == 200, sent
    assert sent["message_count"] == 3
    await eventually(lambda: len(smarthost.received) == 1)
    text = smarthost.received[0].message.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
    assert "Sam (internal note):\nCustomer is upset" in text


async def test_transcript_errors(api: Api, smarthost: Smarthost) -> None:
    conversation_id = await _conversation_with_history(api)
    path = f"/conversations/{conversation_id}/transcript"
    for email in ("not-an-address", "ann@", "a b@example.com"):
        status, answer = await api.call("POST", path, body={"email": email})
        assert (status, answer["error"]["code"]) == (422, "validation_error"), email
    outsider = await make_tenant(api.db, "globex")
    assert (await api.call("POST", path, who=outsider, body={"email": "ann@example.com"}))[0] == 404

    smarthost.handler.data_reply = "554 5.7.1 Message rejected"
    status, answer = await api.call("POST", path, body={"email": "ann@example.com"})
    assert (status, answer["error"]["code"]) == (502, "mail_not_sent")
    assert "554" in answer["error"]["message"]
    assert smarthost.received == []
    assert await api.events("conversation.transcript_sent") == []


async def test_the_transcript_is_mailed_after_the_commit_so_writers_are_not_held_up(
    api: Api, smarthost: Smarthost
) -> None:
    """While the smarthost takes its time, other writes go through (on SQLite: the lock is free)."""
    conversation_id = await _conversation_with_history(api)
    entered, released = threading.Event(), threading.Event()
    original = smarthost.handler.handle_DATA

    async def slow_data(server: Any, session: Any, envelope: Any) -> str:
        entered.set()
        await asyncio.to_thread(released.wait, 60)  # longer than SQLite's busy timeout
        return await original(server, session, envelope)

    smarthost.handler.handle_DATA = slow_data  # type: ignore[method-assign]
    mailing = asyncio.create_task(
        api.call("POST", f"/conversations/{conversation_id}/transcript", body={"email": "ann@example.com"})
    )
    await asyncio.to_thread(entered.wait, 30)
    assert entered.is_set()
    # The smarthost holds the transcript; a note (a write) still goes through meanwhile.
    status, _ = await api.call("POST", f"/conversations/{conversation_id}/notes", body={"body": "meanwhile"})
    assert status == 201 and not mailing.done()
    released.set()
    status, sent = await mailing
    assert status == 200, sent
    assert len(smarthost.received) == 1
