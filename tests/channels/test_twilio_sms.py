"""The Twilio SMS adapter: signed fixtures in, normalised events out; sends go through the SDK to a fake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import MultiDict, MultiDictProxy

from channels.base import (
    Address,
    Attachment,
    ChannelAuthError,
    ConfigurationError,
    DeliveryStatus,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    SignatureError,
    TransientDeliveryError,
    WebhookRequest,
)
from channels.twilio_sms import TwilioSms
from tests.fakes.twilio_api import FakeTwilioApi, fake_twilio, load_fixture, sign

__all__ = ["fake_twilio"]  # the fixture, imported so pytest finds it here

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "c0ffee00c0ffee00c0ffee00c0ffee00"
OUR_NUMBER = "+15017122661"
HOOK_URL = "https://parley.example.com/webhooks/7"

Pairs = list[tuple[str, str]]


def channel(**settings: Any) -> TwilioSms:
    base: dict[str, Any] = {"account_sid": ACCOUNT_SID, "phone_number": OUR_NUMBER}
    return TwilioSms.from_settings(base | settings, {"auth_token": AUTH_TOKEN})


def webhook(
    pairs: Pairs,
    *,
    route: str = "",
    signed_url: str | None = None,
    token: str = AUTH_TOKEN,
    headers: dict[str, str] | None = None,
) -> WebhookRequest:
    """A request as the gateway builds it, signed as Twilio would sign it."""
    url = HOOK_URL + (f"/{route}" if route else "")
    if headers is None:
        headers = {"X-Twilio-Signature": sign(signed_url or url, pairs, token)}
    return WebhookRequest(
        method="POST",
        url=url,
        route=route,
        headers=headers,
        body=urlencode(pairs).encode(),
        form=MultiDictProxy(MultiDict(pairs)),
    )


def receive(name: str, adapter: TwilioSms | None = None) -> Sequence[InboundEvent]:
    """Sign fixture `name`, then verify and parse it the way the gateway does."""
    adapter = adapter or channel()
    request = webhook(load_fixture(name), route="status" if name.startswith("status__") else "")
    adapter.verify(request)
    return adapter.parse(request)


def replace(pairs: Pairs, key: str, value: str | None) -> Pairs:
    """`pairs` with `key` set to `value` (dropped when None)."""
    out = [(k, v) for k, v in pairs if k != key]
    return out if value is None else [*out, (key, value)]


def outbound(text: str = "Your order has shipped", **kwargs: Any) -> OutboundMessage:
    return OutboundMessage(message_id=1, recipient=Address("phone", "+15558675310"), text=text, **kwargs)


# --- inbound messages -------------------------------------------------------------------------


def test_inbound_sms() -> None:
    [event] = receive("inbound__sms")
    assert event == InboundMessage(
        provider_message_id="SM1f0e8ae6ade43cb3c0ce4525424e404f",
        sender=Address("phone", "+14155550100"),
        recipient=Address("phone", OUR_NUMBER),
        text="Hi, is my order on its way?",
        extra=event.extra,
    )
    assert event.extra["FromCity"] == "SAN FRANCISCO"
    assert event.extra["NumSegments"] == "1"
    assert event.extra["AccountSid"] == "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
    assert not {"From", "To", "Body", "MessageSid", "SmsSid", "SmsMessageSid", "NumMedia"} & set(event.extra)


def test_inbound_mms_has_attachments_in_order() -> None:
    [event] = receive("inbound__mms")
    assert isinstance(event, InboundMessage)
    assert event.provider_message_id == "MM0d1f2e3c4b5a69788796a5b4c3d2e1f0"
    assert event.text == "Here are the photos of the damaged box"
    media = "https://api.twilio.com/2010-04-01/Accounts/ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX/Messages/MM0d1f2e3c4b5a69788796a5b4c3d2e1f0/Media/"
    assert event.attachments == (
        Attachment(url=media + "ME3f1a2b3c4d5e6f708192a3b4c5d6e7f8", content_type="image/jpeg"),
        Attachment(url=media + "ME9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b", content_type="image/png"),
    )
    assert not any(key.startswith(("MediaUrl", "MediaContentType")) for key in event.extra)


def test_inbound_stop_is_an_opt_out() -> None:
    [event] = receive("inbound__stop")
    assert isinstance(event, InboundMessage)
    assert (event.text, event.consent_change) == ("Stop", "opt_out")
    assert event.extra["MessagingServiceSid"] == "MGXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"


def test_inbound_start_is_an_opt_in() -> None:
    [event] = receive("inbound__start")
    assert isinstance(event, InboundMessage)
    assert event.consent_change == "opt_in"


def test_inbound_unicode_text_is_kept_exactly() -> None:
    [event] = receive("inbound__unicode")
    assert isinstance(event, InboundMessage)
    assert event.text == "Привет! 👋 Можно перенести доставку? 配達は明日ですか？"  # noqa: RUF001
    assert event.consent_change is None


def test_inbound_national_number_is_normalised_with_the_default_region() -> None:
    [event] = receive("inbound__national_number")
    assert isinstance(event, InboundMessage)
    assert event.sender == Address("phone", "+14155550123")


def test_national_number_uses_the_inbox_region() -> None:
    pairs = replace(load_fixture("inbound__sms"), "From", "020 7946 0018")
    adapter = channel(default_region="gb")
    [event] = adapter.parse(webhook(pairs))
    assert isinstance(event, InboundMessage)
    assert event.sender == Address("phone", "+442079460018")


@pytest.mark.parametrize(
    ("sender", "expected"),
    [("12345", "12345"), (" ACME Store ", "ACME Store"), ("+1 (415) 555-0100", "+14155550100")],
)
def test_short_codes_and_alphanumeric_senders_are_kept_as_given(sender: str, expected: str) -> None:
    [event] = channel().parse(webhook(replace(load_fixture("inbound__sms"), "From", sender)))
    assert isinstance(event, InboundMessage)
    assert event.sender == Address("phone", expected)


@pytest.mark.parametrize(
    ("body", "change"),
    [
        ("STOP", "opt_out"),
        ("  stopall \n", "opt_out"),
        ("Unsubscribe.", "opt_out"),
        ("cancel!", "opt_out"),
        ("End", "opt_out"),
        ("quit", "opt_out"),
        ("OPTOUT", "opt_out"),
        ("revoke", "opt_out"),
        ("Start", "opt_in"),
        ("UNSTOP", "opt_in"),
        ("yes", None),
        ("HELP", None),
        ("please stop texting me", None),
        ("", None),
    ],
)
def test_consent_keywords_match_the_whole_message(body: str, change: str | None) -> None:
    [event] = channel().parse(webhook(replace(load_fixture("inbound__sms"), "Body", body)))
    assert isinstance(event, InboundMessage)
    assert event.consent_change == change


def test_message_without_from_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="From"):
        receive("malformed__no_from")


def test_message_without_any_sid_is_malformed() -> None:
    pairs = load_fixture("inbound__sms")
    for key in ("MessageSid", "SmsMessageSid", "SmsSid"):
        pairs = replace(pairs, key, None)
    with pytest.raises(MalformedPayload, match="MessageSid"):
        channel().parse(webhook(pairs))


def test_sms_sid_is_the_fallback_id() -> None:
    pairs = replace(replace(load_fixture("inbound__sms"), "MessageSid", None), "SmsMessageSid", None)
    [event] = channel().parse(webhook(pairs))
    assert event.provider_message_id == "SM1f0e8ae6ade43cb3c0ce4525424e404f"


@pytest.mark.parametrize("num_media", ["two", "1.5", "-1", "3"])
def test_bad_num_media_is_malformed(num_media: str) -> None:
    pairs = replace(load_fixture("inbound__mms"), "NumMedia", num_media)
    with pytest.raises(MalformedPayload, match="NumMedia"):
        channel().parse(webhook(pairs))


def test_unknown_route_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="route"):
        channel().parse(webhook(load_fixture("inbound__sms"), route="voice"))


def test_acknowledge_is_empty_twiml() -> None:
    adapter = channel()
    request = webhook(load_fixture("inbound__sms"))
    reply = adapter.acknowledge(request, adapter.parse(request))
    assert reply.body == '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
    assert (reply.content_type, reply.status) == ("text/xml", 200)


# --- status callbacks -------------------------------------------------------------------------


def test_status_sent() -> None:
    [event] = receive("status__sent")
    assert event == DeliveryStatus(
        provider_message_id="SM8f3e2c7b9a0d4e1f2a3b4c5d6e7f8091", status="sent", extra=event.extra
    )
    assert event.extra["From"] == OUR_NUMBER
    assert "MessageStatus" not in event.extra and "SmsStatus" not in event.extra


def test_status_delivered() -> None:
    [event] = receive("status__delivered")
    assert isinstance(event, DeliveryStatus)
    assert (event.status, event.error_code, event.extra["RawDlrDoneDate"]) == (
        "delivered",
        None,
        "2507231205",
    )


def test_status_undelivered_carries_the_twilio_error() -> None:
    [event] = receive("status__undelivered")
    assert isinstance(event, DeliveryStatus)
    assert (event.status, event.error_code, event.error_message) == (
        "failed",
        "30003",
        "Unreachable destination handset",
    )


def test_status_read() -> None:
    [event] = receive("status__read")
    assert isinstance(event, DeliveryStatus)
    assert (event.provider_message_id, event.status) == ("SM0a1b2c3d4e5f60718293a4b5c6d7e8f9", "read")


@pytest.mark.parametrize(
    ("twilio_status", "status"),
    [
        ("accepted", "queued"),
        ("scheduled", "queued"),
        ("queued", "queued"),
        ("sending", "sent"),
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("read", "read"),
        ("undelivered", "failed"),
        ("failed", "failed"),
        ("canceled", "failed"),
    ],
)
def test_status_mapping(twilio_status: str, status: str) -> None:
    pairs = replace(replace(load_fixture("status__sent"), "MessageStatus", twilio_status), "SmsStatus", None)
    [event] = channel().parse(webhook(pairs, route="status"))
    assert isinstance(event, DeliveryStatus)
    assert event.status == status


def test_sms_status_is_the_fallback_status() -> None:
    pairs = replace(load_fixture("status__delivered"), "MessageStatus", None)
    [event] = channel().parse(webhook(pairs, route="status"))
    assert isinstance(event, DeliveryStatus)
    assert event.status == "delivered"


def test_unknown_error_code_gets_a_generic_message() -> None:
    pairs = replace(load_fixture("status__undelivered"), "ErrorCode", "63016")
    [event] = channel().parse(webhook(pairs, route="status"))
    assert isinstance(event, DeliveryStatus)
    assert (event.error_code, event.error_message) == ("63016", "Twilio error 63016")


def test_unknown_status_is_malformed() -> None:
    pairs = replace(replace(load_fixture("status__sent"), "MessageStatus", "teleported"), "SmsStatus", None)
    with pytest.raises(MalformedPayload, match="teleported"):
        channel().parse(webhook(pairs, route="status"))


def test_status_without_status_is_malformed() -> None:
    pairs = replace(replace(load_fixture("status__sent"), "MessageStatus", None), "SmsStatus", None)
    with pytest.raises(MalformedPayload, match="MessageStatus"):
        channel().parse(webhook(pairs, route="status"))


# --- signatures -------------------------------------------------------------------------------


def test_verify_accepts_a_lowercase_header_name() -> None:
    pairs = load_fixture("inbound__sms")
    channel().verify(webhook(pairs, headers={"x-twilio-signature": sign(HOOK_URL, pairs, AUTH_TOKEN)}))


def test_verify_rejects_an_unsigned_request() -> None:
    with pytest.raises(SignatureError, match="missing"):
        channel().verify(webhook(load_fixture("inbound__sms"), headers={}))


def test_verify_rejects_a_wrong_signature() -> None:
    request = webhook(load_fixture("inbound__sms"), headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"})
    with pytest.raises(SignatureError):
        channel().verify(request)


def test_verify_rejects_a_non_ascii_signature_cleanly() -> None:
    request = webhook(load_fixture("inbound__sms"), headers={"X-Twilio-Signature": "sïgnature=="})
    with pytest.raises(SignatureError):
        channel().verify(request)


def test_verify_accepts_a_signature_over_the_url_with_its_default_port() -> None:
    # Twilio may sign https://host:443/… for a URL configured without the port, or the reverse.
    pairs = load_fixture("inbound__sms")
    with_port = HOOK_URL.replace("parley.example.com", "parley.example.com:443")
    channel().verify(webhook(pairs, signed_url=with_port))


def test_verify_rejects_a_signature_made_with_another_token() -> None:
    with pytest.raises(SignatureError):
        channel().verify(webhook(load_fixture("inbound__sms"), token="another-accounts-token"))


def test_verify_rejects_a_signature_made_for_another_url() -> None:
    request = webhook(load_fixture("inbound__sms"), signed_url="https://parley.example.com/webhooks/8")
    with pytest.raises(SignatureError):
        channel().verify(request)


def test_verify_rejects_a_tampered_body() -> None:
    pairs = load_fixture("inbound__sms")
    signature = sign(HOOK_URL, pairs, AUTH_TOKEN)
    tampered = replace(pairs, "Body", "Please refund me $500")
    with pytest.raises(SignatureError):
        channel().verify(webhook(tampered, headers={"X-Twilio-Signature": signature}))


def test_verify_rejects_an_added_parameter() -> None:
    pairs = load_fixture("inbound__mms")
    signature = sign(HOOK_URL, pairs, AUTH_TOKEN)
    extended = [*pairs, ("MediaUrl2", "https://evil.example/x.jpg")]
    with pytest.raises(SignatureError):
        channel().verify(webhook(extended, headers={"X-Twilio-Signature": signature}))


# --- configuration ----------------------------------------------------------------------------


def test_validate_config_cleans_settings() -> None:
    settings, secrets = TwilioSms.validate_config(
        {
            "account_sid": f" {ACCOUNT_SID} ",
            "phone_number": "(415) 555-0100",
            "api_base_url": "http://127.0.0.1:8080/api/laml/",
            "default_region": "us",
            "timeout": 3,
        },
        {"auth_token": f"{AUTH_TOKEN}\n"},
    )
    assert settings == {
        "account_sid": ACCOUNT_SID,
        "phone_number": "+14155550100",
        "api_base_url": "http://127.0.0.1:8080/api/laml",
        "default_region": "US",
        "timeout": 3.0,
    }
    assert secrets == {"auth_token": AUTH_TOKEN}


def test_validate_config_defaults() -> None:
    settings, _ = TwilioSms.validate_config(
        {"account_sid": ACCOUNT_SID, "messaging_service_sid": "MG" + "a" * 32}, {"auth_token": AUTH_TOKEN}
    )
    assert settings == {
        "account_sid": ACCOUNT_SID,
        "messaging_service_sid": "MG" + "a" * 32,
        "api_base_url": "https://api.twilio.com",
        "default_region": "US",
        "timeout": 10.0,
    }


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"account_sid": None}, "account_sid"),
        ({"account_sid": "AC123"}, "account_sid"),
        ({"account_sid": "SK" + "0" * 32}, "account_sid"),
        ({"account_sid": 12}, "account_sid"),
        ({"phone_number": None}, "phone_number or messaging_service_sid"),
        ({"phone_number": "not a number"}, "phone_number"),
        ({"phone_number": "12345"}, "phone_number"),
        ({"phone_number": None, "messaging_service_sid": "MGxyz"}, "messaging_service_sid"),
        ({"api_base_url": "ftp://api.twilio.com"}, "api_base_url"),
        ({"api_base_url": "api.twilio.com"}, "api_base_url"),
        ({"default_region": "XX"}, "default_region"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "fast"}, "timeout"),
    ],
)
def test_validate_config_names_the_bad_field(changes: dict[str, Any], field: str) -> None:
    settings = {"account_sid": ACCOUNT_SID, "phone_number": OUR_NUMBER} | changes
    settings = {k: v for k, v in settings.items() if v is not None}
    with pytest.raises(ConfigurationError, match=field):
        TwilioSms.validate_config(settings, {"auth_token": AUTH_TOKEN})


@pytest.mark.parametrize("secrets", [{}, {"auth_token": ""}, {"auth_token": "   "}])
def test_validate_config_requires_the_auth_token(secrets: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="auth_token"):
        TwilioSms.validate_config({"account_sid": ACCOUNT_SID, "phone_number": OUR_NUMBER}, secrets)


# --- sending ----------------------------------------------------------------------------------


def against(fake: FakeTwilioApi, **settings: Any) -> TwilioSms:
    base: dict[str, Any] = {"account_sid": fake.account_sid, "phone_number": OUR_NUMBER}
    return TwilioSms.from_settings(
        base | {"api_base_url": fake.base_url} | settings, {"auth_token": fake.auth_token}
    )


async def test_send_creates_a_message(fake_twilio: FakeTwilioApi) -> None:
    adapter = against(fake_twilio)
    try:
        receipt = await adapter.send(
            outbound(
                attachments=(
                    Attachment("https://cdn.example.com/invoice.pdf", "application/pdf"),
                    Attachment("https://cdn.example.com/label.png"),
                ),
                status_callback_url="https://parley.example.com/webhooks/7/status",
            )
        )
    finally:
        await adapter.close()
    assert receipt.provider_message_id.startswith("SM") and len(receipt.provider_message_id) == 34
    assert receipt.provider_message_id in fake_twilio.messages
    assert receipt.status == "queued"
    assert fake_twilio.requests == [
        {
            "To": ["+15558675310"],
            "From": [OUR_NUMBER],
            "Body": ["Your order has shipped"],
            "MediaUrl": ["https://cdn.example.com/invoice.pdf", "https://cdn.example.com/label.png"],
            "StatusCallback": ["https://parley.example.com/webhooks/7/status"],
        }
    ]


async def test_send_through_a_messaging_service(fake_twilio: FakeTwilioApi) -> None:
    service = "MG" + "b" * 32
    adapter = against(fake_twilio, phone_number=None, messaging_service_sid=service)
    try:
        receipt = await adapter.send(outbound("Hello"))
    finally:
        await adapter.close()
    [sent] = fake_twilio.requests
    assert sent == {"To": ["+15558675310"], "MessagingServiceSid": [service], "Body": ["Hello"]}
    # Twilio answers "accepted" for Messaging Service sends.
    assert fake_twilio.messages[receipt.provider_message_id]["status"] == "accepted"
    assert receipt.status == "queued"


async def test_send_media_only_leaves_the_body_out(fake_twilio: FakeTwilioApi) -> None:
    adapter = against(fake_twilio)
    try:
        await adapter.send(outbound("", attachments=(Attachment("https://cdn.example.com/a.jpg"),)))
    finally:
        await adapter.close()
    assert fake_twilio.requests == [
        {"To": ["+15558675310"], "From": [OUR_NUMBER], "MediaUrl": ["https://cdn.example.com/a.jpg"]}
    ]


async def test_send_ignores_twilio_region_from_the_environment(
    fake_twilio: FakeTwilioApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    adapter = against(fake_twilio)
    try:
        receipt = await adapter.send(outbound())
    finally:
        await adapter.close()
    assert receipt.provider_message_id in fake_twilio.messages


async def test_rate_limit_is_transient_with_retry_after(fake_twilio: FakeTwilioApi) -> None:
    fake_twilio.fail_next(429, code=20429, message="Too Many Requests", retry_after=7)
    adapter = against(fake_twilio)
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert caught.value.retry_after == 7.0
    assert len(fake_twilio.requests) == 1 and fake_twilio.messages == {}


async def test_server_error_is_transient(fake_twilio: FakeTwilioApi) -> None:
    fake_twilio.fail_next(500, message="Internal Server Error")
    adapter = against(fake_twilio)
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            await adapter.send(outbound())
        # The failure was used up: the next send goes through.
        receipt = await adapter.send(outbound())
    finally:
        await adapter.close()
    assert caught.value.retry_after is None
    assert list(fake_twilio.messages) == [receipt.provider_message_id]


async def test_retry_after_is_per_send_when_sends_overlap(fake_twilio: FakeTwilioApi) -> None:
    fake_twilio.fail_next(429, retry_after=3)
    fake_twilio.fail_next(503)
    adapter = against(fake_twilio)
    try:
        results = await asyncio.gather(
            adapter.send(outbound()), adapter.send(outbound()), return_exceptions=True
        )
    finally:
        await adapter.close()
    assert all(isinstance(r, TransientDeliveryError) for r in results)
    assert sorted(str(getattr(r, "retry_after", "?")) for r in results) == ["3.0", "None"]


async def test_invalid_number_is_permanent(fake_twilio: FakeTwilioApi) -> None:
    fake_twilio.fail_next(400, code=21211, message="The 'To' number +1555 is not a valid phone number.")
    adapter = against(fake_twilio)
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert caught.value.code == "21211"
    assert "not a valid phone number" in str(caught.value)


async def test_unsubscribed_recipient_is_permanent(fake_twilio: FakeTwilioApi) -> None:
    fake_twilio.fail_next(400, code=21610, message="Attempt to send to unsubscribed recipient")
    adapter = against(fake_twilio)
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert caught.value.code == "21610"


async def test_wrong_auth_token_is_an_auth_error(fake_twilio: FakeTwilioApi) -> None:
    adapter = TwilioSms.from_settings(
        {
            "account_sid": fake_twilio.account_sid,
            "phone_number": OUR_NUMBER,
            "api_base_url": fake_twilio.base_url,
        },
        {"auth_token": "revoked-token"},
    )
    try:
        with pytest.raises(ChannelAuthError):
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert fake_twilio.messages == {}
    assert len(fake_twilio.requests) == 1


async def test_hung_request_times_out_as_transient(fake_twilio: FakeTwilioApi) -> None:
    fake_twilio.delay_next(30)
    adapter = against(fake_twilio, timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TransientDeliveryError):
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert time.monotonic() - started < 5


async def test_unreachable_api_is_transient() -> None:
    server = TestServer(web.Application())
    await server.start_server()
    base_url = str(server.make_url("")).rstrip("/")
    await server.close()  # nothing listens there any more
    adapter = TwilioSms.from_settings(
        {"account_sid": ACCOUNT_SID, "phone_number": OUR_NUMBER, "api_base_url": base_url},
        {"auth_token": AUTH_TOKEN},
    )
    try:
        with pytest.raises(TransientDeliveryError):
            await adapter.send(outbound())
    finally:
        await adapter.close()


async def test_send_works_again_after_close(fake_twilio: FakeTwilioApi) -> None:
    adapter = against(fake_twilio)
    await adapter.send(outbound())
    await adapter.close()
    await adapter.send(outbound())
    await adapter.close()
    assert len(fake_twilio.messages) == 2


# --- status callbacks from the fake, end to end ------------------------------------------------

Receiver = Callable[[TwilioSms], Awaitable[tuple[str, list[InboundEvent]]]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Start tiny webhook endpoints that verify and parse with the given adapter."""
    servers: list[TestServer] = []

    async def start(adapter: TwilioSms) -> tuple[str, list[InboundEvent]]:
        events: list[InboundEvent] = []

        async def hook(request: web.Request) -> web.Response:
            form = await request.post()
            webhook_request = WebhookRequest(
                method=request.method,
                url=str(request.url),
                route=request.match_info["route"],
                headers=request.headers,
                body=await request.read(),
                form=MultiDictProxy(MultiDict((k, str(v)) for k, v in form.items())),
            )
            try:
                adapter.verify(webhook_request)
            except SignatureError:
                return web.Response(status=403)
            parsed = adapter.parse(webhook_request)
            events.extend(parsed)
            reply = adapter.acknowledge(webhook_request, parsed)
            return web.Response(text=reply.body, content_type=reply.content_type, status=reply.status)

        app = web.Application()
        app.router.add_post("/webhooks/7/{route:.*}", hook)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/webhooks/7/status")), events

    yield start
    for server in servers:
        await server.close()


