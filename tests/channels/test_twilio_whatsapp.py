"""WhatsApp through Twilio: signed fixtures in, normalised events out; sends go through the SDK to a fake."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from multidict import MultiDict, MultiDictProxy

from channels.base import (
    Address,
    Attachment,
    ButtonReply,
    ConfigurationError,
    DeliveryStatus,
    InboundEvent,
    InboundMessage,
    Location,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    SignatureError,
    Template,
    TransientDeliveryError,
    WebhookRequest,
)
from channels.registry import channel_class
from channels.twilio_whatsapp import TwilioWhatsApp
from tests.fakes.twilio_api import FakeTwilioApi, fake_twilio, load_fixture, sign

__all__ = ["fake_twilio"]  # the fixture, imported so pytest finds it here

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "c0ffee00c0ffee00c0ffee00c0ffee00"
OUR_NUMBER = "+14155238886"
CUSTOMER = "+14155550100"
HOOK_URL = "https://parley.example.com/webhooks/9"
CONTENT_SID = "HX" + "b7" * 16

Pairs = list[tuple[str, str]]


def channel(**settings: Any) -> TwilioWhatsApp:
    base: dict[str, Any] = {"account_sid": ACCOUNT_SID, "phone_number": f"whatsapp:{OUR_NUMBER}"}
    return TwilioWhatsApp.from_settings(base | settings, {"auth_token": AUTH_TOKEN})


def against(fake: FakeTwilioApi, **settings: Any) -> TwilioWhatsApp:
    """The adapter pointed at the fake Twilio API."""
    base: dict[str, Any] = {
        "account_sid": fake.account_sid,
        "phone_number": OUR_NUMBER,
        "api_base_url": fake.base_url,
    }
    return TwilioWhatsApp.from_settings(base | settings, {"auth_token": fake.auth_token})


def fixture(name: str) -> Pairs:
    return load_fixture(name, "twilio_whatsapp")


def webhook(pairs: Pairs, *, route: str = "", headers: dict[str, str] | None = None) -> WebhookRequest:
    """A request as the gateway builds it, signed as Twilio would sign it."""
    url = HOOK_URL + (f"/{route}" if route else "")
    if headers is None:
        headers = {"X-Twilio-Signature": sign(url, pairs, AUTH_TOKEN)}
    return WebhookRequest(
        method="POST",
        url=url,
        route=route,
        headers=headers,
        body=urlencode(pairs).encode(),
        form=MultiDictProxy(MultiDict(pairs)),
    )


def receive(pairs: Pairs | str) -> Sequence[InboundEvent]:
    """Sign a fixture (by name) or form pairs, then verify and parse them the way the gateway does."""
    name = pairs if isinstance(pairs, str) else ""
    request = webhook(
        fixture(name) if isinstance(pairs, str) else pairs,
        route="status" if name.startswith("status__") else "",
    )
    adapter = channel()
    adapter.verify(request)
    return adapter.parse(request)


def received_message(pairs: Pairs | str) -> InboundMessage:
    [event] = receive(pairs)
    assert isinstance(event, InboundMessage)
    return event


def received_status(name: str) -> DeliveryStatus:
    [event] = receive(name)
    assert isinstance(event, DeliveryStatus)
    return event


def replace(pairs: Pairs, key: str, value: str | None) -> Pairs:
    """`pairs` with `key` set to `value` (dropped when None)."""
    out = [(k, v) for k, v in pairs if k != key]
    return out if value is None else [*out, (key, value)]


def outbound(text: str = "Your order has shipped", **kwargs: Any) -> OutboundMessage:
    return OutboundMessage(message_id=1, recipient=Address("phone", CUSTOMER), text=text, **kwargs)


# --- the channel ------------------------------------------------------------------------------


def test_declares_whatsapp_identity_consent_and_capabilities() -> None:
    assert channel_class("twilio_whatsapp") is TwilioWhatsApp
    assert (TwilioWhatsApp.identity_kind, TwilioWhatsApp.consent_channel) == ("phone", "whatsapp")
    caps = TwilioWhatsApp.capabilities
    assert (caps.media, caps.buttons, caps.templates, caps.max_text_length) == (True, False, True, 1600)
    assert caps.reply_window == timedelta(hours=24)


# --- inbound messages -------------------------------------------------------------------------


def test_inbound_text() -> None:
    event = received_message("inbound__text")
    assert event == InboundMessage(
        provider_message_id="SM3c7f1e0b9d2a4c6e8f0a1b2c3d4e5f60",
        sender=Address("phone", CUSTOMER),
        recipient=Address("phone", OUR_NUMBER),
        text="Hi! Where is my order #1042?",
        sender_name="Ann Example",
        extra=event.extra,
    )
    assert (event.extra["WaId"], event.extra["MessageType"]) == ("14155550100", "text")
    assert not {"From", "To", "Body", "MessageSid", "ProfileName", "NumMedia"} & set(event.extra)


def test_inbound_media() -> None:
    event = received_message("inbound__media")
    assert event.text == "This is how the box arrived"
    assert event.attachments == (
        Attachment(
            url="https://api.twilio.com/2010-04-01/Accounts/ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX/Messages/"
            "MM7a1b2c3d4e5f60718293a4b5c6d7e8f9/Media/ME0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            content_type="image/jpeg",
        ),
    )
    assert not any(key.startswith(("MediaUrl", "MediaContentType")) for key in event.extra)


def test_inbound_location_reads_as_its_place() -> None:
    event = received_message("inbound__location")
    assert event.location == Location(
        latitude=37.7955,
        longitude=-122.3937,
        name="Ferry Building Marketplace",
        address="1 Ferry Building, San Francisco, CA 94111",
    )
    assert event.text == "Ferry Building Marketplace, 1 Ferry Building, San Francisco, CA 94111"
    assert not {"Latitude", "Longitude", "Label", "Address"} & set(event.extra)


def test_a_location_without_a_place_reads_as_its_coordinates() -> None:
    pairs = replace(replace(fixture("inbound__location"), "Label", None), "Address", None)
    event = received_message(pairs)
    assert event.location == Location(37.7955, -122.3937)
    assert event.text == "Location: 37.7955, -122.3937"


def test_a_location_with_a_caption_keeps_the_caption() -> None:
    event = received_message(replace(fixture("inbound__location"), "Body", "I'm here"))
    assert (event.text, event.location is not None) == ("I'm here", True)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Latitude", "north"),
        ("Latitude", "91"),
        ("Longitude", "-180.5"),
        ("Latitude", "nan"),
        ("Longitude", None),
    ],
)
def test_a_bad_location_is_malformed(key: str, value: str | None) -> None:
    with pytest.raises(MalformedPayload, match=key):
        receive(replace(fixture("inbound__location"), key, value))


def test_inbound_quick_reply_is_a_button_reply() -> None:
    event = received_message("inbound__button_reply")
    assert event.button_reply == ButtonReply(id="human", title="Talk to a person")
    assert event.text == "Talk to a person"
    assert event.extra["OriginalRepliedMessageSid"] == "MM1a2b3c4d5e6f708192a3b4c5d6e7f809"
    assert not {"ButtonPayload", "ButtonText"} & set(event.extra)


def test_a_quick_reply_without_a_payload_is_identified_by_its_text() -> None:
    event = received_message(replace(fixture("inbound__button_reply"), "ButtonPayload", None))
    assert event.button_reply == ButtonReply(id="Talk to a person", title="Talk to a person")


@pytest.mark.parametrize("body", ["STOP", "unsubscribe", "START"])
def test_sms_keywords_do_not_change_consent_on_whatsapp(body: str) -> None:
    event = received_message(replace(fixture("inbound__text"), "Body", body))
    assert (event.text, event.consent_change) == (body, None)


def test_a_sender_without_the_prefix_is_still_a_phone_number() -> None:
    event = received_message(replace(fixture("inbound__text"), "From", "+1 415 555 0100"))
    assert event.sender == Address("phone", CUSTOMER)


def test_message_without_from_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="From"):
        receive("malformed__no_from")


def test_unknown_route_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="route"):
        channel().parse(webhook(fixture("inbound__text"), route="voice"))


# --- status callbacks -------------------------------------------------------------------------


def test_status_read() -> None:
    event = received_status("status__read")
    assert (event.provider_message_id, event.status, event.error_code) == (
        "SM2b3c4d5e6f708192a3b4c5d6e7f80912",
        "read",
        None,
    )
    assert event.extra["ChannelPrefix"] == "whatsapp"


def test_status_failed_outside_the_window_says_to_send_a_template() -> None:
    event = received_status("status__failed_63016")
    assert (event.status, event.error_code) == ("failed", "63016")
    assert event.error_message is not None
    assert "has not written in 24 hours; send a template" in event.error_message


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("63003", "not on WhatsApp"),
        ("63024", "cannot receive WhatsApp messages"),
        ("63032", "marketing templates"),
        ("63018", "rate limit"),
    ],
)
def test_whatsapp_error_codes_have_clear_reasons(code: str, words: str) -> None:
    pairs = replace(fixture("status__failed_63016"), "ErrorCode", code)
    [event] = channel().parse(webhook(pairs, route="status"))
    assert isinstance(event, DeliveryStatus)
    assert event.error_message is not None and words in event.error_message


# --- signatures -------------------------------------------------------------------------------


def test_verify_rejects_an_unsigned_request() -> None:
    with pytest.raises(SignatureError, match="missing"):
        channel().verify(webhook(fixture("inbound__text"), headers={}))


def test_verify_rejects_a_wrong_signature() -> None:
    request = webhook(fixture("inbound__text"), headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"})
    with pytest.raises(SignatureError):
        channel().verify(request)


def test_verify_rejects_a_tampered_body() -> None:
    pairs = fixture("inbound__button_reply")
    signature = sign(HOOK_URL, pairs, AUTH_TOKEN)
    tampered = replace(pairs, "ButtonPayload", "refund_everything")
    with pytest.raises(SignatureError):
        channel().verify(webhook(tampered, headers={"X-Twilio-Signature": signature}))


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("given", [f"whatsapp:{OUR_NUMBER}", OUR_NUMBER, f" WhatsApp:{OUR_NUMBER} "])
def test_the_sender_is_stored_without_the_prefix(given: str) -> None:
    settings, secrets = TwilioWhatsApp.validate_config(
        {"account_sid": ACCOUNT_SID, "phone_number": given}, {"auth_token": AUTH_TOKEN}
    )
    assert settings == {
        "account_sid": ACCOUNT_SID,
        "phone_number": OUR_NUMBER,
        "api_base_url": "https://api.twilio.com",
        "default_region": "US",
        "timeout": 10.0,
    }
    assert secrets == {"auth_token": AUTH_TOKEN}


def test_a_messaging_service_is_enough() -> None:
    settings, _ = TwilioWhatsApp.validate_config(
        {"account_sid": ACCOUNT_SID, "messaging_service_sid": "MG" + "a" * 32}, {"auth_token": AUTH_TOKEN}
    )
    assert settings["messaging_service_sid"] == "MG" + "a" * 32 and "phone_number" not in settings


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"phone_number": "whatsapp:"}, "phone_number or messaging_service_sid"),
        ({"phone_number": "whatsapp:support"}, "phone_number"),
        ({"phone_number": 14155238886}, "phone_number"),
        ({"account_sid": "AC123"}, "account_sid"),
    ],
)
def test_invalid_settings_are_refused(changes: dict[str, Any], field: str) -> None:
    settings = {"account_sid": ACCOUNT_SID, "phone_number": OUR_NUMBER} | changes
    with pytest.raises(ConfigurationError, match=field):
        TwilioWhatsApp.validate_config(settings, {"auth_token": AUTH_TOKEN})


# --- sending ----------------------------------------------------------------------------------


async def test_send_text_between_whatsapp_addresses(fake_twilio: FakeTwilioApi) -> None:
    adapter = against(fake_twilio)
    try:
        receipt = await adapter.send(outbound(status_callback_url=f"{HOOK_URL}/status"))
    finally:
        await adapter.close()
    assert fake_twilio.requests == [
        {
            "To": [f"whatsapp:{CUSTOMER}"],
            "From": [f"whatsapp:{OUR_NUMBER}"],
            "Body": ["Your order has shipped"],
            "StatusCallback": [f"{HOOK_URL}/status"],
        }
    ]
    assert receipt.provider_message_id in fake_twilio.messages
    assert receipt.status == "queued"


async def test_send_media(fake_twilio: FakeTwilioApi) -> None:
    adapter = against(fake_twilio)
    try:
        await adapter.send(
            outbound("The label", attachments=(Attachment("https://cdn.example.com/label.pdf"),))
        )
    finally:
        await adapter.close()
    [sent] = fake_twilio.requests
    assert (sent["Body"], sent["MediaUrl"]) == (["The label"], ["https://cdn.example.com/label.pdf"])


async def test_send_through_a_messaging_service(fake_twilio: FakeTwilioApi) -> None:
    service = "MG" + "c" * 32
    adapter = against(fake_twilio, phone_number=None, messaging_service_sid=service)
    try:
        await adapter.send(outbound("Hello"))
    finally:
        await adapter.close()
    assert fake_twilio.requests == [
        {"To": [f"whatsapp:{CUSTOMER}"], "MessagingServiceSid": [service], "Body": ["Hello"]}
    ]


async def test_send_a_template_through_the_content_api(fake_twilio: FakeTwilioApi) -> None:
    adapter = against(fake_twilio)
    template = Template(CONTENT_SID, "en", {"1": "Ann", "2": "#1042"})
    try:
        receipt = await adapter.send(outbound("ignored: the template is the message", template=template))
    finally:
        await adapter.close()
    assert fake_twilio.requests == [
        {
            "To": [f"whatsapp:{CUSTOMER}"],
            "From": [f"whatsapp:{OUR_NUMBER}"],
            "ContentSid": [CONTENT_SID],
            "ContentVariables": ['{"1": "Ann", "2": "#1042"}'],
        }
    ]
    assert receipt.provider_message_id in fake_twilio.messages


async def test_a_template_without_variables_sends_none(fake_twilio: FakeTwilioApi) -> None:
    adapter = against(fake_twilio)
    try:
        await adapter.send(outbound("", template=Template(CONTENT_SID)))
    finally:
        await adapter.close()
    [sent] = fake_twilio.requests
    assert sent["ContentSid"] == [CONTENT_SID] and "ContentVariables" not in sent


async def test_a_template_that_is_not_a_content_sid_is_refused_before_sending(
    fake_twilio: FakeTwilioApi,
) -> None:
    adapter = against(fake_twilio)
    try:
        with pytest.raises(PermanentDeliveryError, match="Content SID") as caught:
            await adapter.send(outbound(template=Template("order_shipped", "en_US")))
    finally:
        await adapter.close()
    assert caught.value.code == "invalid_template"
    assert fake_twilio.requests == []


async def test_outside_the_window_is_permanent_with_the_reason(fake_twilio: FakeTwilioApi) -> None:
    fake_twilio.fail_next(
        400,
        code=63016,
        message="Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template.",
    )
    adapter = against(fake_twilio)
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert caught.value.code == "63016"
    assert "has not written in 24 hours; send a template" in str(caught.value)
    assert "outside the allowed window" in str(caught.value)  # Twilio's own words are kept


async def test_whatsapp_rate_limit_is_transient(fake_twilio: FakeTwilioApi) -> None:
    fake_twilio.fail_next(400, code=63018, message="Rate limit exceeded for Channel")
    adapter = against(fake_twilio)
    try:
        with pytest.raises(TransientDeliveryError, match="rate limit"):
            await adapter.send(outbound())
    finally:
        await adapter.close()


async def test_an_unknown_error_keeps_twilios_words(fake_twilio: FakeTwilioApi) -> None:
    fake_twilio.fail_next(400, code=21211, message="The 'To' number is not a valid phone number.")
    adapter = against(fake_twilio)
    try:
        with pytest.raises(PermanentDeliveryError, match="not a valid phone number") as caught:
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert caught.value.code == "21211"
