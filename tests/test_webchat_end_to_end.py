"""Web chat through the whole gateway on both databases: the widget's WebSocket protocol, spoken by a client.

The browser itself is in tests/test_webchat_browser.py; here every rule of the protocol is checked
frame by frame: sessions, identity verification, origins, limits, history, acks, typing, uploads,
and linking a visitor to the contact that owns the email they give.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from channels.webchat import SessionTokens, typing_topic
from crm_core.models import ChannelIdentity, Consent, Contact
from gateway.app import create_app
from gateway.keys import HUB
from gateway.wiring import build_runtime
from inbox.models import Conversation, Message
from parley.db import Database
from parley.models import OutboxEvent, Role
from parley.settings import Settings
from tests.conftest import FOLLOW_UP_TOPICS, TenantAccess, eventually, make_tenant, message_row

ORIGIN = "https://shop.example.com"
IDENTITY_SECRET = "identity-secret-0123456789"
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@dataclass
class Chat:
    """One widget connection: frames received, kept until asked for."""

    ws: aiohttp.ClientWebSocketResponse
    frames: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, **frame: Any) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def expect(self, frame_type: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of `frame_type`, skipping (and keeping) others."""
        for i, frame in enumerate(self.frames):
            if frame["type"] == frame_type:
                return self.frames.pop(i)
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(
                    f"expected {frame_type}, socket says {msg.type} {msg.data!r} {msg.extra!r}"
                )
            frame = json.loads(msg.data)
            if frame["type"] == frame_type:
                return frame
            self.frames.append(frame)

    async def say(self, text: str, message_id: str | None = None) -> dict[str, Any]:
        message_id = message_id or str(uuid.uuid4())
        await self.send(type="message", id=message_id, text=text)
        return await self.expect("accepted")


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    inbox_id: int
    settings: Settings

    async def connect(
        self, *, origin: str = ORIGIN, **hello: Any
    ) -> tuple[Chat, dict[str, Any], dict[str, Any]]:
        """Open a socket and say hello; the welcome and history frames."""
        ws = await self.client.ws_connect(f"/webchat/{self.inbox_id}/ws", headers={"Origin": origin})
        chat = Chat(ws)
        await chat.send(type="hello", **hello)
        return chat, await chat.expect("welcome"), await chat.expect("history")

    async def reply(self, conversation_id: int, body: str) -> dict[str, Any]:
        response = await self.client.post(
            f"/api/v1/conversations/{conversation_id}/messages",
            data=json.dumps({"body": body}),
            headers=self.tenant.headers,
        )
        assert response.status == 201, await response.text()
        result: dict[str, Any] = await response.json()
        return result

    async def count(self, model: Any) -> int:
        async with self.db.sessionmaker() as session:
            return int((await session.execute(select(func.count()).select_from(model))).scalar_one())

    async def conversation(self) -> Conversation:
        async with self.db.sessionmaker() as session:
            return (await session.execute(select(Conversation))).scalar_one()

    async def topics(self) -> list[str]:
        async with self.db.sessionmaker() as session:
            topics = (await session.execute(select(OutboxEvent.topic).order_by(OutboxEvent.id))).scalars()
            return [t for t in topics if t != "inbox.created" and t not in FOLLOW_UP_TOPICS]


async def make_webchat_inbox(
    client: TestClient[Any, Any], tenant: TenantAccess, origins: list[str], **settings: Any
) -> int:
    """A web chat inbox, created through the API as an admin would."""
    response = await client.post(
        "/api/v1/inboxes",
        data=json.dumps(
            {
                "name": "Website chat",
                "channel": "webchat",
                "settings": {"allowed_origins": origins, "greeting": "Hi! Ask us anything.", **settings},
                "secrets": {"identity_secret": IDENTITY_SECRET},
            }
        ),
        headers=tenant.headers,
    )
    assert response.status == 201, await response.text()
    return int((await response.json())["id"])


async def start_gateway(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, port: int, **inbox_settings: Any
) -> Gateway:
    tenant = await make_tenant(db, "acme")
    client = await aiohttp_client(create_app(settings), server_kwargs={"port": port, "host": "127.0.0.1"})
    inbox_id = await make_webchat_inbox(client, tenant, [ORIGIN], **inbox_settings)
    return Gateway(client, db, tenant, inbox_id, settings)


