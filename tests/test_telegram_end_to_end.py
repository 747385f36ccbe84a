"""Telegram through the whole gateway, on both databases: updates in, replies out via the fake Bot API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from channels.base import Button
from crm_core.models import ChannelIdentity, Contact
from gateway.app import create_app
from gateway.keys import NOTIFIER
from inbox.models import Conversation, Message
from inbox.service import queue_outbound
from parley.db import Database
from parley.models import OutboxEvent
from parley.settings import Settings
from tests.conftest import FOLLOW_UP_TOPICS, TenantAccess, eventually, make_tenant, message_row
from tests.fakes.telegram_api import (
    DEFAULT_WEBHOOK_SECRET,
    USER_ID,
    FakeTelegramApi,
    PostResult,
    callback_query_update,
    fake_telegram,
    load_fixture,
    post_update,
    text_update,
)

__all__ = ["fake_telegram"]  # the fixture, imported so pytest finds it here


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    inbox_id: int
    fake: FakeTelegramApi
    base_url: str

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/webhooks/{self.inbox_id}"

    async def post(self, update: Any, *, secret: str | None = DEFAULT_WEBHOOK_SECRET) -> PostResult:
        async with aiohttp.ClientSession() as session:
            return await post_update(session, self.webhook_url, update, secret=secret)

    async def count(self, model: Any) -> int:
        async with self.db.sessionmaker() as session:
            return int((await session.execute(select(func.count()).select_from(model))).scalar_one())

    async def topics(self) -> list[str]:
        async with self.db.sessionmaker() as session:
            return list((await session.execute(select(OutboxEvent.topic).order_by(OutboxEvent.id))).scalars())

    async def last_message(self) -> Message:
        async with self.db.sessionmaker() as session:
            return (await session.execute(select(Message).order_by(Message.id.desc()).limit(1))).scalar_one()


@pytest_asyncio.fixture
async def gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_telegram: FakeTelegramApi,
) -> AsyncIterator[Gateway]:
    tenant = await make_tenant(db, "acme")
    client = await aiohttp_client(
        create_app(settings), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    config = {
        "name": "Acme bot",
        "channel": "telegram",
        "settings": {"api_base_url": fake_telegram.base_url},
        "secrets": {"bot_token": fake_telegram.token, "webhook_secret": DEFAULT_WEBHOOK_SECRET},
    }
    async with client.post("/api/v1/inboxes", json=config, headers=tenant.headers) as response:
        inbox = await response.json()
        assert response.status == 201, inbox
    assert inbox["secrets_set"] == ["bot_token", "webhook_secret"]
    yield Gateway(client, db, tenant, int(inbox["id"]), fake_telegram, f"http://127.0.0.1:{public_port}")


async def reply(gw: Gateway, body: str, *, buttons: tuple[Button, ...] = ()) -> int:
    """Queue an agent reply in the only conversation and wake the dispatcher, as the API does."""
    async with gw.db.transaction() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        message = await queue_outbound(
            session, conversation, body=body, sender_type="user", sender_id=gw.tenant.user_id, buttons=buttons
        )
    gw.client.app[NOTIFIER].notify()
    return message.id


async def wait_for_status(gw: Gateway, message_id: int, status: str) -> Message:
    async def reached() -> bool:
        return (await message_row(gw.db, message_id)).status == status

    await eventually(reached)
    return await message_row(gw.db, message_id)


async def test_a_text_update_creates_contact_conversation_and_message(gateway: Gateway) -> None:
    result = await gateway.post(load_fixture("message__text"))
    assert (result.status, result.text) == (200, "")

    async with gateway.db.sessionmaker() as session:
        contact = (await session.execute(select(Contact))).scalar_one()
        identity = (await session.execute(select(ChannelIdentity))).scalar_one()
        conversation = (await session.execute(select(Conversation))).scalar_one()
        message = (await session.execute(select(Message))).scalar_one()
        # Routing may already have queued the conversation (nobody is online): not the pipeline's doing.
        topics = sorted(
            (
                await session.execute(
                    select(OutboxEvent.topic).where(OutboxEvent.topic.not_in(FOLLOW_UP_TOPICS))
                )
            )
            .scalars()
            .all()
        )
    assert (identity.kind, identity.address, identity.contact_id) == ("telegram", str(USER_ID), contact.id)
    assert (contact.name, contact.phone, contact.email) == ("Ada Lovelace", None, None)
    assert (conversation.contact_id, conversation.inbox_id, conversation.status) == (
        contact.id,
        gateway.inbox_id,
        "open",
    )
    assert message.body == "Hi, is my order on its way?"
    assert (message.direction, message.status, message.provider_message_id) == (
        "inbound",
        "received",
        "804512001",
    )
    assert message.extra == {
        "chat_id": USER_ID,
        "chat_type": "private",
        "message_id": 4417,
        "username": "ada_l",
    }
    assert topics == ["contact.created", "conversation.opened", "inbox.created", "message.received"]


async def test_a_second_update_joins_the_open_conversation(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text"))).status == 200
    assert (await gateway.post(load_fixture("message__photo"))).status == 200
    assert await gateway.count(Contact) == 1
    assert await gateway.count(Conversation) == 1
    photo = await gateway.last_message()
    assert photo.body == "The box arrived like this"
    # The pipeline stores Telegram's file reference; the media fetcher, running in the background,
    # may already have replaced it by the media store's copy.
    (attachment,) = photo.attachments
    assert (attachment["content_type"], attachment["size"]) == ("image/jpeg", 84216)
    assert attachment["url"] == "tg-file:AgACAgQAAxkBAAIBZ2aZ-large" or "tg-file:" not in attachment["url"]


async def test_the_same_update_posted_10_times_concurrently_is_stored_once(gateway: Gateway) -> None:
    update = load_fixture("message__text")
    results = await asyncio.gather(*(gateway.post(update) for _ in range(10)))
    assert [r.status for r in results] == [200] * 10
    assert await gateway.count(Message) == 1
    assert await gateway.count(Contact) == 1
    assert await gateway.count(Conversation) == 1
    async with gateway.db.sessionmaker() as session:
        received = (
            await session.execute(select(func.count()).where(OutboxEvent.topic == "message.received"))
        ).scalar_one()
    assert received == 1


@pytest.mark.parametrize("secret", [None, "", "not-the-webhook-secret"])
async def test_a_missing_or_wrong_secret_is_a_403_and_stores_nothing(
    gateway: Gateway, secret: str | None
) -> None:
    result = await gateway.post(load_fixture("message__text"), secret=secret)
    assert result.status == 403
    assert result.json()["error"]["code"] == "invalid_signature"
    for model in (Message, Contact, Conversation):
        assert await gateway.count(model) == 0
    assert await gateway.topics() == ["inbox.created"]


async def test_a_malformed_update_is_a_400_and_stores_nothing(gateway: Gateway) -> None:
    result = await gateway.post(load_fixture("malformed__no_update_id"))
    assert result.status == 400
    assert result.json()["error"]["code"] == "malformed_payload"
    assert await gateway.count(Message) == 0


@pytest.mark.parametrize("name", ["edited_message__text", "channel_post__text"])
async def test_updates_parley_does_not_handle_are_acknowledged_and_store_nothing(
    gateway: Gateway, name: str
) -> None:
    assert (await gateway.post(load_fixture(name))).status == 200
    assert await gateway.count(Message) == 0
    assert await gateway.count(Contact) == 0


async def test_a_reply_with_buttons_reaches_telegram_as_an_inline_keyboard(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text"))).status == 200
    buttons = (Button("track", "Track my order"), Button("human", "Talk to a person"))
    message_id = await reply(gateway, "How can we help?", buttons=buttons)

    message = await wait_for_status(gateway, message_id, "sent")
    [call] = gateway.fake.calls("sendMessage")
    assert call.params["chat_id"] == str(USER_ID)
    assert call.params["text"] == "How can we help?"
    assert call.json("reply_markup") == {
        "inline_keyboard": [
            [{"text": "Track my order", "callback_data": "track"}],
            [{"text": "Talk to a person", "callback_data": "human"}],
        ]
    }
    [sent] = gateway.fake.messages
    assert message.provider_message_id == f"{USER_ID}:{sent['message_id']}"
    assert message.attempts == 1


async def test_pressing_a_button_is_stored_as_a_button_reply_and_answered_in_the_webhook_reply(
    gateway: Gateway,
) -> None:
    assert (await gateway.post(text_update(804513001, "Hi"))).status == 200
    buttons = (Button("track", "Track my order"), Button("human", "Talk to a person"))
    await wait_for_status(gateway, await reply(gateway, "How can we help?", buttons=buttons), "sent")

    press = callback_query_update(804513002, gateway.fake.messages[-1], "human")
    result = await gateway.post(press)
    assert (result.status, result.content_type) == (200, "application/json")
    assert result.json() == {
        "method": "answerCallbackQuery",
        "callback_query_id": press["callback_query"]["id"],
    }

    pressed = await gateway.last_message()
    assert (pressed.direction, pressed.provider_message_id) == ("inbound", "804513002")
    assert pressed.body == "Talk to a person"
    assert pressed.content_attributes == {"button_reply": {"id": "human", "title": "Talk to a person"}}
    assert await gateway.count(Conversation) == 1

    # Telegram redelivering the press: stored once, answered again.
    again = await gateway.post(press)
    assert json.loads(again.text)["method"] == "answerCallbackQuery"
    assert await gateway.count(Message) == 3


# PTB itself reads the deprecated int `retry_after` while building RetryAfter.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_a_429_is_retried_after_telegrams_retry_after(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text"))).status == 200
    gateway.fake.fail_next(429, "Too Many Requests: retry after 1", retry_after=1)
    started = asyncio.get_running_loop().time()
    message_id = await reply(gateway, "Thanks for waiting")

    message = await wait_for_status(gateway, message_id, "sent")
    assert asyncio.get_running_loop().time() - started >= 1.0  # retry_after honoured
    assert len(gateway.fake.calls("sendMessage")) == 2
    assert len(gateway.fake.messages) == 1
    assert message.attempts == 2


async def test_a_blocked_bot_marks_the_reply_failed_with_the_reason(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text"))).status == 200
    gateway.fake.fail_next(403, "Forbidden: bot was blocked by the user")
    message = await wait_for_status(gateway, await reply(gateway, "Hello?"), "failed")
    assert message.error_code == "blocked"
    assert message.error_message and "blocked the bot" in message.error_message
    assert len(gateway.fake.requests) == 1  # not retried


async def test_telegram_webhooks_have_no_get_handshake(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session, session.get(gateway.webhook_url) as response:
        assert response.status == 405


async def test_a_button_id_telegram_cannot_carry_is_refused_by_the_api(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text"))).status == 200
    async with gateway.db.sessionmaker() as session:
        conversation_id = (await session.execute(select(Conversation.id))).scalar_one()
    path = f"/api/v1/conversations/{conversation_id}/messages"
    too_long = {
        "body": "Pick one",
        "buttons": [{"id": "é" * 33, "title": "Track"}],
    }  # 66 bytes of callback data
    async with gateway.client.post(path, json=too_long, headers=gateway.tenant.headers) as response:
        answer = await response.json()
    assert (response.status, answer["error"]["code"]) == (422, "button_id_too_long")
    assert await gateway.count(Message) == 1  # the customer's message only: nothing was queued
    fits = {"body": "Pick one", "buttons": [{"id": "é" * 32, "title": "Track"}]}
    async with gateway.client.post(path, json=fits, headers=gateway.tenant.headers) as response:
        assert response.status == 201


async def test_a_photo_is_copied_into_the_media_store_without_exposing_the_bot_token(
    gateway: Gateway,
) -> None:
    file_id = gateway.fake.add_file(b"\xff\xd8\xff damaged box", "photos/file_12.jpg")
    update = load_fixture("message__photo")
    for size in update["message"]["photo"]:
        size["file_id"] = file_id

    assert (await gateway.post(update)).status == 200

    async def copied() -> bool:
        return "media_key" in (await gateway.last_message()).attachments[0]

    await eventually(copied)
    (attachment,) = (await gateway.last_message()).attachments
    assert attachment["filename"] == "file_12.jpg" and attachment["content_type"] == "image/jpeg"
    assert gateway.fake.token not in attachment["url"] and attachment["source_url"] == f"tg-file:{file_id}"
    async with gateway.client.get(attachment["url"].removeprefix(gateway.base_url)) as response:
        assert await response.read() == b"\xff\xd8\xff damaged box"
    assert gateway.fake.calls("getFile")[0].params["file_id"] == file_id


async def test_a_file_telegram_will_not_hand_out_is_recorded_with_its_reason(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__document"))).status == 200

    async def settled() -> bool:
        return "error" in (await gateway.last_message()).attachments[0]

    await eventually(settled)
    assert "invalid file_id" in (await gateway.last_message()).attachments[0]["error"].lower()
