"""SMS through the whole gateway, on both databases: signed webhooks in, replies out via the fake Twilio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, text, update

from channels.base import Button
from crm_core.models import ChannelIdentity, Consent, Contact
from gateway.app import create_app
from gateway.keys import NOTIFIER
from inbox.models import Conversation, Message
from inbox.service import queue_outbound
from parley.db import Database
from parley.models import OutboxEvent
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant, make_twilio_inbox, message_row
from tests.fakes.twilio_api import FakeTwilioApi, load_fixture, post_signed


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    inbox_id: int
    fake: FakeTwilioApi
    base_url: str

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/webhooks/{self.inbox_id}"

    async def post(self, params: Any, *, route: str = "", signature: str | None = None) -> tuple[int, str]:
        url = f"{self.webhook_url}/{route}" if route else self.webhook_url
        async with aiohttp.ClientSession() as session:
            result = await post_signed(session, url, params, self.fake.auth_token, signature=signature)
        return result.status, result.text

    async def count(self, model: Any) -> int:
        async with self.db.sessionmaker() as session:
            return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


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


def inbound_sms(*, sid: str, body: str | None = None) -> list[tuple[str, str]]:
    """The documented inbound SMS with another MessageSid (and body)."""
    sids = ("MessageSid", "SmsSid", "SmsMessageSid")
    return [
        (k, sid if k in sids else body if k == "Body" and body is not None else v)
        for k, v in load_fixture("inbound__sms")
    ]


async def reply(gw: Gateway, body: str) -> int:
    """Queue an agent reply in the only conversation and wake the dispatcher, as the API does."""
    async with gw.db.transaction() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        message = await queue_outbound(
            session, conversation, body=body, sender_type="user", sender_id=gw.tenant.user_id
        )
    gw.client.app[NOTIFIER].notify()
    return message.id


async def test_signed_sms_creates_contact_conversation_and_message(gateway: Gateway) -> None:
    status, body = await gateway.post(load_fixture("inbound__sms"))
    assert status == 200
    assert "<Response" in body  # empty TwiML: Parley answers in its own time, not by TwiML

    async with gateway.db.sessionmaker() as session:
        contact = (await session.execute(select(Contact))).scalar_one()
        identity = (await session.execute(select(ChannelIdentity))).scalar_one()
        conversation = (await session.execute(select(Conversation))).scalar_one()
        message = (await session.execute(select(Message))).scalar_one()
        # Routing may already have queued the conversation (nobody is online): not the pipeline's doing.
        topics = sorted(
            (
                await session.execute(
                    select(OutboxEvent.topic).where(OutboxEvent.topic != "conversation.queued")
                )
            )
            .scalars()
            .all()
        )
    assert (identity.kind, identity.address, identity.contact_id) == ("phone", "+14155550100", contact.id)
    assert contact.phone == "+14155550100" and contact.tenant_id == gateway.tenant.tenant_id
    assert (conversation.contact_id, conversation.inbox_id, conversation.status) == (
        contact.id,
        gateway.inbox_id,
        "open",
    )
    assert message.body == "Hi, is my order on its way?"
    assert (message.direction, message.status, message.provider_message_id) == (
        "inbound",
        "received",
        "SM1f0e8ae6ade43cb3c0ce4525424e404f",
    )
    assert message.extra["FromCity"] == "SAN FRANCISCO"
    assert topics == ["contact.created", "conversation.opened", "message.received"]


async def test_second_message_joins_the_open_conversation(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("inbound__sms")))[0] == 200
    assert (await gateway.post(inbound_sms(sid="SM" + "2" * 32)))[0] == 200
    assert await gateway.count(Contact) == 1
    assert await gateway.count(Conversation) == 1
    assert await gateway.count(Message) == 2


async def test_same_message_sid_posted_20_times_concurrently_is_stored_once(gateway: Gateway) -> None:
    params = load_fixture("inbound__sms")
    results = await asyncio.gather(*(gateway.post(params) for _ in range(20)))
    assert [status for status, _ in results] == [200] * 20
    assert await gateway.count(Message) == 1
    assert await gateway.count(Contact) == 1
    assert await gateway.count(Conversation) == 1
    async with gateway.db.sessionmaker() as session:
        received = (
            await session.execute(select(func.count()).where(OutboxEvent.topic == "message.received"))
        ).scalar_one()
    assert received == 1


@pytest.mark.parametrize("signature", ["", "c2lnbmVkIGJ5IHNvbWVvbmUgZWxzZQ=="])
async def test_unsigned_or_wrongly_signed_webhook_is_rejected_and_stores_nothing(
    gateway: Gateway, signature: str
) -> None:
    status, body = await gateway.post(load_fixture("inbound__sms"), signature=signature)
    assert status == 403
    assert '"invalid_signature"' in body
    for model in (Message, Contact, Conversation, OutboxEvent):
        assert await gateway.count(model) == 0


async def test_signature_for_a_tampered_body_is_rejected(gateway: Gateway) -> None:
    from tests.fakes.twilio_api import sign

    params = load_fixture("inbound__sms")
    good = sign(gateway.webhook_url, params, gateway.fake.auth_token)
    tampered = [(k, "Send me your password" if k == "Body" else v) for k, v in params]
    status, _ = await gateway.post(tampered, signature=good)
    assert status == 403
    assert await gateway.count(Message) == 0


async def test_signed_but_malformed_webhook_is_a_400_and_stores_nothing(gateway: Gateway) -> None:
    status, body = await gateway.post(load_fixture("malformed__no_from"))
    assert status == 400
    assert '"malformed_payload"' in body
    assert await gateway.count(Message) == 0


async def test_unknown_inbox_is_a_404(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gateway.base_url}/webhooks/999999", data={"From": "+1"}) as response:
            assert response.status == 404
        async with session.post(f"{gateway.base_url}/webhooks/not-a-number", data={"From": "+1"}) as response:
            assert response.status == 404
        for odd in ("²", "99999999999999999999999", "-1"):  # never a 500 from int() or a 64-bit overflow
            async with session.post(f"{gateway.base_url}/webhooks/{odd}", data={"From": "+1"}) as response:
                assert response.status == 404, odd


async def test_database_failure_answers_5xx_writes_nothing_and_the_retry_succeeds(gateway: Gateway) -> None:
    params = load_fixture("inbound__sms")
    async with gateway.db.transaction() as session:
        await session.execute(text("ALTER TABLE messages RENAME TO messages_away"))
    status, body = await gateway.post(params)
    assert status == 503
    assert '"database_unavailable"' in body
    assert await gateway.count(Contact) == 0  # the contact created before the failure was rolled back
    assert await gateway.count(Conversation) == 0
    async with gateway.db.transaction() as session:
        await session.execute(text("ALTER TABLE messages_away RENAME TO messages"))
    # The provider retries; a stale prepared statement may cost one more 5xx, never a duplicate.
    for _ in range(3):
        status, _ = await gateway.post(params)
        if status == 200:
            break
    assert status == 200
    assert await gateway.count(Message) == 1


async def test_reply_goes_out_through_twilio_and_callbacks_move_it_to_delivered(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("inbound__sms")))[0] == 200
    message_id = await reply(gateway, "It ships tomorrow.")

    async def sent() -> bool:
        return (await message_row(gateway.db, message_id)).status == "sent"

    await eventually(sent)
    message = await message_row(gateway.db, message_id)
    request = gateway.fake.requests[-1]
    assert request["To"] == ["+14155550100"]
    assert request["From"] == ["+15017122661"]
    assert request["Body"] == ["It ships tomorrow."]
    assert request["StatusCallback"] == [f"{gateway.webhook_url}/status"]
    assert message.provider_message_id in gateway.fake.messages

    assert await gateway.fake.send_status(message.provider_message_id, "sent") == 200
    assert await gateway.fake.send_status(message.provider_message_id, "delivered") == 200
    assert (await message_row(gateway.db, message_id)).status == "delivered"
    # A late "sent" callback does not move it back.
    assert await gateway.fake.send_status(message.provider_message_id, "sent") == 200
    assert (await message_row(gateway.db, message_id)).status == "delivered"


async def test_undelivered_callback_marks_the_message_failed_with_the_reason(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("inbound__sms")))[0] == 200
    message_id = await reply(gateway, "Hello?")

    async def sent() -> bool:
        return (await message_row(gateway.db, message_id)).provider_message_id is not None

    await eventually(sent)
    sid = (await message_row(gateway.db, message_id)).provider_message_id
    assert sid is not None
    assert await gateway.fake.send_status(sid, "undelivered", error_code=30003) == 200
    message = await message_row(gateway.db, message_id)
    assert (message.status, message.error_code) == ("failed", "30003")
    assert message.error_message and "unreachable" in message.error_message.lower()


async def test_a_429_is_retried_after_the_providers_retry_after(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("inbound__sms")))[0] == 200
    gateway.fake.fail_next(429, code=20429, message="Too Many Requests", retry_after=1)
    started = asyncio.get_running_loop().time()
    message_id = await reply(gateway, "Thanks for waiting")

    async def sent() -> bool:
        return (await message_row(gateway.db, message_id)).status == "sent"

    await eventually(sent)
    assert asyncio.get_running_loop().time() - started >= 1.0  # Retry-After honoured
    assert len(gateway.fake.requests) == 2
    assert len(gateway.fake.messages) == 1
    assert (await message_row(gateway.db, message_id)).attempts == 2


async def test_a_permanent_error_marks_the_message_failed_with_the_providers_reason(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("inbound__sms")))[0] == 200
    gateway.fake.fail_next(
        400, code=21211, message="The 'To' number +14155550100 is not a valid phone number."
    )
    message_id = await reply(gateway, "Hi")

    async def failed() -> bool:
        return (await message_row(gateway.db, message_id)).status == "failed"

    await eventually(failed)
    message = await message_row(gateway.db, message_id)
    assert message.error_code == "21211"
    assert message.error_message and "not a valid phone number" in message.error_message
    assert len(gateway.fake.requests) == 1  # not retried


async def test_stop_blocks_later_replies_and_start_allows_them_again(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("inbound__stop")))[0] == 200
    async with gateway.db.sessionmaker() as session:
        consent = (await session.execute(select(Consent))).scalar_one()
    assert (consent.channel, consent.granted) == ("sms", False)

    blocked = await reply(gateway, "One more offer!")

    async def failed() -> bool:
        return (await message_row(gateway.db, blocked)).status == "failed"

    await eventually(failed)
    message = await message_row(gateway.db, blocked)
    assert message.error_code == "opted_out"
    assert message.error_message and "opted out" in message.error_message
    assert gateway.fake.requests == []  # nothing reached the provider

    assert (await gateway.post(load_fixture("inbound__start")))[0] == 200
    allowed = await reply(gateway, "Welcome back")

    async def sent() -> bool:
        return (await message_row(gateway.db, allowed)).status == "sent"

    await eventually(sent)
    assert len(gateway.fake.requests) == 1


async def test_a_status_callback_that_overtakes_the_send_is_applied_once_the_sid_is_stored(
    gateway: Gateway,
) -> None:
    assert (await gateway.post(load_fixture("inbound__sms")))[0] == 200
    callback = load_fixture("status__delivered")
    sid = dict(callback)["MessageSid"]
    async with gateway.db.transaction() as session:  # a reply whose send is still in flight
        conversation = (await session.execute(select(Conversation))).scalar_one()
        message = Message(
            tenant_id=conversation.tenant_id,
            inbox_id=conversation.inbox_id,
            conversation_id=conversation.id,
            direction="outbound",
            sender_type="user",
            body="On its way",
            status="queued",
        )
        session.add(message)
    assert (await gateway.post(callback, route="status"))[0] == 200
    assert (await message_row(gateway.db, message.id)).status == "queued"

    async with gateway.db.transaction() as session:  # the worker records Twilio's answer
        await session.execute(
            update(Message).where(Message.id == message.id).values(provider_message_id=sid, status="sent")
        )

    async def delivered() -> bool:
        return (await message_row(gateway.db, message.id)).status == "delivered"

    await eventually(delivered)


async def test_a_status_for_a_message_parley_never_sent_is_acknowledged_and_changes_nothing(
    gateway: Gateway,
) -> None:
    status, _ = await gateway.post(load_fixture("status__delivered"), route="status")
    assert status == 200
    assert await gateway.count(Message) == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"Body=\xff\xfe&From=%2B14155550100", "application/x-www-form-urlencoded"),
        (b"Body=hi&From=%2B14155550100", "application/x-www-form-urlencoded; charset=klingon"),
    ],
)
async def test_an_undecodable_form_body_is_a_400_not_a_crash(
    gateway: Gateway, body: bytes, content_type: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.webhook_url, data=body, headers={"Content-Type": content_type, "X-Twilio-Signature": "x"}
        ) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "malformed_payload"
    assert await gateway.count(Message) == 0


async def test_an_oversized_webhook_is_a_413(gateway: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.webhook_url,
            data=b"Body=" + b"a" * (6 * 1024 * 1024),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response,
    ):
        assert response.status == 413
    assert await gateway.count(Message) == 0


async def test_buttons_become_a_numbered_list_on_sms_and_a_number_picks_one(gateway: Gateway) -> None:
    assert (await gateway.post(load_fixture("inbound__sms")))[0] == 200
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
    gateway.client.app[NOTIFIER].notify()

    async def sent() -> bool:
        return (await message_row(gateway.db, offer.id)).status == "sent"

    await eventually(sent)
    assert gateway.fake.requests[-1]["Body"] == [
        "How can we help?\n\n1. Track my order\n2. Talk to a person\n\nReply with a number."
    ]

    assert (await gateway.post(inbound_sms(sid="SM" + "7" * 32, body="2 ")))[0] == 200
    async with gateway.db.sessionmaker() as session:
        reply = (await session.execute(select(Message).order_by(Message.id.desc()).limit(1))).scalar_one()
    assert reply.body == "2 "
    assert reply.content_attributes["button_reply"] == {"id": "human", "title": "Talk to a person"}

    # A number that picks nothing stays plain text.
    assert (await gateway.post(inbound_sms(sid="SM" + "8" * 32, body="7")))[0] == 200
    async with gateway.db.sessionmaker() as session:
        last = (await session.execute(select(Message).order_by(Message.id.desc()).limit(1))).scalar_one()
    assert last.body == "7" and "button_reply" not in last.content_attributes


async def test_sms_webhooks_have_no_get_handshake(gateway: Gateway) -> None:
    url = f"{gateway.webhook_url}?hub.challenge=1"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 405


# Server-side connection loss is a PostgreSQL matter: SQLite has no server.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_gateway_recovers_when_postgresql_drops_its_connections(gateway: Gateway) -> None:
    assert (await gateway.post(inbound_sms(sid="SM" + "1" * 32)))[0] == 200  # pooled connections exist now
    async with gateway.db.engine.connect() as conn:  # as a restart or an idle timeout would
        terminated = len(
            (
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            ).all()
        )
    statuses = [(await gateway.post(inbound_sms(sid=f"SM{n:032d}")))[0] for n in range(2, 40)]
    assert set(statuses) <= {200, 503}  # a dead connection costs the provider a retry, never a 500
    assert statuses.count(503) <= terminated  # each dead connection fails once and is never reused
    assert statuses[-5:] == [200] * 5
    async with gateway.db.sessionmaker() as session:
        stored = (await session.execute(select(func.count()).select_from(Message))).scalar_one()
    assert stored == 1 + statuses.count(200)


async def _copied_attachments(gw: Gateway, count: int) -> list[dict[str, Any]]:
    """The only message's attachments once the media fetch has dealt with all `count` of them."""

    async def settled() -> bool:
        async with gw.db.sessionmaker() as session:
            message = (await session.execute(select(Message))).scalar_one()
        done = [a for a in message.attachments if "media_key" in a or "error" in a]
        return len(done) == count

    await eventually(settled)
    async with gw.db.sessionmaker() as session:
        return list((await session.execute(select(Message))).scalar_one().attachments)