async def test_status_callback_round_trip(fake_twilio: FakeTwilioApi, receiver: Receiver) -> None:
    adapter = against(fake_twilio)
    url, events = await receiver(adapter)
    try:
        receipt = await adapter.send(outbound(status_callback_url=url))
        sid = receipt.provider_message_id
        assert await fake_twilio.send_status(sid, "sent") == 200
        assert await fake_twilio.send_status(sid, "undelivered", error_code=30003) == 200
    finally:
        await adapter.close()
    assert [(e.provider_message_id, e.status) for e in events if isinstance(e, DeliveryStatus)] == [
        (sid, "sent"),
        (sid, "failed"),
    ]
    assert isinstance(events[1], DeliveryStatus)
    assert (events[1].error_code, events[1].error_message) == ("30003", "Unreachable destination handset")
    assert fake_twilio.messages[sid]["status"] == "undelivered"


async def test_status_callback_signed_with_another_token_is_refused(
    fake_twilio: FakeTwilioApi, receiver: Receiver
) -> None:
    adapter = against(fake_twilio)
    url, events = await receiver(channel(api_base_url=fake_twilio.base_url))  # a different auth token
    try:
        receipt = await adapter.send(outbound(status_callback_url=url))
        assert await fake_twilio.send_status(receipt.provider_message_id, "delivered") == 403
    finally:
        await adapter.close()
    assert events == []
