"""Slack through the whole gateway, on both databases: signed events in, threaded replies out via the fake."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from crm_core.models import ChannelIdentity, Contact
from gateway.app import create_app
from inbox.models import Conversation, Message
from parley.db import Database
from parley.models import OutboxEvent
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant
from tests.fakes.slack_api import (
    CHANNEL_ID,
    OTHER_USER_ID,
    TEAM_ID,
    USER_ID,
    FakeSlackApi,
    PostResult,
    block_actions_payload,
    bot_message_event,
    event_body,
    fake_slack,
    interactivity_body,
    load_fixture,
    message_event,
    post_signed,
)

__all__ = ["fake_slack"]  # the fixture, imported so pytest finds it here

ROOT_TS = "1700000000.000100"
SECOND_ROOT_TS = "1700000900.001000"


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    inbox_id: int
    fake: FakeSlackApi
    webhook_url: str

    async def post(
        self,
        envelope: Any,
        *,
        timestamp: int | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> PostResult:
        """POST an Events API body, signed as Slack signs it."""
        async with aiohttp.ClientSession() as session:
            return await post_signed(
                session,
                self.webhook_url,
                event_body(envelope),
                timestamp=timestamp,
                headers=headers,
                **kwargs,
            )

    async def click(self, payload: Any) -> PostResult:
        """POST a block_actions payload to the interactivity URL, as a signed form."""
        async with aiohttp.ClientSession() as session:
            return await post_signed(
                session,
                f"{self.webhook_url}/interactivity",
                interactivity_body(payload),
                content_type="application/x-www-form-urlencoded",
            )

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        async with self.client.request(
            method, f"/api/v1{path}", data=data, headers=self.tenant.headers
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def count(self, model: Any, *where: Any) -> int:
        async with self.db.sessionmaker() as session:
            stmt = select(func.count()).select_from(model).where(*where)
            return int((await session.execute(stmt)).scalar_one())

    async def conversations(self) -> list[dict[str, Any]]:
        """The conversations, oldest first, as the API shows them."""
        status, page = await self.api("GET", "/conversations")
        assert status == 200, page
        return sorted(page["data"], key=lambda c: int(c["id"]))

    async def messages(self, conversation_id: int) -> list[dict[str, Any]]:
        status, page = await self.api("GET", f"/conversations/{conversation_id}/messages")
        assert status == 200, page
        return list(page["data"])

    async def topics(self) -> list[str]:
        async with self.db.sessionmaker() as session:
            return list((await session.execute(select(OutboxEvent.topic).order_by(OutboxEvent.id))).scalars())

    async def reply(
        self, conversation_id: int, body: dict[str, Any], *, until: str = "sent"
    ) -> dict[str, Any]:
        """Reply through the API; wait until the message reaches status `until`."""
        status, created = await self.api("POST", f"/conversations/{conversation_id}/messages", body)
        assert status == 201, created

        async def reached() -> bool:
            _, message = await self.message(int(created["id"]))
            return bool(message["status"] == until)

        await eventually(reached)
        return (await self.message(int(created["id"])))[1]

    async def message(self, message_id: int) -> tuple[int, dict[str, Any]]:
        async with self.db.sessionmaker() as session:
            row = (await session.execute(select(Message).where(Message.id == message_id))).scalar_one()
        return row.conversation_id, {
            "status": row.status,
            "provider_message_id": row.provider_message_id,
            "attempts": row.attempts,
            "error_code": row.error_code,
            "error_message": row.error_message,
        }


@pytest_asyncio.fixture
async def gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_slack: FakeSlackApi,
) -> AsyncIterator[Gateway]:
    tenant = await make_tenant(db, "acme")
    client = await aiohttp_client(
        create_app(settings), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    config = {
        "name": "Acme Slack support",
        "channel": "slack",
        "settings": {"team_id": TEAM_ID, "api_base_url": fake_slack.base_url},
        "secrets": {"bot_token": fake_slack.token, "signing_secret": fake_slack.signing_secret},
    }
    async with client.post("/api/v1/inboxes", json=config, headers=tenant.headers) as response:
        inbox = await response.json()
        assert response.status == 201, inbox
    assert inbox["secrets_set"] == ["bot_token", "signing_secret"]
    # What an admin pastes into the Slack app's Event Subscriptions as the Request URL.
    yield Gateway(client, db, tenant, int(inbox["id"]), fake_slack, inbox["webhook_url"])


async def test_slack_checking_the_request_url_gets_its_challenge_back(gateway: Gateway) -> None:
    result = await gateway.post(load_fixture("url_verification__challenge"))
    assert (result.status, result.content_type) == (200, "application/json")
    assert result.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    for model in (Message, Contact, Conversation):
        assert await gateway.count(model) == 0

    unsigned = await gateway.post(load_fixture("url_verification__challenge"), signed=False)
    assert unsigned.status == 403


async def test_a_top_level_message_opens_a_conversation_whose_replies_thread_under_it(
    gateway: Gateway,
) -> None:
    result = await gateway.post(
        message_event("Hi, is my order on its way?", ts=ROOT_TS, event_id="Ev0100000001")
    )
    assert (result.status, result.text) == (200, "")

    [conversation] = await gateway.conversations()
    assert (conversation["thread_key"], conversation["status"]) == (f"{CHANNEL_ID}:{ROOT_TS}", "open")
    async with gateway.db.sessionmaker() as session:
        identity = (await session.execute(select(ChannelIdentity))).scalar_one()
    assert (identity.kind, identity.address) == ("slack", f"{TEAM_ID}:{USER_ID}")
    [inbound] = await gateway.messages(conversation["id"])
    assert (inbound["body"], inbound["provider_message_id"]) == (
        "Hi, is my order on its way?",
        "Ev0100000001",
    )

    sent = await gateway.reply(conversation["id"], {"body": "It left our warehouse this morning"})
    [call] = gateway.fake.calls("chat.postMessage")
    assert call.params == {
        "channel": CHANNEL_ID,
        "thread_ts": ROOT_TS,
        "text": "It left our warehouse this morning",
    }
    [posted] = gateway.fake.messages
    assert (sent["provider_message_id"], sent["attempts"]) == (f"{CHANNEL_ID}:{posted['ts']}", 1)
    assert gateway.fake.calls("conversations.open") == []


async def test_replies_in_the_thread_join_the_same_conversation_whoever_writes_them(gateway: Gateway) -> None:
    assert (await gateway.post(message_event("My order is late", ts=ROOT_TS))).status == 200
    in_thread = message_event("It's order #1042", ts="1700000060.000200", thread_ts=ROOT_TS)
    assert (await gateway.post(in_thread)).status == 200
    colleague = message_event(
        "Same for my order", ts="1700000120.000300", thread_ts=ROOT_TS, user=OTHER_USER_ID
    )
    assert (await gateway.post(colleague)).status == 200

    [conversation] = await gateway.conversations()
    bodies = [m["body"] for m in await gateway.messages(conversation["id"])]
    assert bodies == ["My order is late", "It's order #1042", "Same for my order"]
    assert await gateway.count(Contact) == 2  # the colleague is a contact of their own

    await gateway.reply(conversation["id"], {"body": "Looking into both"})
    assert gateway.fake.calls("chat.postMessage")[0].params["thread_ts"] == ROOT_TS


async def test_a_second_top_level_message_opens_a_second_conversation(gateway: Gateway) -> None:
    assert (await gateway.post(message_event("My order is late", ts=ROOT_TS))).status == 200
    assert (
        await gateway.post(message_event("Also, can I change my address?", ts=SECOND_ROOT_TS))
    ).status == 200

    first, second = await gateway.conversations()
    assert (first["thread_key"], second["thread_key"]) == (
        f"{CHANNEL_ID}:{ROOT_TS}",
        f"{CHANNEL_ID}:{SECOND_ROOT_TS}",
    )
    assert first["contact_id"] == second["contact_id"]
    assert await gateway.count(Contact) == 1

    await gateway.reply(second["id"], {"body": "Yes, until it ships"})
    assert gateway.fake.calls("chat.postMessage")[0].params["thread_ts"] == SECOND_ROOT_TS


async def test_a_new_reply_reopens_a_resolved_thread(gateway: Gateway) -> None:
    assert (await gateway.post(message_event("My order is late", ts=ROOT_TS))).status == 200
    [conversation] = await gateway.conversations()
    status, _ = await gateway.api("PATCH", f"/conversations/{conversation['id']}", {"status": "resolved"})
    assert status == 200

    again = message_event("It still hasn't come", ts="1700090000.000500", thread_ts=ROOT_TS)
    assert (await gateway.post(again)).status == 200
    [reopened] = await gateway.conversations()
    assert (reopened["id"], reopened["status"]) == (conversation["id"], "open")


async def test_slack_retrying_an_event_stores_it_once(gateway: Gateway) -> None:
    envelope = message_event("Hi, anyone there?", ts=ROOT_TS, event_id="Ev0100000002")
    first = gateway.post(envelope)
    # Slack retries after 3 s without an answer, with the attempt number and the reason.
    retries = [
        gateway.post(envelope, headers={"X-Slack-Retry-Num": str(n), "X-Slack-Retry-Reason": "http_timeout"})
        for n in range(1, 5)
    ]
    results = await asyncio.gather(first, *retries)
    assert [(r.status, r.text) for r in results] == [(200, "")] * 5
    assert await gateway.count(Message) == 1
    assert await gateway.count(Conversation) == 1
    assert await gateway.count(OutboxEvent, OutboxEvent.topic == "message.received") == 1


async def test_a_stale_request_is_a_403_and_stores_nothing(gateway: Gateway) -> None:
    result = await gateway.post(message_event("Replayed", ts=ROOT_TS), timestamp=int(time.time()) - 6 * 60)
    assert result.status == 403
    assert result.json()["error"]["code"] == "invalid_signature"
    assert "stale" in result.json()["error"]["message"]
    for model in (Message, Contact, Conversation):
        assert await gateway.count(model) == 0
    assert await gateway.topics() == ["inbox.created"]


@pytest.mark.parametrize("secret", ["0" * 32, None])
async def test_a_wrongly_signed_or_unsigned_event_is_a_403(gateway: Gateway, secret: str | None) -> None:
    envelope = message_event("Forged", ts=ROOT_TS)
    if secret is None:
        result = await gateway.post(envelope, signed=False)
    else:
        result = await gateway.post(envelope, signing_secret=secret)
    assert result.status == 403
    assert await gateway.count(Message) == 0


async def test_a_malformed_event_is_a_400_and_stores_nothing(gateway: Gateway) -> None:
    result = await gateway.post(load_fixture("malformed__no_event_id"))
    assert result.status == 400
    assert result.json()["error"]["code"] == "malformed_payload"
    assert await gateway.count(Message) == 0


@pytest.mark.parametrize(
    "name", ["message__bot", "message__changed", "app_mention__channel", "message__other_team"]
)
async def test_events_parley_ignores_are_acknowledged_and_store_nothing(gateway: Gateway, name: str) -> None:
    assert (await gateway.post(load_fixture(name))).status == 200
    assert await gateway.count(Message) == 0
    assert await gateway.count(Contact) == 0


async def test_parleys_own_reply_coming_back_from_slack_is_not_stored(gateway: Gateway) -> None:
    assert (await gateway.post(message_event("Hello?", ts=ROOT_TS))).status == 200
    [conversation] = await gateway.conversations()
    await gateway.reply(conversation["id"], {"body": "Hello! How can we help?"})

    echo = await gateway.post(bot_message_event(gateway.fake.messages[-1]))
    assert (echo.status, echo.text) == (200, "")
    assert await gateway.count(Message) == 2  # the customer's message and the reply, nothing more
    assert await gateway.count(Contact) == 1


async def test_a_button_click_is_stored_as_a_button_reply_in_the_conversation(gateway: Gateway) -> None:
    assert (await gateway.post(message_event("My parcel is damaged", ts=ROOT_TS))).status == 200
    [conversation] = await gateway.conversations()
    buttons = [{"id": "refund", "title": "Refund me"}, {"id": "human", "title": "Talk to a person"}]
    await gateway.reply(conversation["id"], {"body": "Sorry! What would you like?", "buttons": buttons})
    [call] = gateway.fake.calls("chat.postMessage")
    assert [e["value"] for e in call.params["blocks"][1]["elements"]] == ["refund", "human"]

    result = await gateway.click(block_actions_payload(gateway.fake.messages[-1], "human"))
    assert (result.status, result.text) == (200, "")

    [same] = await gateway.conversations()
    assert same["id"] == conversation["id"]
    last = (await gateway.messages(conversation["id"]))[-1]
    assert (last["direction"], last["body"]) == ("inbound", "Talk to a person")
    assert last["content_attributes"] == {"button_reply": {"id": "human", "title": "Talk to a person"}}
    assert last["provider_message_id"].startswith("action:")


async def test_a_rate_limited_reply_is_retried_after_slacks_retry_after(gateway: Gateway) -> None:
    assert (await gateway.post(message_event("Hi", ts=ROOT_TS))).status == 200
    [conversation] = await gateway.conversations()
    gateway.fake.fail_next("ratelimited", status=429, retry_after=1)
    started = asyncio.get_running_loop().time()

    sent = await gateway.reply(conversation["id"], {"body": "Thanks for waiting"})
    assert asyncio.get_running_loop().time() - started >= 1.0  # Retry-After honoured
    assert sent["attempts"] == 2
    assert len(gateway.fake.calls("chat.postMessage")) == 2
    assert len(gateway.fake.messages) == 1


async def test_a_revoked_token_fails_the_reply_as_a_credentials_problem(gateway: Gateway) -> None:
    assert (await gateway.post(message_event("Hi", ts=ROOT_TS))).status == 200
    [conversation] = await gateway.conversations()
    gateway.fake.fail_next("token_revoked")

    failed = await gateway.reply(conversation["id"], {"body": "Hello"}, until="failed")
    assert failed["error_code"] == "channel_auth"
    assert "token_revoked" in failed["error_message"]
    assert len(gateway.fake.requests) == 1  # not retried


async def test_a_channel_the_app_left_fails_the_reply_with_slacks_reason(gateway: Gateway) -> None:
    assert (await gateway.post(message_event("Hi", ts=ROOT_TS))).status == 200
    [conversation] = await gateway.conversations()
    gateway.fake.fail_next("not_in_channel")

    failed = await gateway.reply(conversation["id"], {"body": "Hello"}, until="failed")
    assert failed["error_code"] == "not_in_channel"
    assert "/invite" in failed["error_message"]


async def test_slack_signing_secret_is_required_to_create_the_inbox(gateway: Gateway) -> None:
    config = {
        "name": "Half configured",
        "channel": "slack",
        "settings": {},
        "secrets": {"bot_token": gateway.fake.token, "signing_secret": "Jhj5dZrVaK7ZwHHjRyZWjbDl"},
    }
    status, body = await gateway.api("POST", "/inboxes", config)
    assert status == 422
    assert "signing_secret" in json.dumps(body)
    assert "Jhj5dZrVaK7ZwHHjRyZWjbDl" not in json.dumps(body)  # secrets are never echoed


async def test_an_agent_can_reopen_a_thread_while_the_customer_has_another_open(gateway: Gateway) -> None:
    assert (await gateway.post(message_event("My order is late", ts=ROOT_TS))).status == 200
    assert (await gateway.post(message_event("And my invoice?", ts=SECOND_ROOT_TS))).status == 200
    first, _ = await gateway.conversations()
    assert (await gateway.api("PATCH", f"/conversations/{first['id']}", {"status": "resolved"}))[0] == 200
    # The other thread of the same customer is still open: threads are separate conversations.
    status, reopened = await gateway.api("PATCH", f"/conversations/{first['id']}", {"status": "open"})
    assert status == 200, reopened
    assert reopened["status"] == "open" and reopened["resolved_at"] is None


async def test_shared_files_are_copied_with_the_bot_token_into_the_media_store(gateway: Gateway) -> None:
    envelope = load_fixture("message__file_share")
    photo, receipt, _hidden_by_plan = envelope["event"]["files"]
    photo["url_private"] = gateway.fake.add_file(b"\xff\xd8\xff box", "damaged-box.jpg", "image/jpeg")
    receipt["url_private"] = gateway.fake.add_file(b"%PDF-1.4", "receipt-1042.pdf", "application/pdf")

    assert (await gateway.post(envelope)).status == 200

    async def copied() -> list[dict[str, Any]]:
        async with gateway.db.sessionmaker() as session:
            message = (await session.execute(select(Message))).scalar_one_or_none()
        return [] if message is None else list(message.attachments)

    await eventually(lambda: _all_copied(copied))
    first, second = await copied()
    assert (first["filename"], first["content_type"]) == ("damaged-box.jpg", "image/jpeg")
    async with gateway.client.get("/media/" + second["url"].partition("/media/")[2]) as response:
        assert await response.read() == b"%PDF-1.4"


async def _all_copied(attachments: Callable[[], Awaitable[list[dict[str, Any]]]]) -> bool:
    found = await attachments()
    return bool(found) and all("media_key" in a for a in found)


async def test_slacks_sign_in_page_instead_of_a_file_is_a_credentials_error(gateway: Gateway) -> None:
    envelope = load_fixture("message__file_share")
    url = gateway.fake.add_file(b"\xff\xd8\xff box", "damaged-box.jpg", "image/jpeg")
    envelope["event"]["files"] = [envelope["event"]["files"][0] | {"url_private": url}]
    gateway.fake.token = "xoxb-rotated-0000000000-0000000000000-aaaaaaaaaaaaaaaaaaaaaaaa"

    assert (await gateway.post(envelope)).status == 200

    async def settled() -> bool:
        async with gateway.db.sessionmaker() as session:
            message = (await session.execute(select(Message))).scalar_one_or_none()
        return message is not None and "error" in message.attachments[0]

    await eventually(settled)
    async with gateway.db.sessionmaker() as session:
        (attachment,) = (await session.execute(select(Message))).scalar_one().attachments
    assert "sign-in page" in attachment["error"] and "media_key" not in attachment