@pytest_asyncio.fixture
async def gateway(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, public_port: int
) -> AsyncIterator[Gateway]:
    yield await start_gateway(aiohttp_client, db, settings, public_port, max_upload_bytes=2048)


async def test_a_visitor_chats_and_the_agents_reply_reaches_the_open_socket(gateway: Gateway) -> None:
    chat, welcome, history = await gateway.connect()
    assert welcome["token"] and welcome["greeting"] == "Hi! Ask us anything."
    assert welcome["agents_online"] is False  # the admin has not said they are online
    assert history["messages"] == []

    accepted = await chat.say("Do you ship to Norway?")
    conversation = await gateway.conversation()
    async with gateway.db.sessionmaker() as session:
        identity = (await session.execute(select(ChannelIdentity))).scalar_one()
        inbound = (await session.execute(select(Message))).scalar_one()
    assert identity.kind == "web_visitor" and identity.address.startswith(f"{gateway.inbox_id}:v:")
    assert (conversation.thread_key, conversation.identity_id) == (identity.address, identity.id)
    assert (inbound.id, inbound.body, inbound.direction) == (
        accepted["message_id"],
        "Do you ship to Norway?",
        "inbound",
    )
    assert await gateway.topics() == ["contact.created", "conversation.opened", "message.received"]

    reply = await gateway.reply(conversation.id, "Yes, in 3 days.")
    pushed = (await chat.expect("message"))["message"]
    while pushed["direction"] != "outbound":  # the visitor's own message comes back for other tabs
        pushed = (await chat.expect("message"))["message"]
    assert (pushed["id"], pushed["text"]) == (reply["id"], "Yes, in 3 days.")

    async def status_is(status: str) -> bool:
        return (await message_row(gateway.db, reply["id"])).status == status

    await eventually(lambda: status_is("sent"))
    assert (await message_row(gateway.db, reply["id"])).provider_message_id == f"webchat:{reply['id']}"
    await chat.send(type="ack", message_id=reply["id"], status="delivered")
    await eventually(lambda: status_is("delivered"))
    await chat.send(type="ack", message_id=reply["id"], status="read")
    await eventually(lambda: status_is("read"))
    await chat.ws.close()


async def test_a_reply_sent_while_the_visitor_is_away_is_sent_and_comes_with_the_history(
    gateway: Gateway,
) -> None:
    chat, welcome, _ = await gateway.connect()
    first = await chat.say("Hello?")
    await chat.ws.close()
    conversation = await gateway.conversation()
    away = await gateway.reply(conversation.id, "Sorry for the wait!")
    await eventually(lambda: _status(gateway, away["id"], "sent"))

    # A reload: the widget has no messages in memory and asks for everything.
    chat, again, history = await gateway.connect(token=welcome["token"])
    assert [(m["id"], m["direction"]) for m in history["messages"]] == [
        (first["message_id"], "inbound"),
        (away["id"], "outbound"),
    ]
    assert history["messages"][0]["client_id"] is not None
    assert again["token"]  # refreshed: the session slides while the visitor comes back

    # A dropped connection: the widget asks for what came after the last message it has.
    second = await chat.say("Thanks")
    later = await gateway.reply(conversation.id, "Anything else?")
    await eventually(lambda: _status(gateway, later["id"], "sent"))
    await chat.ws.close()
    chat, _, history = await gateway.connect(token=welcome["token"], since=away["id"])
    assert [m["id"] for m in history["messages"]] == [second["message_id"], later["id"]]
    await chat.ws.close()


async def _status(gateway: Gateway, message_id: int, status: str) -> bool:
    return (await message_row(gateway.db, message_id)).status == status


async def test_a_message_resent_after_a_drop_is_stored_once(gateway: Gateway) -> None:
    chat, welcome, _ = await gateway.connect()
    message_id = str(uuid.uuid4())
    first = await chat.say("Where is my order?", message_id)
    await chat.ws.close()
    chat, _, _ = await gateway.connect(token=welcome["token"])
    again = await chat.say("Where is my order?", message_id)
    assert again["message_id"] == first["message_id"]
    assert await gateway.count(Message) == 1
    assert (await gateway.topics()).count("message.received") == 1
    await chat.ws.close()


