"""WhatsApp Cloud API through the whole gateway, on both databases: Meta's webhooks in, replies out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, update

from channels.whatsapp_cloud import DEFAULT_API_VERSION
from crm_core.models import ChannelIdentity, Contact
from gateway.app import create_app
from inbox.models import Conversation, Message
from parley.db import Database, utcnow
from parley.models import OutboxEvent
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant, make_twilio_inbox, message_row
from tests.fakes.twilio_api import FakeTwilioApi, post_signed
from tests.fakes.twilio_api import load_fixture as load_twilio_fixture
from tests.fakes.whatsapp_cloud_api import (
    FakeWhatsAppCloudApi,
    button_reply_message,
    fake_whatsapp_cloud,
    fixture_payload,
    inbound_payload,
    load_fixture,
    post_webhook,
    sign_body,
    text_message,
)

__all__ = ["fake_whatsapp_cloud"]  # the fixture, imported so pytest finds it here

TEXT_WAMID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    inbox_id: int
    fake: FakeWhatsAppCloudApi
    base_url: str

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/webhooks/{self.inbox_id}"

    async def post(
        self, payload: Mapping[str, Any] | bytes, *, signature: str | None = None, signed: bool = True
    ) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            result = await post_webhook(
                session, self.webhook_url, payload, self.fake.app_secret, signature=signature, signed=signed
            )
        return result.status, result.text

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

    async def conversation_id(self) -> int:
        async with self.db.sessionmaker() as session:
            return int((await session.execute(select(Conversation.id))).scalar_one())


@pytest_asyncio.fixture
async def gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> AsyncIterator[Gateway]:
    tenant = await make_tenant(db, "acme")
    client = await aiohttp_client(
        create_app(settings), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    fake = fake_whatsapp_cloud
    async with client.post(
        "/api/v1/inboxes",
        json={
            "name": "WhatsApp support",
            "channel": "whatsapp_cloud",
            "settings": {
                "phone_number_id": fake.phone_number_id,
                "waba_id": fake.waba_id,
                "api_base_url": fake.base_url,
            },
            "secrets": {
                "access_token": fake.access_token,
                "app_secret": fake.app_secret,
                "verify_token": fake.verify_token,
            },
        },
        headers=tenant.headers,
    ) as response:
        inbox = await response.json()
        assert response.status == 201, inbox
    assert inbox["secrets_set"] == ["access_token", "app_secret", "verify_token"]
    # What an admin pastes into Meta's webhook settings.
    fake.subscribe(inbox["webhook_url"])
    yield Gateway(client, db, tenant, int(inbox["id"]), fake, f"http://127.0.0.1:{public_port}")


async def reply(gw: Gateway, body: dict[str, Any], *, until: str = "sent") -> Message:
    """Reply through the API in the only conversation; wait until the message reaches status `until`."""
    status, created = await gw.api("POST", f"/conversations/{await gw.conversation_id()}/messages", body)
    assert status == 201, created
    message_id = int(created["id"])

    async def reached() -> bool:
        return (await message_row(gw.db, message_id)).status == until

    await eventually(reached)
    return await message_row(gw.db, message_id)


async def test_meta_verifies_the_callback_url_with_the_verify_token(gateway: Gateway) -> None:
    assert await gateway.fake.verify_webhook(challenge="1158201444") == (200, "1158201444", "text/plain")
    status, body, _ = await gateway.fake.verify_webhook(verify_token="a-guess")
    assert status == 403
    assert '"invalid_signature"' in body


async def test_signed_text_creates_contact_conversation_and_message(gateway: Gateway) -> None:
    status, body = await gateway.post(load_fixture("message__text"))
    assert (status, body) == (200, "")

    async with gateway.db.sessionmaker() as session:
        contact = (await session.execute(select(Contact))).scalar_one()
        identity = (await session.execute(select(ChannelIdentity))).scalar_one()
        conversation = (await session.execute(select(Conversation))).scalar_one()
        message = (await session.execute(select(Message))).scalar_one()
        topics = sorted(
            (
                await session.execute(
                    select(OutboxEvent.topic).where(
                        OutboxEvent.topic.not_in(["inbox.created", "conversation.queued"])
                    )
                )
            )
            .scalars()
            .all()
        )
    assert (identity.kind, identity.address, identity.contact_id) == ("phone", "+16505551234", contact.id)
    assert (contact.name, contact.phone) == ("Sheena Nelson", "+16505551234")
    assert (conversation.contact_id, conversation.inbox_id, conversation.status) == (
        contact.id,
        gateway.inbox_id,
        "open",
    )
    assert conversation.last_inbound_at is not None
    assert (message.direction, message.status, message.body) == (
        "inbound",
        "received",
        "Does it come in another color?",
    )
    assert message.provider_message_id == TEXT_WAMID
    assert (message.extra["type"], message.extra["timestamp"]) == ("text", "1749416383")
    assert topics == ["contact.created", "conversation.opened", "message.received"]


async def test_a_webhook_with_two_messages_stores_both(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__batch")))[0] == 200
    assert await gateway.count(Message) == 2
    assert await gateway.count(Conversation) == 2
    async with gateway.db.sessionmaker() as session:
        contacts = (await session.execute(select(Contact.name, Contact.phone).order_by(Contact.id))).all()
    assert [tuple(c) for c in contacts] == [
        ("Sheena Nelson", "+16505551234"),
        ("Pablo Morales", "+14155550123"),
    ]


async def test_two_messages_from_a_new_customer_in_one_webhook_make_one_contact(gateway: Gateway) -> None:
    payload = inbound_payload(text_message("Hello"), text_message("Anyone there?"))
    assert (await gateway.post(payload))[0] == 200
    assert (
        await gateway.count(Message),
        await gateway.count(Contact),
        await gateway.count(Conversation),
    ) == (
        2,
        1,
        1,
    )


async def test_same_wamid_posted_10_times_concurrently_is_stored_once(gateway: Gateway) -> None:
    body = load_fixture("message__text")
    results = await asyncio.gather(*(gateway.post(body) for _ in range(10)))
    assert [status for status, _ in results] == [200] * 10
    assert await gateway.count(Message) == 1
    assert await gateway.count(Contact) == 1
    assert await gateway.count(OutboxEvent, OutboxEvent.topic == "message.received") == 1


@pytest.mark.parametrize("forgery", ["unsigned", "wrong", "other_secret", "tampered"])
async def test_unsigned_or_forged_webhooks_are_403_and_store_nothing(gateway: Gateway, forgery: str) -> None:
    body = load_fixture("message__text")
    if forgery == "unsigned":
        status, text = await gateway.post(body, signed=False)
    elif forgery == "wrong":
        status, text = await gateway.post(body, signature="sha256=" + "ab" * 32)
    elif forgery == "other_secret":
        status, text = await gateway.post(body, signature=sign_body(body, "another-apps-secret"))
    else:
        tampered = body.replace(b"Does it come in another color?", b"Send me the admin password!!")
        status, text = await gateway.post(tampered, signature=sign_body(body, gateway.fake.app_secret))
    assert status == 403
    assert '"invalid_signature"' in text
    for model in (Message, Contact, Conversation):
        assert await gateway.count(model) == 0
    assert await gateway.count(OutboxEvent, OutboxEvent.topic != "inbox.created") == 0


async def test_a_signed_but_malformed_webhook_is_400_and_stores_nothing(gateway: Gateway) -> None:
    status, body = await gateway.post(load_fixture("malformed__message_without_id"))
    assert status == 400
    assert '"malformed_payload"' in body
    assert await gateway.count(Message) == 0


async def test_webhooks_for_another_number_or_field_are_acknowledged_and_store_nothing(
    gateway: Gateway,
) -> None:
    assert await gateway.post(load_fixture("message__other_phone_number")) == (200, "")
    assert await gateway.post(load_fixture("unhandled__message_template_status_update")) == (200, "")
    assert await gateway.count(Message) == 0
    assert await gateway.count(Contact) == 0


async def test_reply_goes_out_through_the_cloud_api_and_statuses_apply(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text")))[0] == 200
    message = await reply(gateway, {"body": "Yes, in green and in blue."})
    assert gateway.fake.requests[-1] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+16505551234",
        "type": "text",
        "text": {"preview_url": False, "body": "Yes, in green and in blue."},
    }
    wamid = message.provider_message_id
    assert wamid is not None and wamid in gateway.fake.messages

    assert await gateway.fake.send_status(wamid, "sent") == 200
    assert await gateway.fake.send_status(wamid, "delivered") == 200
    assert (await message_row(gateway.db, message.id)).status == "delivered"
    assert await gateway.fake.send_status(wamid, "read") == 200
    assert (await message_row(gateway.db, message.id)).status == "read"
    # A late "delivered" does not move it back.
    assert await gateway.fake.send_status(wamid, "delivered") == 200
    assert (await message_row(gateway.db, message.id)).status == "read"


async def test_outside_the_24_hours_only_a_template_goes_out(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text")))[0] == 200
    async with gateway.db.transaction() as session:
        await session.execute(update(Conversation).values(last_inbound_at=utcnow() - timedelta(hours=25)))
    conversation_id = await gateway.conversation_id()

    status, body = await gateway.api(
        "POST", f"/conversations/{conversation_id}/messages", {"body": "Are you still interested?"}
    )
    assert status == 422
    assert body["error"]["code"] == "outside_reply_window"
    assert await gateway.count(Message, Message.direction == "outbound") == 0

    message = await reply(
        gateway,
        {
            "body": "Your order #1234 has shipped.",
            "template": {
                "name": "order_update",
                "language": "en_US",
                "variables": {"1": "Sheena", "2": "#1234"},
            },
        },
    )
    assert message.content_attributes["template"]["name"] == "order_update"
    sent = gateway.fake.requests[-1]
    assert (sent["type"], sent["to"]) == ("template", "+16505551234")
    assert sent["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Sheena"}, {"type": "text", "text": "#1234"}],
            }
        ],
    }


async def test_a_re_engagement_failure_from_meta_marks_the_reply_failed_with_the_reason(
    gateway: Gateway,
) -> None:
    # Meta's own clock decides: the send can be refused, or accepted and then reported failed.
    assert (await gateway.post(load_fixture("message__text")))[0] == 200
    gateway.fake.fail_next(
        400,
        131047,
        "(#131047) Re-engagement message",
        details="Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number.",
    )
    refused = await reply(gateway, {"body": "Hello again"}, until="failed")
    assert refused.error_code == "131047"
    assert refused.error_message and "send a template" in refused.error_message
    assert len(gateway.fake.requests) == 1  # not retried

    accepted = await reply(gateway, {"body": "Hello once more"})
    assert accepted.provider_message_id is not None
    assert (
        await gateway.fake.send_status(
            accepted.provider_message_id,
            "failed",
            error_code=131047,
            error_title="Re-engagement message",
            details="Message failed to send because more than 24 hours have passed.",
        )
        == 200
    )
    failed = await message_row(gateway.db, accepted.id)
    assert (failed.status, failed.error_code) == ("failed", "131047")
    assert failed.error_message and "send a template" in failed.error_message


async def test_a_rate_limited_reply_is_retried(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text")))[0] == 200
    gateway.fake.fail_next(400, 130429, "(#130429) Rate limit hit", retry_after=1)
    started = asyncio.get_running_loop().time()
    message = await reply(gateway, {"body": "Thanks for waiting"})
    assert asyncio.get_running_loop().time() - started >= 1.0
    assert (message.attempts, len(gateway.fake.requests), len(gateway.fake.messages)) == (2, 2, 1)


async def test_a_pressed_reply_button_is_stored_as_a_button_reply(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text")))[0] == 200
    offer = await reply(
        gateway,
        {
            "body": "Which colour would you like?",
            "buttons": [{"id": "green", "title": "Green"}, {"id": "blue", "title": "Blue"}],
        },
    )
    sent = gateway.fake.requests[-1]
    assert sent["type"] == "interactive" and sent["interactive"]["type"] == "button"
    assert offer.provider_message_id is not None

    pressed = button_reply_message("blue", "Blue", context_wamid=offer.provider_message_id)
    assert (await gateway.post(inbound_payload(pressed)))[0] == 200
    status, page = await gateway.api("GET", f"/conversations/{await gateway.conversation_id()}/messages")
    assert status == 200
    last = page["data"][-1]
    assert (last["direction"], last["body"]) == ("inbound", "Blue")
    assert last["content_attributes"]["button_reply"] == {"id": "blue", "title": "Blue"}
    assert last["provider_message_id"] == pressed["id"]


async def test_a_location_and_an_unsupported_message_are_stored_readably(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__location")))[0] == 200
    assert (await gateway.post(load_fixture("message__unsupported")))[0] == 200
    status, page = await gateway.api("GET", f"/conversations/{await gateway.conversation_id()}/messages")
    assert status == 200
    location, unsupported = page["data"]
    assert location["body"].startswith("Location: Philz Coffee")
    assert location["content_attributes"]["location"]["name"] == "Philz Coffee"
    assert unsupported["body"] == "[unsupported message type: poll_creation]"


async def test_an_image_is_stored_with_its_graph_media_url(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__image")))[0] == 200
    async with gateway.db.sessionmaker() as session:
        message = (await session.execute(select(Message))).scalar_one()
    assert message.body == "The best succulent ever?"
    assert message.attachments == [
        {
            "url": f"{gateway.fake.base_url}/{DEFAULT_API_VERSION}/1003383421387256",
            "content_type": "image/jpeg",
            "filename": None,
            "size": None,
        }
    ]


async def test_the_same_person_on_sms_and_whatsapp_is_one_contact(
    gateway: Gateway, fake_twilio: FakeTwilioApi
) -> None:
    sms_inbox = await make_twilio_inbox(
        gateway.db,
        gateway.tenant.tenant_id,
        fake_twilio.base_url,
        fake_twilio.account_sid,
        fake_twilio.auth_token,
    )
    sms = [(k, "+16505551234" if k == "From" else v) for k, v in load_twilio_fixture("inbound__sms")]
    async with aiohttp.ClientSession() as session:
        result = await post_signed(
            session, f"{gateway.base_url}/webhooks/{sms_inbox}", sms, fake_twilio.auth_token
        )
    assert result.status == 200
    assert (await gateway.post(load_fixture("message__text")))[0] == 200

    assert await gateway.count(Contact) == 1
    assert await gateway.count(ChannelIdentity) == 1
    async with gateway.db.sessionmaker() as session:
        inboxes = sorted((await session.execute(select(Conversation.inbox_id))).scalars())
    assert inboxes == sorted([sms_inbox, gateway.inbox_id])


async def test_a_status_for_a_message_parley_never_sent_is_acknowledged(gateway: Gateway) -> None:
    assert await gateway.post(load_fixture("status__delivered")) == (200, "")
    assert await gateway.count(Message) == 0
    payload = fixture_payload("status__read")
    assert (await gateway.post(payload))[0] == 200


async def test_text_too_long_to_go_with_buttons_is_refused_by_the_api(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("message__text")))[0] == 200
    path = f"/conversations/{await gateway.conversation_id()}/messages"
    long_text = "x" * 1100  # WhatsApp allows 1024 characters in an interactive message's body
    status, answer = await gateway.api(
        "POST", path, {"body": long_text, "buttons": [{"id": "a", "title": "A"}]}
    )
    assert (status, answer["error"]["code"]) == (422, "message_too_long")
    status, _ = await gateway.api("POST", path, {"body": long_text})  # without buttons it is a text message
    assert status == 201


async def test_an_inbound_image_is_downloaded_into_the_media_store_after_the_webhook_is_answered(
    gateway: Gateway,
) -> None:
    media_id = gateway.fake.add_media(b"\xff\xd8\xff succulent", "image/jpeg")
    payload = fixture_payload("message__image")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["image"]["id"] = media_id
    # The first try meets a Graph API outage: the copy is retried, the message is already stored.
    gateway.fake.fail_next(503, 2, "Service temporarily unavailable")

    assert (await gateway.post(payload))[0] == 200

    async def copied() -> bool:
        async with gateway.db.sessionmaker() as session:
            message = (await session.execute(select(Message))).scalar_one()
        return "media_key" in message.attachments[0]

    await eventually(copied)
    conversation_id = await gateway.conversation_id()
    status, page = await gateway.api("GET", f"/conversations/{conversation_id}/messages")
    assert status == 200
    (attachment,) = page["data"][0]["attachments"]
    assert attachment["content_type"] == "image/jpeg" and attachment["size"] == len(b"\xff\xd8\xff succulent")
    async with gateway.client.get(attachment["url"].removeprefix(gateway.base_url)) as response:
        assert await response.read() == b"\xff\xd8\xff succulent"
    assert len([path for path in gateway.fake.media_requests if media_id in path]) >= 3  # failed, info, bytes


async def _second_number(gw: Gateway, *, app_secret: str, tenant: TenantAccess | None = None) -> int:
    """Another business number (of the same Meta app unless `app_secret` differs), as its own inbox."""
    who = tenant or gw.tenant
    async with gw.client.post(
        "/api/v1/inboxes",
        json={
            "name": "WhatsApp sales",
            "channel": "whatsapp_cloud",
            "settings": {"phone_number_id": "109874532118234", "api_base_url": gw.fake.base_url},
            "secrets": {"access_token": gw.fake.access_token, "app_secret": app_secret, "verify_token": "v2"},
        },
        headers=who.headers,
    ) as response:
        inbox = await response.json()
        assert response.status == 201, inbox
    return int(inbox["id"])


async def test_changes_for_the_apps_other_number_reach_that_numbers_inbox(gateway: Gateway) -> None:
    # Meta has one callback URL per app: the second number's messages arrive on the first's URL.
    sales = await _second_number(gateway, app_secret=gateway.fake.app_secret)

    assert await gateway.post(load_fixture("message__other_phone_number")) == (200, "")
    assert await gateway.post(load_fixture("message__other_phone_number")) == (200, "")  # Meta retrying

    async with gateway.db.sessionmaker() as session:
        stored = (await session.execute(select(Message.inbox_id, Message.provider_message_id))).all()
    assert stored == [(sales, "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQU9USEVSTlVNQkVSMTIzNDU2AA=")]


async def test_another_apps_or_tenants_inbox_for_that_number_gets_nothing(gateway: Gateway) -> None:
    await _second_number(gateway, app_secret="f" * 32)  # the same number, claimed by another app
    other_tenant = await make_tenant(gateway.db, "globex")
    await _second_number(gateway, app_secret=gateway.fake.app_secret, tenant=other_tenant)

    assert await gateway.post(load_fixture("message__other_phone_number")) == (200, "")
    assert await gateway.count(Message) == 0