async def test_mms_media_is_copied_into_the_media_store_and_credentials_stay_with_twilio(
    gateway: Gateway,
) -> None:
    photo = gateway.fake.add_media(b"\xff\xd8\xff jpeg bytes", "image/jpeg")
    elsewhere = "https://cdn.example.net/2010-04-01/Accounts/ACxx/Messages/MM1/Media/ME1"
    params = dict(load_fixture("inbound__mms"))
    params.update(MediaUrl0=photo, MediaUrl1=elsewhere)

    assert (await gateway.post(params))[0] == 200
    first, second = await _copied_attachments(gateway, 2)

    assert first["source_url"] == photo and first["content_type"] == "image/jpeg"
    async with gateway.client.get(first["url"].removeprefix(gateway.base_url)) as response:
        assert response.status == 200 and await response.read() == b"\xff\xd8\xff jpeg bytes"
    # Twilio's API got the account's credentials; the storage it redirected to did not.
    (api_path, api_auth), (storage_path, storage_auth) = gateway.fake.media_requests
    assert api_auth is not None and api_auth.startswith("Basic ") and "/Media/" in api_path
    assert storage_path.startswith("/media-storage/") and storage_auth is None
    # A URL on any other host is never fetched with the account's credentials.
    assert second["url"] == elsewhere and "not this account's media" in second["error"]
    assert "media_key" not in second


async def test_media_twilio_no_longer_has_is_recorded_as_missing_not_retried(gateway: Gateway) -> None:
    gone = gateway.fake.add_media(b"x", "image/png")
    gateway.fake.media.clear()
    params = dict(load_fixture("inbound__mms"))
    params.update(NumMedia="1", MediaUrl0=gone)
    del params["MediaUrl1"], params["MediaContentType1"]

    assert (await gateway.post(params))[0] == 200
    (attachment,) = await _copied_attachments(gateway, 1)

    assert "HTTP 404" in attachment["error"] and attachment["url"] == gone
    assert len(gateway.fake.media_requests) == 1