async def test_a_database_failure_closes_the_socket_so_the_widget_resends(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat, welcome, _ = await gateway.connect()

    async def unavailable(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT", None, ConnectionResetError("server closed the connection"))

    monkeypatch.setattr("gateway.webchat.ingest", unavailable)
    message_id = str(uuid.uuid4())
    await chat.send(type="message", id=message_id, text="Hello?")
    assert (await chat.expect("error"))["code"] == "unavailable"
    closing = await chat.ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == aiohttp.WSCloseCode.INTERNAL_ERROR
    monkeypatch.undo()

    chat, _, _ = await gateway.connect(token=welcome["token"])
    await chat.say("Hello?", message_id)  # the widget's resend, once the database is back
    assert await gateway.count(Message) == 1
    await chat.ws.close()


async def test_html_is_stored_and_sent_back_as_text(gateway: Gateway) -> None:
    chat, _, _ = await gateway.connect()
    await chat.say('<img src=x onerror="alert(1)"><b>bold</b>')
    reply = await gateway.reply((await gateway.conversation()).id, "<script>alert('agent')</script>")
    pushed = (await chat.expect("message"))["message"]
    while pushed["id"] != reply["id"]:
        pushed = (await chat.expect("message"))["message"]
    assert pushed["text"] == "<script>alert('agent')</script>"  # the widget shows it with textContent
    async with gateway.db.sessionmaker() as session:
        assert (
            await session.execute(select(Message.body).where(Message.direction == "inbound"))
        ).scalar_one() == ('<img src=x onerror="alert(1)"><b>bold</b>')
    await chat.ws.close()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("forged", "not valid"),
        ("other-key", "not valid"),
        ("expired", "expired"),
        ("other-inbox", "another inbox"),
    ],
)
async def test_a_bad_session_token_is_refused_with_4401(gateway: Gateway, token: str, reason: str) -> None:
    tokens = SessionTokens(gateway.settings.secret_key)
    given = {
        "forged": tokens.issue(gateway.inbox_id, f"{gateway.inbox_id}:v:abc")[:-3] + "xyz",
        "other-key": SessionTokens("another-key").issue(gateway.inbox_id, f"{gateway.inbox_id}:v:abc"),
        "expired": SessionTokens(gateway.settings.secret_key, clock=lambda: 0).issue(
            gateway.inbox_id, f"{gateway.inbox_id}:v:abc"
        ),
        "other-inbox": tokens.issue(gateway.inbox_id + 1, f"{gateway.inbox_id + 1}:v:abc"),
    }[token]
    ws = await gateway.client.ws_connect(f"/webchat/{gateway.inbox_id}/ws", headers={"Origin": ORIGIN})
    await ws.send_str(json.dumps({"type": "hello", "token": given}))
    error = json.loads((await ws.receive(timeout=5)).data)
    assert error["type"] == "error" and error["code"] == "invalid_session" and reason in error["message"]
    closing = await ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4401
    assert await gateway.count(ChannelIdentity) == 0


def identity_hash(identifier: str, secret: str = IDENTITY_SECRET) -> str:
    return hmac.new(secret.encode(), identifier.encode(), hashlib.sha256).hexdigest()


async def test_an_identified_user_is_the_same_visitor_on_every_device(gateway: Gateway) -> None:
    laptop, welcome, _ = await gateway.connect(identifier="user-42", identifier_hash=identity_hash("user-42"))
    assert welcome["identified"] is True
    said = await laptop.say("Hi from my laptop")
    await laptop.ws.close()
    phone, _, history = await gateway.connect(identifier="user-42", identifier_hash=identity_hash("user-42"))
    assert [m["id"] for m in history["messages"]] == [said["message_id"]]
    async with gateway.db.sessionmaker() as session:
        address = (await session.execute(select(ChannelIdentity.address))).scalar_one()
    assert address == f"{gateway.inbox_id}:u:user-42"
    await phone.ws.close()


@pytest.mark.parametrize(
    "wrong",
    [
        identity_hash("user-43"),  # another user's valid hash
        identity_hash("user-42", secret="a-different-secret-123"),
        "",
        None,
    ],
)
async def test_a_wrong_identity_hash_is_refused_with_4403(gateway: Gateway, wrong: str | None) -> None:
    ws = await gateway.client.ws_connect(f"/webchat/{gateway.inbox_id}/ws", headers={"Origin": ORIGIN})
    await ws.send_str(json.dumps({"type": "hello", "identifier": "user-42", "identifier_hash": wrong}))
    error = json.loads((await ws.receive(timeout=5)).data)
    assert error["code"] == "invalid_identity"
    closing = await ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4403
    assert await gateway.count(ChannelIdentity) == 0


