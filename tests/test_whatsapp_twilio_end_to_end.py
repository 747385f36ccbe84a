"""WhatsApp via Twilio through the whole gateway, on both databases: inboxes made through the API,
signed webhooks in, replies out via the fake Twilio, and WhatsApp's 24-hour window enforced."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, update

from crm_core.models import ChannelIdentity, Contact
from gateway.app import create_app
from inbox.models import Conversation, Message
from parley.db import Database, utcnow
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant
from tests.fakes.twilio_api import FakeTwilioApi, load_fixture, post_signed

WHATSAPP_NUMBER = "+14155238886"
SMS_NUMBER = "+15017122661"
CUSTOMER = "+14155550100"  # writes from the same number on SMS and on WhatsApp
CONTENT_SID = "HX" + "0123456789abcdef" * 2


def whatsapp(name: str, **changes: str) -> list[tuple[str, str]]:
    """A WhatsApp fixture with some fields changed (a new `sid` goes to all three sid fields)."""
    sid = changes.pop("sid", None)
    if sid is not None:
        changes |= {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid}
    return [(k, changes.get(k, v)) for k, v in load_fixture(name, "twilio_whatsapp")]


@dataclass
class Hub:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    fake: FakeTwilioApi
    base_url: str
    whatsapp_inbox: int

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.client.request(
            method, f"/api/v1{path}", json=body, headers=self.tenant.headers
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def create_inbox(self, channel: str, phone_number: str) -> int:
        status, inbox = await self.api(
            "POST",
            "/inboxes",
            {
                "name": f"{channel} line",
                "channel": channel,
                "settings": {
                    "account_sid": self.fake.account_sid,
                    "phone_number": phone_number,
                    "api_base_url": self.fake.base_url,
                },
                "secrets": {"auth_token": self.fake.auth_token},
            },
        )
        assert status == 201, inbox
        return int(inbox["id"])

    async def post(
        self, params: Any, *, inbox_id: int | None = None, route: str = "", signature: str | None = None
    ) -> int:
        """POST a webhook signed as Twilio would (to the WhatsApp inbox unless told); the status."""
        url = f"{self.base_url}/webhooks/{inbox_id or self.whatsapp_inbox}" + (f"/{route}" if route else "")
        async with aiohttp.ClientSession() as session:
            result = await post_signed(session, url, params, self.fake.auth_token, signature=signature)
        return result.status

    async def count(self, model: Any, *where: Any) -> int:
        async with self.db.sessionmaker() as session:
            stmt = select(func.count()).select_from(model).where(*where)
            return int((await session.execute(stmt)).scalar_one())

    async def conversation(self) -> int:
        async with self.db.sessionmaker() as session:
            return int(
                (
                    await session.execute(
                        select(Conversation.id).where(Conversation.inbox_id == self.whatsapp_inbox)
                    )
                ).scalar_one()
            )

    async def message(self, message_id: int) -> Message:
        async with self.db.sessionmaker() as session:
            return (await session.execute(select(Message).where(Message.id == message_id))).scalar_one()

    async def reply(self, conversation_id: int, body: dict[str, Any]) -> int:
        """Reply through the API and wait until the dispatcher has handed it to Twilio."""
        status, message = await self.api("POST", f"/conversations/{conversation_id}/messages", body)
        assert status == 201, message

        async def handed_over() -> bool:
            return (await self.message(message["id"])).status != "queued"

        await eventually(handed_over)
        return int(message["id"])

    async def last_messages(self, conversation_id: int) -> list[dict[str, Any]]:
        status, page = await self.api("GET", f"/conversations/{conversation_id}/messages?order=desc")
        assert status == 200, page
        return list(page["data"])


@pytest_asyncio.fixture
async def hub(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_twilio: FakeTwilioApi,
) -> AsyncIterator[Hub]:
    tenant = await make_tenant(db, "acme")
    client = await aiohttp_client(
        create_app(settings), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    hub = Hub(client, db, tenant, fake_twilio, f"http://127.0.0.1:{public_port}", 0)
    hub.whatsapp_inbox = await hub.create_inbox("twilio_whatsapp", f"whatsapp:{WHATSAPP_NUMBER}")
    yield hub


async def test_the_inbox_stores_its_sender_without_the_prefix(hub: Hub) -> None:
    status, inbox = await hub.api("GET", f"/inboxes/{hub.whatsapp_inbox}")
    assert status == 200
    assert (inbox["channel"], inbox["settings"]["phone_number"]) == ("twilio_whatsapp", WHATSAPP_NUMBER)


async def test_signed_whatsapp_message_creates_contact_conversation_and_message(hub: Hub) -> None:
    assert await hub.post(load_fixture("inbound__text", "twilio_whatsapp")) == 200
    async with hub.db.sessionmaker() as session:
        contact = (await session.execute(select(Contact))).scalar_one()
        identity = (await session.execute(select(ChannelIdentity))).scalar_one()
        conversation = (await session.execute(select(Conversation))).scalar_one()
        message = (await session.execute(select(Message))).scalar_one()
    assert (identity.kind, identity.address, identity.contact_id) == ("phone", CUSTOMER, contact.id)
    assert (contact.phone, contact.name) == (CUSTOMER, "Ann Example")
    assert (conversation.inbox_id, conversation.contact_id) == (hub.whatsapp_inbox, contact.id)
    assert (message.direction, message.body, message.provider_message_id) == (
        "inbound",
        "Hi! Where is my order #1042?",
        "SM3c7f1e0b9d2a4c6e8f0a1b2c3d4e5f60",
    )
    assert message.extra["WaId"] == "14155550100"


async def test_unsigned_whatsapp_webhook_is_refused_and_stores_nothing(hub: Hub) -> None:
    assert await hub.post(load_fixture("inbound__text", "twilio_whatsapp"), signature="") == 403
    assert await hub.count(Message) == 0


async def test_the_same_number_on_sms_and_whatsapp_is_one_contact(hub: Hub) -> None:
    sms_inbox = await hub.create_inbox("twilio_sms", SMS_NUMBER)
    assert await hub.post(load_fixture("inbound__sms"), inbox_id=sms_inbox) == 200
    assert await hub.post(load_fixture("inbound__text", "twilio_whatsapp")) == 200

    assert await hub.count(Contact) == 1
    async with hub.db.sessionmaker() as session:
        identity = (await session.execute(select(ChannelIdentity))).scalar_one()
        conversations = (
            (await session.execute(select(Conversation).order_by(Conversation.id))).scalars().all()
        )
    assert (identity.kind, identity.address) == ("phone", CUSTOMER)
    assert [c.inbox_id for c in conversations] == [sms_inbox, hub.whatsapp_inbox]
    assert {c.contact_id for c in conversations} == {identity.contact_id}
    assert {c.identity_id for c in conversations} == {identity.id}


async def test_typed_content_is_kept_through_the_gateway(hub: Hub) -> None:
    assert await hub.post(load_fixture("inbound__location", "twilio_whatsapp")) == 200
    assert await hub.post(load_fixture("inbound__button_reply", "twilio_whatsapp")) == 200
    quick_reply, location = await hub.last_messages(await hub.conversation())
    assert location["body"] == "Ferry Building Marketplace, 1 Ferry Building, San Francisco, CA 94111"
    assert location["content_attributes"]["location"] == {
        "latitude": 37.7955,
        "longitude": -122.3937,
        "name": "Ferry Building Marketplace",
        "address": "1 Ferry Building, San Francisco, CA 94111",
    }
    assert quick_reply["content_attributes"]["button_reply"] == {"id": "human", "title": "Talk to a person"}


async def test_a_reply_within_24_hours_goes_out_on_whatsapp_and_read_applies(hub: Hub) -> None:
    assert await hub.post(load_fixture("inbound__text", "twilio_whatsapp")) == 200
    message_id = await hub.reply(await hub.conversation(), {"body": "It ships tomorrow."})

    message = await hub.message(message_id)
    assert message.status == "sent"
    assert hub.fake.requests == [
        {
            "To": [f"whatsapp:{CUSTOMER}"],
            "From": [f"whatsapp:{WHATSAPP_NUMBER}"],
            "Body": ["It ships tomorrow."],
            "StatusCallback": [f"{hub.base_url}/webhooks/{hub.whatsapp_inbox}/status"],
        }
    ]
    assert message.provider_message_id is not None
    assert await hub.fake.send_status(message.provider_message_id, "delivered") == 200
    assert await hub.fake.send_status(message.provider_message_id, "read") == 200
    assert (await hub.message(message_id)).status == "read"


async def test_a_failed_callback_outside_the_window_says_to_send_a_template(hub: Hub) -> None:
    assert await hub.post(load_fixture("inbound__text", "twilio_whatsapp")) == 200
    message_id = await hub.reply(await hub.conversation(), {"body": "Still there?"})
    sid = (await hub.message(message_id)).provider_message_id
    assert sid is not None
    assert await hub.fake.send_status(sid, "failed", error_code=63016) == 200
    message = await hub.message(message_id)
    assert (message.status, message.error_code) == ("failed", "63016")
    assert message.error_message and "send a template" in message.error_message


async def test_after_24_hours_only_a_template_is_accepted(hub: Hub) -> None:
    assert await hub.post(load_fixture("inbound__text", "twilio_whatsapp")) == 200
    conversation_id = await hub.conversation()
    async with hub.db.transaction() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(last_inbound_at=utcnow() - timedelta(hours=25))
        )

    status, body = await hub.api(
        "POST", f"/conversations/{conversation_id}/messages", {"body": "Are you still there?"}
    )
    assert status == 422
    assert body["error"]["code"] == "outside_reply_window"
    assert await hub.count(Message, Message.direction == "outbound") == 0
    assert hub.fake.requests == []

    template = {"name": CONTENT_SID, "variables": {"1": "Ann"}}
    message_id = await hub.reply(conversation_id, {"template": template})
    assert (await hub.message(message_id)).status == "sent"
    assert hub.fake.requests == [
        {
            "To": [f"whatsapp:{CUSTOMER}"],
            "From": [f"whatsapp:{WHATSAPP_NUMBER}"],
            "ContentSid": [CONTENT_SID],
            "ContentVariables": ['{"1": "Ann"}'],
            "StatusCallback": [f"{hub.base_url}/webhooks/{hub.whatsapp_inbox}/status"],
        }
    ]


async def test_buttons_arrive_as_a_numbered_list_and_the_customers_number_picks_one(hub: Hub) -> None:
    assert await hub.post(load_fixture("inbound__text", "twilio_whatsapp")) == 200
    conversation_id = await hub.conversation()
    buttons = [{"id": "track", "title": "Track my order"}, {"id": "human", "title": "Talk to a person"}]
    await hub.reply(conversation_id, {"body": "How can we help?", "buttons": buttons})
    assert hub.fake.requests[-1]["Body"] == [
        "How can we help?\n\n1. Track my order\n2. Talk to a person\n\nReply with a number."
    ]

    assert await hub.post(whatsapp("inbound__text", sid="SM" + "2" * 32, Body="2")) == 200
    [answer, *_] = await hub.last_messages(conversation_id)
    assert (answer["direction"], answer["body"]) == ("inbound", "2")
    assert answer["content_attributes"]["button_reply"] == {"id": "human", "title": "Talk to a person"}