@pytest.mark.parametrize("origin", ["https://evil.example.com", "http://shop.example.com", "null", None])
async def test_a_page_on_another_origin_cannot_open_the_chat(gateway: Gateway, origin: str | None) -> None:
    headers = {"Origin": origin} if origin is not None else {}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.client.ws_connect(f"/webchat/{gateway.inbox_id}/ws", headers=headers)
    assert refused.value.status == 403
    response = await gateway.client.post(
        f"/webchat/{gateway.inbox_id}/uploads", data={"token": "x"}, headers=headers
    )
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "origin_not_allowed"


async def test_an_unknown_or_non_webchat_inbox_is_not_found(gateway: Gateway) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.client.ws_connect(f"/webchat/{gateway.inbox_id + 99}/ws", headers={"Origin": ORIGIN})
    assert refused.value.status == 404


async def test_oversized_and_malformed_frames_are_refused_clearly(gateway: Gateway) -> None:
    chat, _, _ = await gateway.connect()
    await chat.send(type="message", id=str(uuid.uuid4()), text="x" * 5001)
    error = await chat.expect("error")
    assert error["code"] == "malformed_frame" and "5000" in error["message"]
    await chat.send(type="ack", message_id=123456, status="read")
    assert (await chat.expect("error"))["code"] == "unknown_message"  # not a reply in this chat
    await chat.ws.send_bytes(b"\x00\x01")
    assert (await chat.expect("error"))["code"] == "binary_not_accepted"
    assert await gateway.count(Message) == 0

    await chat.ws.send_str(json.dumps({"type": "message", "text": "x" * 70_000}))
    error = await chat.expect("error")
    assert error["code"] == "frame_too_large" and "65536 bytes" in error["message"]
    closing = await chat.ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert "65536 bytes" in closing.extra
    assert await gateway.count(Message) == 0


async def test_a_flood_of_messages_is_cut_off(gateway: Gateway) -> None:
    chat, _, _ = await gateway.connect()
    for n in range(40):
        await chat.send(type="message", id=str(uuid.uuid4()), text=f"spam {n}")
    error = await chat.expect("error")
    assert error["code"] == "rate_limited" and "slow down" in error["message"]
    while (msg := await chat.ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
        pass
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4429
    assert 20 <= await gateway.count(Message) < 40


async def test_a_first_frame_that_is_not_hello_closes_the_socket(gateway: Gateway) -> None:
    ws = await gateway.client.ws_connect(f"/webchat/{gateway.inbox_id}/ws", headers={"Origin": ORIGIN})
    await ws.send_str(json.dumps({"type": "message", "id": str(uuid.uuid4()), "text": "hi"}))
    assert json.loads((await ws.receive(timeout=5)).data)["code"] == "malformed_frame"
    assert (await ws.receive(timeout=5)).data == 4400
    assert await gateway.count(Message) == 0


async def test_pre_chat_form_names_the_contact_and_gives_it_an_email_identity(gateway: Gateway) -> None:
    chat, _, _ = await gateway.connect()
    await chat.send(type="contact", name="Ann Lee", email="  Ann.Lee@Example.COM ")
    await chat.expect("contact_saved")
    await chat.say("Hi, it's Ann")
    async with gateway.db.sessionmaker() as session:
        contact = (await session.execute(select(Contact))).scalar_one()
        identities = {
            (i.kind, i.address.split(":")[1] if i.kind == "web_visitor" else i.address)
            for i in (await session.execute(select(ChannelIdentity))).scalars()
        }
        conversation = (await session.execute(select(Conversation))).scalar_one()
    assert (contact.name, contact.email) == ("Ann Lee", "ann.lee@example.com")
    assert identities == {("web_visitor", "v"), ("email", "ann.lee@example.com")}
    assert conversation.contact_id == contact.id
    assert await gateway.topics() == [
        "contact.created",
        "contact.identity_added",
        "contact.updated",  # name and email, once
        "conversation.opened",
        "message.received",
    ]
    async with gateway.db.sessionmaker() as session:
        updated = (
            await session.execute(select(OutboxEvent.payload).where(OutboxEvent.topic == "contact.updated"))
        ).scalar_one()
    assert updated == {"contact_id": contact.id, "changed": ["email", "name"]}
    await chat.send(type="contact", email="not an address")
    assert (await chat.expect("error"))["code"] == "invalid_email"
    await chat.ws.close()


async def test_an_email_given_in_chat_links_the_visitor_to_the_contact_that_owns_it(gateway: Gateway) -> None:
    async with gateway.db.transaction() as session:
        known = Contact(
            tenant_id=gateway.tenant.tenant_id, name="Ann Lee", email="ann@example.com", attributes={}
        )
        session.add(known)
        await session.flush()
        session.add(
            ChannelIdentity(
                tenant_id=gateway.tenant.tenant_id,
                contact_id=known.id,
                kind="email",
                address="ann@example.com",
            )
        )
    chat, _, _ = await gateway.connect()
    said = await chat.say("I mailed you yesterday")
    visitor_contact = (await gateway.conversation()).contact_id
    assert visitor_contact != known.id

    await chat.send(type="contact", name="Mallory", email="ANN@example.com")
    await chat.expect("contact_saved")
    conversation = await gateway.conversation()
    async with gateway.db.sessionmaker() as session:
        visitor_identity = (
            await session.execute(select(ChannelIdentity).where(ChannelIdentity.kind == "web_visitor"))
        ).scalar_one()
        message = (await session.execute(select(Message))).scalar_one()
        owner = (await session.execute(select(Contact).where(Contact.id == known.id))).scalar_one()
        moved = (
            await session.execute(
                select(OutboxEvent.payload).where(OutboxEvent.topic == "contact.identity_moved")
            )
        ).scalar_one()
    assert conversation.contact_id == known.id and visitor_identity.contact_id == known.id
    assert message.sender_id == known.id
    assert owner.name == "Ann Lee"  # a visitor cannot rename the contact they claim to be
    assert moved == {
        "identity_id": visitor_identity.id,
        "from_contact_id": visitor_contact,
        "to_contact_id": known.id,
        "conversation_ids": [conversation.id],
        "reason": "email_given",
    }
    assert await gateway.count(ChannelIdentity) == 2  # no second email identity
    assert await gateway.count(Consent) == 0  # giving an email is not consenting to anything

    # The visitor keeps their chat, and only their chat.
    more = await chat.say("Any news?")
    await chat.ws.close()
    async with gateway.db.sessionmaker() as session:
        token = SessionTokens(gateway.settings.secret_key).issue(gateway.inbox_id, visitor_identity.address)
    chat, _, history = await gateway.connect(token=token)
    assert [m["id"] for m in history["messages"]] == [said["message_id"], more["message_id"]]
    await chat.ws.close()


async def test_typing_goes_both_ways(gateway: Gateway) -> None:
    chat, _, _ = await gateway.connect()
    await chat.say("Hello")
    conversation = await gateway.conversation()
    async with gateway.client.app[HUB].subscribe(typing_topic(gateway.tenant.tenant_id)) as agents:
        await chat.send(type="typing", typing=True)
        seen = await asyncio.wait_for(agents.get(), 5)
    assert seen == {
        "topic": "conversation.typing",
        "conversation_id": conversation.id,
        "inbox_id": gateway.inbox_id,
        "contact_id": conversation.contact_id,
        "typing": True,
        "by": {"type": "contact", "id": conversation.contact_id},
    }

    response = await gateway.client.post(
        f"/api/v1/conversations/{conversation.id}/typing",
        data=json.dumps({"typing": True}),
        headers=gateway.tenant.headers,
    )
    assert response.status == 204
    assert (await chat.expect("typing"))["typing"] is True

    stranger = await make_tenant(gateway.db, "globex")
    response = await gateway.client.post(
        f"/api/v1/conversations/{conversation.id}/typing",
        data=json.dumps({"typing": True}),
        headers=stranger.headers,
    )
    assert response.status == 404
    marketer = await make_tenant(gateway.db, "acme", role=Role.MARKETER, email="m@acme.example.com")
    response = await gateway.client.post(
        f"/api/v1/conversations/{conversation.id}/typing",
        data=json.dumps({"typing": True}),
        headers=marketer.headers,
    )
    assert response.status == 403
    await chat.ws.close()


async def test_open_widgets_learn_when_an_agent_comes_online_and_leaves(gateway: Gateway) -> None:
    chat, welcome, _ = await gateway.connect()
    assert welcome["agents_online"] is False and welcome["offline_text"]
    for presence, online in (("online", True), ("away", False)):
        response = await gateway.client.put(
            "/api/v1/me/presence", data=json.dumps({"presence": presence}), headers=gateway.tenant.headers
        )
        assert response.status == 200
        assert (await chat.expect("presence"))["agents_online"] is online
    await chat.ws.close()
    response = await gateway.client.put(
        "/api/v1/me/presence", data=json.dumps({"presence": "online"}), headers=gateway.tenant.headers
    )
    chat, welcome, _ = await gateway.connect()
    assert welcome["agents_online"] is True
    await chat.ws.close()


def upload_form(
    token: str, data: bytes, *, filename: str = "receipt.png", text: str = ""
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("token", token)
    form.add_field("id", str(uuid.uuid4()))
    form.add_field("text", text)
    form.add_field("file", data, filename=filename, content_type="image/png")
    return form


async def test_an_uploaded_file_becomes_a_message_with_a_stored_attachment(gateway: Gateway) -> None:
    chat, welcome, _ = await gateway.connect()
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    response = await gateway.client.post(
        f"/webchat/{gateway.inbox_id}/uploads",
        data=upload_form(welcome["token"], png),
        headers={"Origin": ORIGIN},
    )
    assert response.status == 201, await response.text()
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    message = (await response.json())["message"]
    attachment = message["attachments"][0]
    assert attachment["filename"] == "receipt.png" and attachment["content_type"] == "image/png"
    pushed = (await chat.expect("message"))["message"]
    assert pushed["id"] == message["id"]  # the widget's other tabs see it too
    served = await gateway.client.get(attachment["url"].removeprefix(gateway.settings.public_url or ""))
    assert served.status == 200 and await served.read() == png

    too_big = await gateway.client.post(
        f"/webchat/{gateway.inbox_id}/uploads",
        data=upload_form(welcome["token"], b"x" * 2049),
        headers={"Origin": ORIGIN},
    )
    assert too_big.status == 413
    assert too_big.headers["Access-Control-Allow-Origin"] == ORIGIN  # so the widget can read why
    error = (await too_big.json())["error"]
    assert error["code"] == "attachment_too_large" and "2048" in error["message"]

    not_multipart = await gateway.client.post(
        f"/webchat/{gateway.inbox_id}/uploads", json={"token": welcome["token"]}, headers={"Origin": ORIGIN}
    )
    assert not_multipart.status == 400
    assert (await not_multipart.json())["error"]["code"] == "malformed_upload"

    forged = await gateway.client.post(
        f"/webchat/{gateway.inbox_id}/uploads", data=upload_form("forged", png), headers={"Origin": ORIGIN}
    )
    assert forged.status == 401 and (await forged.json())["error"]["code"] == "invalid_session"
    assert await gateway.count(Message) == 1
    await chat.ws.close()


async def test_the_widget_script_is_served(gateway: Gateway) -> None:
    response = await gateway.client.get("/widget.js")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    source = await response.text()
    assert "data-inbox" in source and "innerHTML" not in source


async def test_with_redis_a_worker_process_delivers_the_reply_to_the_gateways_socket(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, public_port: int, redis_url: str
) -> None:
    scaled = dataclasses.replace(settings, redis_url=redis_url)
    # The gateway does not dispatch: a separate runtime (what a Celery worker builds) does.
    gateway = await start_gateway(aiohttp_client, db, scaled, public_port)
    worker = build_runtime(scaled)
    try:
        chat, _, _ = await gateway.connect()
        await chat.say("Anyone there?")
        async with gateway.db.transaction() as session:
            conversation = (await session.execute(select(Conversation))).scalar_one()
        reply = await gateway.reply(conversation.id, "Yes, from the worker")
        await eventually(lambda: _dispatched(worker))
        pushed = (await chat.expect("message"))["message"]
        while pushed["direction"] != "outbound":
            pushed = (await chat.expect("message"))["message"]
        assert (pushed["id"], pushed["text"]) == (reply["id"], "Yes, from the worker")
        assert (await message_row(db, reply["id"])).status == "sent"
        await chat.ws.close()
    finally:
        await worker.close()


async def _dispatched(runtime: Any) -> bool:
    await runtime.dispatcher.run_until_idle()
    async with runtime.db.sessionmaker() as session:
        return bool(
            (await session.execute(select(func.count()).where(Message.status == "sent"))).scalar_one()
        )
