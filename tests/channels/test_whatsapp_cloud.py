"""The WhatsApp Cloud API adapter: signed fixtures in, normalised events out; sends go to a fake Graph API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import MultiDict, MultiDictProxy

from channels.base import (
    Address,
    Attachment,
    Button,
    ButtonReply,
    ChannelAuthError,
    ConfigurationError,
    DeliveryStatus,
    InboundEvent,
    InboundMessage,
    Location,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    SharedContact,
    SignatureError,
    Template,
    TransientDeliveryError,
    WebhookReply,
    WebhookRequest,
)
from channels.registry import channel_class
from channels.whatsapp_cloud import (
    DEFAULT_API_VERSION,
    MAX_MEDIA_BYTES,
    WhatsAppCloud,
    phone_from_wa_id,
)
from tests.fakes.whatsapp_cloud_api import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_APP_SECRET,
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_VERIFY_TOKEN,
    FakeWhatsAppCloudApi,
    encode,
    fake_whatsapp_cloud,
    fixture_payload,
    inbound_payload,
    load_fixture,
    sign_body,
    text_message,
    webhook_payload,
)

__all__ = ["fake_whatsapp_cloud"]  # the fixture, imported so pytest finds it here

HOOK_URL = "https://parley.example.com/webhooks/9"
SECRETS = {
    "access_token": DEFAULT_ACCESS_TOKEN,
    "app_secret": DEFAULT_APP_SECRET,
    "verify_token": DEFAULT_VERIFY_TOKEN,
}
GRAPH = f"https://graph.facebook.com/{DEFAULT_API_VERSION}"
SHEENA = Address("phone", "+16505551234")


def channel(**settings: Any) -> WhatsAppCloud:
    return WhatsAppCloud.from_settings({"phone_number_id": DEFAULT_PHONE_NUMBER_ID} | settings, SECRETS)


def webhook(
    body: bytes | dict[str, Any],
    *,
    secret: str = DEFAULT_APP_SECRET,
    headers: dict[str, str] | None = None,
    route: str = "",
) -> WebhookRequest:
    """A request as the gateway builds it, signed as Meta would sign it."""
    raw = body if isinstance(body, bytes) else encode(body)
    if headers is None:
        headers = {"X-Hub-Signature-256": sign_body(raw, secret)}
    return WebhookRequest(method="POST", url=HOOK_URL, route=route, headers=headers, body=raw)


def receive(
    fixture: str | bytes | dict[str, Any], adapter: WhatsAppCloud | None = None
) -> Sequence[InboundEvent]:
    """Sign a fixture (by name), body or payload, then verify and parse it the way the gateway does."""
    adapter = adapter or channel()
    request = webhook(load_fixture(fixture) if isinstance(fixture, str) else fixture)
    adapter.verify(request)
    return adapter.parse(request)


def one_message(fixture: str | dict[str, Any]) -> InboundMessage:
    [event] = receive(fixture)
    assert isinstance(event, InboundMessage)
    return event


def one_status(fixture: str | dict[str, Any]) -> DeliveryStatus:
    [event] = receive(fixture)
    assert isinstance(event, DeliveryStatus)
    return event


def with_message(fixture: str, **changes: Any) -> dict[str, Any]:
    """Fixture `fixture` with its first message's fields changed (None drops one)."""
    payload = fixture_payload(fixture)
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    for key, value in changes.items():
        if value is None:
            message.pop(key, None)
        else:
            message[key] = value
    return payload


def handshake_request(**query: str) -> WebhookRequest:
    return WebhookRequest(
        method="GET", url=HOOK_URL, route="", headers={}, body=b"", query=MultiDictProxy(MultiDict(query))
    )


def outbound(text: str = "Your order has shipped", **kwargs: Any) -> OutboundMessage:
    return OutboundMessage(message_id=1, recipient=Address("phone", "+15558675310"), text=text, **kwargs)


# --- inbound messages -------------------------------------------------------------------------


def test_text_message() -> None:
    event = one_message("message__text")
    assert event == InboundMessage(
        provider_message_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        sender=SHEENA,
        recipient=Address("phone", "+15550783881"),
        text="Does it come in another color?",
        sender_name="Sheena Nelson",
        extra={"type": "text", "timestamp": "1749416383"},
    )


def test_image_points_at_the_graph_media_endpoint_and_keeps_the_caption() -> None:
    event = one_message("message__image")
    assert event.text == "The best succulent ever?"
    assert event.attachments == (Attachment(url=f"{GRAPH}/1003383421387256", content_type="image/jpeg"),)
    assert event.extra["media_id"] == "1003383421387256"
    assert event.extra["sha256"] == "AbCdEf9iL8Yr9wxNaCNxHyoZpIBK+oVVJN0mdD6iLaQ="


def test_document_keeps_its_filename() -> None:
    event = one_message("message__document")
    assert event.text == "Lucky Shrub Invoice"
    assert event.attachments == (
        Attachment(
            url=f"{GRAPH}/1200005318218929",
            content_type="application/pdf",
            filename="lucky-shrub-invoice.pdf",
        ),
    )


def test_voice_note_has_no_text_and_says_it_is_a_voice_note() -> None:
    event = one_message("message__audio")
    assert event.text == ""
    assert [a.content_type for a in event.attachments] == ["audio/ogg; codecs=opus"]
    assert (event.extra["type"], event.extra["voice"]) == ("audio", True)


def test_media_url_follows_the_inbox_settings() -> None:
    adapter = channel(api_base_url="http://127.0.0.1:9999/graph/", api_version="v25.0")
    [event] = receive("message__image", adapter)
    assert isinstance(event, InboundMessage)
    assert event.attachments[0].url == "http://127.0.0.1:9999/graph/v25.0/1003383421387256"


def test_location() -> None:
    event = one_message("message__location")
    assert event.location == Location(
        37.44216251868683, -122.16153582049394, "Philz Coffee", "101 Forest Ave, Palo Alto, CA 94301"
    )
    assert event.text == "Location: Philz Coffee, 101 Forest Ave, Palo Alto, CA 94301 (37.4422, -122.162)"
    assert event.extra["location_url"] == "https://www.philzcoffee.com/"
    assert "location" not in event.extra  # the typed field carries it


def test_location_without_a_name_is_its_coordinates() -> None:
    event = one_message(with_message("message__location", location={"latitude": 52.52, "longitude": 13.405}))
    assert event.text == "Location: 52.52, 13.405"
    assert event.location == Location(52.52, 13.405)


def test_shared_contacts() -> None:
    event = one_message("message__contacts")
    assert event.shared_contacts == (
        SharedContact(
            name="Dr. Barbara J. Johnson, Esq.",
            phones=("+1 (940) 555-1234", "+16505551234"),
            emails=("bjohnson@luckyshrub.com", "bjohnson@luckyshrubplants.com"),
        ),
    )
    assert event.text == "Shared contact: Dr. Barbara J. Johnson, Esq. (+1 (940) 555-1234, +16505551234)"


def test_interactive_button_reply() -> None:
    event = one_message("message__interactive_button_reply")
    assert event.button_reply == ButtonReply(id="change-button", title="Change")
    assert event.text == "Change"
    assert event.extra["context"] == {
        "from": "15550783881",
        "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA",
    }


def test_interactive_list_reply() -> None:
    event = one_message("message__interactive_list_reply")
    assert event.button_reply == ButtonReply(id="priority_express", title="Priority Mail Express")
    assert (event.text, event.extra["description"]) == ("Priority Mail Express", "Next Day to 2 Days")


def test_template_quick_reply_button() -> None:
    event = one_message("message__template_button")
    assert event.button_reply == ButtonReply(id="track_order", title="Track my order")
    assert event.text == "Track my order"


def test_reaction_is_readable() -> None:
    event = one_message("message__reaction")
    assert event.text == "Reacted \N{THUMBS UP SIGN} to a message"
    assert (
        event.extra["reaction"]["message_id"] == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
    )


def test_unsupported_message_is_readable_and_keeps_what_meta_said() -> None:
    event = one_message("message__unsupported")
    assert event.text == "[unsupported message type: poll_creation]"
    assert event.extra["type"] == "unsupported"
    assert event.extra["unsupported"] == {"type": "poll_creation"}
    assert event.extra["errors"][0]["code"] == 131051


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("order", {"catalog_id": "1", "product_items": []}),
        ("request_welcome", None),
        ("teleport", {"to": "mars"}),
    ],
)
def test_a_message_type_parley_does_not_know_never_crashes(kind: str, content: Any) -> None:
    event = one_message(with_message("message__text", type=kind, text=None, **{kind: content}))
    assert event.text == f"[unsupported message type: {kind}]"
    assert event.extra["type"] == kind
    if content is not None:
        assert event.extra[kind] == content


def test_an_interactive_reply_parley_does_not_know_is_readable() -> None:
    flow = {"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent", "response_json": "{}"}}
    event = one_message(with_message("message__interactive_button_reply", interactive=flow))
    assert event.text == "[unsupported interactive reply: nfm_reply]"
    assert event.button_reply is None
    assert event.extra["interactive"] == flow


def test_two_messages_in_one_webhook_each_get_their_senders_name() -> None:
    events = receive("message__batch")
    assert [(e.sender, e.sender_name, e.text) for e in events if isinstance(e, InboundMessage)] == [
        (SHEENA, "Sheena Nelson", "Hi! I ordered the aloe last week."),
        (Address("phone", "+14155550123"), "Pablo Morales", "Do you ship to Canada?"),
    ]


def test_messages_for_another_phone_number_are_ignored() -> None:
    assert receive("message__other_phone_number") == []


def test_only_the_changes_for_this_phone_number_are_taken() -> None:
    ours = fixture_payload("message__text")
    theirs = fixture_payload("message__other_phone_number")
    ours["entry"].append(theirs["entry"][0])
    assert [e.provider_message_id for e in receive(ours)] == [
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
    ]


def test_a_field_parley_does_not_handle_is_acknowledged() -> None:
    adapter = channel()
    request = webhook(load_fixture("unhandled__message_template_status_update"))
    assert adapter.parse(request) == []
    assert adapter.acknowledge(request, []) == WebhookReply(body="", content_type="text/plain", status=200)


@pytest.mark.parametrize(
    ("wa_id", "e164"),
    [
        ("16505551234", "+16505551234"),
        ("447700900123", "+447700900123"),
        # Mexico: WhatsApp keeps the mobile "1" the numbering plan dropped in 2019.
        ("5215512345678", "+525512345678"),
        ("525512345678", "+525512345678"),
        # Brazil: accounts older than the ninth mobile digit keep eight; landlines never had it.
        ("551199998888", "+5511999998888"),
        ("5511999998888", "+5511999998888"),
        ("551133334444", "+551133334444"),
        ("5491123456789", "+5491123456789"),
        ("12345", "+12345"),
    ],
)
def test_wa_ids_become_the_e164_numbers_sms_uses(wa_id: str, e164: str) -> None:
    assert phone_from_wa_id(wa_id) == e164


def test_a_username_only_customer_is_known_by_their_business_scoped_id() -> None:
    payload = webhook_payload(
        {
            "contacts": [
                {"profile": {"name": "Ana", "username": "@ana"}, "user_id": "US.13491208655302741918"}
            ],
            "messages": [
                {
                    "from_user_id": "US.13491208655302741918",
                    "id": "wamid.bsuid1",
                    "timestamp": "1780000000",
                    "type": "text",
                    "text": {"body": "Hola"},
                }
            ],
        }
    )
    event = one_message(payload)
    assert event.sender == Address("whatsapp_user_id", "US.13491208655302741918")
    assert event.sender_name == "Ana"
    del payload["entry"][0]["changes"][0]["value"]["messages"][0]["from_user_id"]
    assert one_message(payload).sender == Address("whatsapp_user_id", "US.13491208655302741918")


# --- statuses ---------------------------------------------------------------------------------


def test_status_sent() -> None:
    event = one_status("status__sent")
    assert (event.provider_message_id, event.status, event.error_code) == (
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJEQzQ1NzJGNzU0MzAzQTkwNjUA",
        "sent",
        None,
    )
    assert event.extra["pricing"]["category"] == "service"
    assert event.extra["recipient_id"] == "16505551234"


def test_status_delivered_and_read() -> None:
    assert one_status("status__delivered").status == "delivered"
    assert one_status("status__read").status == "read"


def test_status_failed_outside_the_window_says_to_send_a_template() -> None:
    event = one_status("status__failed")
    assert (event.status, event.error_code) == ("failed", "131047")
    assert event.error_message is not None
    assert "send a template" in event.error_message
    assert "more than 24 hours have passed since the customer last replied" in event.error_message


def test_a_failed_status_with_an_unknown_code_keeps_metas_words() -> None:
    payload = fixture_payload("status__failed")
    status = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    status["errors"] = [{"code": 131999, "title": "Something new", "error_data": {"details": "Details."}}]
    event = one_status(payload)
    assert (event.error_code, event.error_message) == ("131999", "Something new (Details.)")


def test_a_played_voice_message_counts_as_read() -> None:
    payload = fixture_payload("status__read")
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "played"
    assert one_status(payload).status == "read"


def test_a_status_parley_does_not_track_is_acknowledged() -> None:
    payload = fixture_payload("status__read")
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = "deleted"
    assert receive(payload) == []


# --- malformed --------------------------------------------------------------------------------


def test_a_message_without_an_id_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match=r"messages\[0\]\.id"):
        receive("malformed__message_without_id")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"object": "page", "entry": []}', "not a WhatsApp Business Account"),
        (b'{"object": "whatsapp_business_account"}', "no entry"),
        (b'{"object": "whatsapp_business_account", "entry": [{"changes": {}}]}', "changes is not a list"),
        (b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {}}]}]}', "field"),
    ],
)
def test_unusable_bodies_are_malformed(body: bytes, match: str) -> None:
    with pytest.raises(MalformedPayload, match=match):
        receive(body)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"from": "+1 650 555 1234"}, "not a WhatsApp phone number"),
        ({"from": None}, "neither from nor from_user_id"),
        ({"type": None}, r"\.type"),
        ({"text": {"body": 42}}, r"text\.body"),
        ({"text": "hello"}, r"\.text is not an object"),
        ({"timestamp": "1749416383", "id": 123}, r"\.id"),
    ],
)
def test_unusable_messages_are_malformed(changes: dict[str, Any], match: str) -> None:
    payload = with_message("message__text", **changes)
    if changes.get("from", "x") is None:
        payload["entry"][0]["changes"][0]["value"]["contacts"] = []
    with pytest.raises(MalformedPayload, match=match):
        receive(payload)


@pytest.mark.parametrize(
    "location",
    [
        {"latitude": "37.4", "longitude": -122.1},
        {"latitude": 91, "longitude": 0},
        {"latitude": True, "longitude": 0},
    ],
)
def test_a_location_without_usable_coordinates_is_malformed(location: dict[str, Any]) -> None:
    with pytest.raises(MalformedPayload, match="latitude"):
        receive(with_message("message__location", location=location))


def test_a_messages_change_without_metadata_is_malformed() -> None:
    payload = fixture_payload("message__text")
    del payload["entry"][0]["changes"][0]["value"]["metadata"]
    with pytest.raises(MalformedPayload, match="metadata"):
        receive(payload)


def test_a_status_without_a_status_is_malformed() -> None:
    payload = fixture_payload("status__sent")
    del payload["entry"][0]["changes"][0]["value"]["statuses"][0]["status"]
    with pytest.raises(MalformedPayload, match=r"statuses\[0\]\.status"):
        receive(payload)


def test_an_unknown_route_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="route"):
        channel().parse(webhook(load_fixture("message__text"), route="voice"))


# --- handshake --------------------------------------------------------------------------------


def test_handshake_answers_the_challenge() -> None:
    reply = channel().handshake(
        handshake_request(
            **{
                "hub.mode": "subscribe",
                "hub.challenge": "1158201444",
                "hub.verify_token": DEFAULT_VERIFY_TOKEN,
            }
        )
    )
    assert reply == WebhookReply(body="1158201444", content_type="text/plain", status=200)


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "someone-elses-token"},
        {"hub.mode": "subscribe", "hub.challenge": "1158201444"},
        {"hub.mode": "unsubscribe", "hub.challenge": "1158201444", "hub.verify_token": DEFAULT_VERIFY_TOKEN},
        {"hub.mode": "subscribe", "hub.verify_token": DEFAULT_VERIFY_TOKEN},
        {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": "\udcff"},
        {},
    ],
)
def test_handshake_refuses_anyone_without_the_verify_token(query: dict[str, str]) -> None:
    with pytest.raises(SignatureError):
        channel().handshake(handshake_request(**query))


# --- signatures -------------------------------------------------------------------------------


def test_verify_rejects_an_unsigned_request() -> None:
    with pytest.raises(SignatureError, match="missing"):
        channel().verify(webhook(load_fixture("message__text"), headers={}))


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=" + "0" * 64,
        "sha256=",
        "0" * 64,
        "sha1=" + "0" * 40,
        "sha256=sïgnature",
        "sha256=\udcff\udcfe",  # undecodable bytes, as aiohttp hands them over
    ],
)
def test_verify_rejects_a_wrong_signature(signature: str) -> None:
    with pytest.raises(SignatureError):
        channel().verify(webhook(load_fixture("message__text"), headers={"X-Hub-Signature-256": signature}))


def test_verify_rejects_a_signature_made_with_another_secret() -> None:
    with pytest.raises(SignatureError):
        channel().verify(webhook(load_fixture("message__text"), secret="another-apps-secret"))


def test_verify_rejects_a_tampered_body() -> None:
    body = load_fixture("message__text")
    signature = sign_body(body, DEFAULT_APP_SECRET)
    tampered = body.replace(b"Does it come in another color?", b"Please refund me $500 now")
    with pytest.raises(SignatureError):
        channel().verify(webhook(tampered, headers={"X-Hub-Signature-256": signature}))


def test_verify_checks_the_raw_bytes_not_the_json() -> None:
    # Meta signs the body exactly as sent (non-ASCII escaped): re-encoding the same JSON breaks it.
    body = encode(fixture_payload("message__reaction"))
    reencoded = json.dumps(json.loads(body), ensure_ascii=False).encode()
    assert reencoded != body
    with pytest.raises(SignatureError):
        channel().verify(
            webhook(reencoded, headers={"X-Hub-Signature-256": sign_body(body, DEFAULT_APP_SECRET)})
        )


def test_verify_accepts_a_lowercase_header_and_uppercase_hex() -> None:
    body = load_fixture("message__text")
    signature = sign_body(body, DEFAULT_APP_SECRET)
    channel().verify(webhook(body, headers={"x-hub-signature-256": "sha256=" + signature[7:].upper()}))


def test_an_old_delivery_still_verifies_because_meta_redelivers_for_days() -> None:
    # The signature has no timestamp and Meta retries for up to a week: a replay is stopped by the
    # wamid being stored once (see the end-to-end tests), not by refusing old messages.
    old = with_message("message__text", timestamp=str(int(time.time()) - 6 * 24 * 3600))
    assert one_message(old).provider_message_id.startswith("wamid.")


# --- configuration ----------------------------------------------------------------------------


def test_validate_config_cleans_settings() -> None:
    settings, secrets = WhatsAppCloud.validate_config(
        {
            "phone_number_id": 106540352242922,
            "waba_id": " 102290129340398 ",
            "api_base_url": "http://127.0.0.1:8080/graph/",
            "api_version": "v24.0",
            "timeout": 3,
        },
        {key: f" {value}\n" for key, value in SECRETS.items()},
    )
    assert settings == {
        "phone_number_id": "106540352242922",
        "waba_id": "102290129340398",
        "api_base_url": "http://127.0.0.1:8080/graph",
        "api_version": "v24.0",
        "timeout": 3.0,
    }
    assert secrets == SECRETS


def test_validate_config_defaults() -> None:
    settings, _ = WhatsAppCloud.validate_config({"phone_number_id": DEFAULT_PHONE_NUMBER_ID}, SECRETS)
    assert settings == {
        "phone_number_id": DEFAULT_PHONE_NUMBER_ID,
        "api_base_url": "https://graph.facebook.com",
        "api_version": DEFAULT_API_VERSION,
        "timeout": 10.0,
    }


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"phone_number_id": None}, "phone_number_id"),
        ({"phone_number_id": "+15550783881"}, "phone_number_id"),
        ({"phone_number_id": True}, "phone_number_id"),
        ({"waba_id": "my-business"}, "waba_id"),
        ({"api_base_url": "ftp://graph.facebook.com"}, "api_base_url"),
        ({"api_base_url": "graph.facebook.com"}, "api_base_url"),
        ({"api_base_url": 7}, "api_base_url"),
        ({"api_version": "26.0"}, "api_version"),
        ({"api_version": "v26"}, "api_version"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "fast"}, "timeout"),
    ],
)
def test_validate_config_names_the_bad_field(changes: dict[str, Any], field: str) -> None:
    settings = {"phone_number_id": DEFAULT_PHONE_NUMBER_ID} | changes
    settings = {k: v for k, v in settings.items() if v is not None}
    with pytest.raises(ConfigurationError, match=field):
        WhatsAppCloud.validate_config(settings, SECRETS)


@pytest.mark.parametrize("secret", ["access_token", "app_secret", "verify_token"])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_validate_config_requires_every_secret(secret: str, value: str | None) -> None:
    secrets = {k: v for k, v in SECRETS.items() if k != secret}
    if value is not None:
        secrets[secret] = value
    with pytest.raises(ConfigurationError, match=secret):
        WhatsAppCloud.validate_config({"phone_number_id": DEFAULT_PHONE_NUMBER_ID}, secrets)


def test_registered_under_its_name() -> None:
    assert channel_class("whatsapp_cloud") is WhatsAppCloud
    assert WhatsAppCloud.identity_kind == "phone" and WhatsAppCloud.consent_channel == "whatsapp"
    capabilities = WhatsAppCloud.capabilities
    assert (capabilities.media, capabilities.buttons, capabilities.templates) == (True, True, True)
    assert capabilities.reply_window is not None and capabilities.reply_window.total_seconds() == 24 * 3600
    assert capabilities.max_text_length == 4096


# --- sending ----------------------------------------------------------------------------------


def against(fake: FakeWhatsAppCloudApi, **settings: Any) -> WhatsAppCloud:
    base = {"phone_number_id": fake.phone_number_id, "api_base_url": fake.base_url}
    secrets = {
        "access_token": fake.access_token,
        "app_secret": fake.app_secret,
        "verify_token": fake.verify_token,
    }
    return WhatsAppCloud.from_settings(base | settings, secrets)


async def send(fake: FakeWhatsAppCloudApi, message: OutboundMessage, **settings: Any) -> dict[str, Any]:
    """Send `message` through a fresh adapter; returns the body the fake received."""
    adapter = against(fake, **settings)
    try:
        receipt = await adapter.send(message)
    finally:
        await adapter.close()
    assert receipt.provider_message_id in fake.messages
    body: dict[str, Any] = fake.requests[-1]
    return body


async def send_fails(fake: FakeWhatsAppCloudApi, message: OutboundMessage | None = None) -> BaseException:
    adapter = against(fake)
    try:
        with pytest.raises((PermanentDeliveryError, TransientDeliveryError, ChannelAuthError)) as caught:
            await adapter.send(message or outbound())
    finally:
        await adapter.close()
    return caught.value


async def test_send_text(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    adapter = against(fake_whatsapp_cloud)
    try:
        receipt = await adapter.send(outbound())
    finally:
        await adapter.close()
    assert receipt.provider_message_id.startswith("wamid.")
    assert receipt.provider_message_id in fake_whatsapp_cloud.messages
    assert (receipt.status, receipt.extra) == ("sent", {"wa_id": "15558675310"})
    assert fake_whatsapp_cloud.requests == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+15558675310",
            "type": "text",
            "text": {"preview_url": False, "body": "Your order has shipped"},
        }
    ]


@pytest.mark.parametrize(
    ("attachment", "kind", "media"),
    [
        (
            Attachment("https://cdn.example.com/box.jpg", "image/jpeg"),
            "image",
            {"link": "https://cdn.example.com/box.jpg", "caption": "Here it is"},
        ),
        (
            Attachment("https://cdn.example.com/unboxing.mp4"),
            "video",
            {"link": "https://cdn.example.com/unboxing.mp4", "caption": "Here it is"},
        ),
        (
            Attachment("https://cdn.example.com/files/Invoice%20123.pdf", "application/pdf"),
            "document",
            {
                "link": "https://cdn.example.com/files/Invoice%20123.pdf",
                "caption": "Here it is",
                "filename": "Invoice 123.pdf",
            },
        ),
        (
            Attachment("https://cdn.example.com/label.webp", "image/webp"),
            "document",
            {"link": "https://cdn.example.com/label.webp", "caption": "Here it is", "filename": "label.webp"},
        ),
    ],
)
async def test_send_media_by_link_with_the_text_as_caption(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi, attachment: Attachment, kind: str, media: dict[str, str]
) -> None:
    body = await send(fake_whatsapp_cloud, outbound("Here it is", attachments=(attachment,)))
    assert (body["type"], body[kind]) == (kind, media)


async def test_send_audio_without_text(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    voice = Attachment("https://cdn.example.com/hello.ogg", "audio/ogg")
    body = await send(fake_whatsapp_cloud, outbound("", attachments=(voice,)))
    assert (body["type"], body["audio"]) == ("audio", {"link": "https://cdn.example.com/hello.ogg"})


async def test_audio_with_text_goes_as_text_with_a_link(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    voice = Attachment("https://cdn.example.com/hello.ogg", "audio/ogg")
    body = await send(fake_whatsapp_cloud, outbound("Listen", attachments=(voice,)))
    assert body["text"] == {"preview_url": False, "body": "Listen\n\nhttps://cdn.example.com/hello.ogg"}


async def test_further_attachments_become_links_in_the_caption(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    attachments = (
        Attachment("https://cdn.example.com/a.png", "image/png"),
        Attachment("https://cdn.example.com/b.png", "image/png"),
        Attachment("https://cdn.example.com/c.pdf", "application/pdf"),
    )
    body = await send(fake_whatsapp_cloud, outbound("Photos", attachments=attachments))
    assert body["image"] == {
        "link": "https://cdn.example.com/a.png",
        "caption": "Photos\n\nhttps://cdn.example.com/b.png\nhttps://cdn.example.com/c.pdf",
    }


async def test_text_too_long_for_a_caption_goes_as_text(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    text = "x" * 2000
    image = Attachment("https://cdn.example.com/a.png", "image/png")
    body = await send(fake_whatsapp_cloud, outbound(text, attachments=(image,)))
    assert body["type"] == "text"
    assert body["text"]["body"] == text + "\n\nhttps://cdn.example.com/a.png"


async def test_up_to_three_buttons_are_reply_buttons(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    buttons = (Button("track", "Track my order"), Button("human", "Talk to a person"))
    body = await send(fake_whatsapp_cloud, outbound("How can we help?", buttons=buttons))
    assert body["type"] == "interactive"
    assert body["interactive"] == {
        "type": "button",
        "body": {"text": "How can we help?"},
        "action": {
            "buttons": [
                {"type": "reply", "reply": {"id": "track", "title": "Track my order"}},
                {"type": "reply", "reply": {"id": "human", "title": "Talk to a person"}},
            ]
        },
    }


async def test_reply_buttons_carry_an_image_as_header(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    image = Attachment("https://cdn.example.com/plant.jpg", "image/jpeg")
    message = outbound("Like it?", buttons=(Button("yes", "Yes"), Button("no", "No")), attachments=(image,))
    body = await send(fake_whatsapp_cloud, message)
    assert body["interactive"]["header"] == {
        "type": "image",
        "image": {"link": "https://cdn.example.com/plant.jpg"},
    }
    assert body["interactive"]["body"] == {"text": "Like it?"}


async def test_more_buttons_become_a_list(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    buttons = tuple(Button(f"slot-{n}", f"{n}:00") for n in range(9, 13))
    body = await send(fake_whatsapp_cloud, outbound("Pick a delivery slot", buttons=buttons))
    assert body["interactive"] == {
        "type": "list",
        "body": {"text": "Pick a delivery slot"},
        "action": {
            "button": "Choose an option",
            "sections": [{"rows": [{"id": f"slot-{n}", "title": f"{n}:00"} for n in range(9, 13)]}],
        },
    }


async def test_long_button_titles_become_list_rows_with_the_whole_title_below(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    buttons = (Button("late", "My parcel arrived late and damaged"), Button("ok", "All good"))
    body = await send(fake_whatsapp_cloud, outbound("How was it?", buttons=buttons))
    assert body["interactive"]["type"] == "list"
    assert body["interactive"]["action"]["sections"][0]["rows"] == [
        {
            "id": "late",
            "title": "My parcel arrived late …",
            "description": "My parcel arrived late and damaged",
        },
        {"id": "ok", "title": "All good"},
    ]


async def test_more_than_ten_buttons_are_refused_before_sending(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    buttons = tuple(Button(str(n), f"Option {n}") for n in range(11))
    error = await send_fails(fake_whatsapp_cloud, outbound("Too many", buttons=buttons))
    assert isinstance(error, PermanentDeliveryError) and error.code == "too_many_buttons"
    assert fake_whatsapp_cloud.requests == []


async def test_a_template_fills_its_placeholders_in_order(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    template = Template("order_update", None, {"2": "#1234", "10": "ten", "1": "Sheena"})
    body = await send(fake_whatsapp_cloud, outbound("", template=template))
    assert body["type"] == "template"
    assert body["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Sheena"},
                    {"type": "text", "text": "#1234"},
                    {"type": "text", "text": "ten"},
                ],
            }
        ],
    }


async def test_a_template_with_named_parameters_and_a_header_image(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    template = Template("shipped", "pt_BR", {"first_name": "Ana"})
    image = Attachment("https://cdn.example.com/parcel.png", "image/png")
    body = await send(fake_whatsapp_cloud, outbound("", template=template, attachments=(image,)))
    assert body["template"] == {
        "name": "shipped",
        "language": {"code": "pt_BR"},
        "components": [
            {
                "type": "header",
                "parameters": [{"type": "image", "image": {"link": "https://cdn.example.com/parcel.png"}}],
            },
            {"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}]},
        ],
    }


async def test_a_template_without_variables_has_no_components(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    body = await send(fake_whatsapp_cloud, outbound("", template=Template("hello_world", "en_US")))
    assert body["template"] == {"name": "hello_world", "language": {"code": "en_US"}}


async def test_an_empty_message_is_refused(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    error = await send_fails(fake_whatsapp_cloud, outbound(""))
    assert isinstance(error, PermanentDeliveryError) and error.code == "empty_message"


async def test_a_customer_without_a_phone_number_cannot_be_messaged_yet(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    message = OutboundMessage(1, Address("whatsapp_user_id", "US.13491208655302741918"), "Hi")
    error = await send_fails(fake_whatsapp_cloud, message)
    assert isinstance(error, PermanentDeliveryError) and error.code == "no_phone_number"
    assert fake_whatsapp_cloud.requests == []


async def test_re_engagement_error_is_permanent_and_says_to_send_a_template(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    fake_whatsapp_cloud.fail_next(
        400,
        131047,
        "(#131047) Re-engagement message",
        details="Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number.",
    )
    error = await send_fails(fake_whatsapp_cloud)
    assert isinstance(error, PermanentDeliveryError)
    assert error.code == "131047"
    assert "send a template" in str(error) and "more than 24 hours" in str(error)


async def test_throughput_limit_is_transient_with_retry_after(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    fake_whatsapp_cloud.fail_next(400, 130429, "(#130429) Rate limit hit", retry_after=7)
    error = await send_fails(fake_whatsapp_cloud)
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == 7.0
    assert fake_whatsapp_cloud.messages == {}


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 4), (400, 80007), (400, 131048), (400, 131056), (429, 0), (500, 131000), (503, 2), (502, 1)],
)
async def test_rate_limits_and_outages_are_transient(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi, status: int, code: int
) -> None:
    fake_whatsapp_cloud.fail_next(status, code, "Try again")
    error = await send_fails(fake_whatsapp_cloud)
    assert isinstance(error, TransientDeliveryError) and error.retry_after is None


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, 131026, "(#131026) Message undeliverable"),
        (400, 100, "(#100) Invalid parameter"),
        (400, 132001, "(#132001) Template name does not exist in the translation"),
        (404, 803, "Some of the aliases you requested do not exist"),
    ],
)
async def test_rejections_are_permanent_with_metas_code(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi, status: int, code: int, message: str
) -> None:
    fake_whatsapp_cloud.fail_next(status, code, message, details="Details from Meta.")
    error = await send_fails(fake_whatsapp_cloud)
    assert isinstance(error, PermanentDeliveryError) and error.code == str(code)
    assert "Details from Meta." in str(error)
    assert len(fake_whatsapp_cloud.requests) == 1


@pytest.mark.parametrize(("status", "code"), [(401, 190), (403, 10), (400, 200), (400, 0)])
async def test_refused_tokens_and_permissions_are_auth_errors(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi, status: int, code: int
) -> None:
    fake_whatsapp_cloud.fail_next(status, code, "(#10) Application does not have permission for this action")
    assert isinstance(await send_fails(fake_whatsapp_cloud), ChannelAuthError)


async def test_a_wrong_access_token_is_an_auth_error(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    adapter = WhatsAppCloud.from_settings(
        {
            "phone_number_id": fake_whatsapp_cloud.phone_number_id,
            "api_base_url": fake_whatsapp_cloud.base_url,
        },
        SECRETS | {"access_token": "EAA-revoked"},
    )
    try:
        with pytest.raises(ChannelAuthError, match="access token"):
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert fake_whatsapp_cloud.messages == {} and len(fake_whatsapp_cloud.requests) == 1


async def test_a_wrong_phone_number_id_is_permanent(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    adapter = against(fake_whatsapp_cloud, phone_number_id="999999999999999")
    try:
        with pytest.raises(PermanentDeliveryError, match="does not exist") as caught:
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert caught.value.code == "100"


async def test_a_hung_request_times_out_as_transient(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    fake_whatsapp_cloud.delay_next(30)
    adapter = against(fake_whatsapp_cloud, timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TransientDeliveryError):
            await adapter.send(outbound())
    finally:
        await adapter.close()
    assert time.monotonic() - started < 5


async def test_an_unreachable_api_is_transient() -> None:
    server = TestServer(web.Application())
    await server.start_server()
    base_url = str(server.make_url("")).rstrip("/")
    await server.close()  # nothing listens there any more
    adapter = channel(api_base_url=base_url)
    try:
        with pytest.raises(TransientDeliveryError, match="unreachable"):
            await adapter.send(outbound())
    finally:
        await adapter.close()


async def test_an_answer_without_a_message_id_is_permanent() -> None:
    async def messages(request: web.Request) -> web.Response:
        return web.json_response({"messaging_product": "whatsapp", "messages": []})

    app = web.Application()
    app.router.add_post("/{version}/{phone}/messages", messages)
    server = TestServer(app)
    await server.start_server()
    adapter = channel(api_base_url=str(server.make_url("")).rstrip("/"))
    try:
        with pytest.raises(PermanentDeliveryError, match="without a message id"):
            await adapter.send(outbound())
    finally:
        await adapter.close()
        await server.close()


async def test_one_session_serves_overlapping_sends_and_reopens_after_close(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    adapter = against(fake_whatsapp_cloud)
    receipts = await asyncio.gather(*(adapter.send(outbound(f"Message {n}")) for n in range(5)))
    session = adapter._session
    await adapter.send(outbound())
    assert adapter._session is session
    await adapter.close()
    assert session is not None and session.closed
    await adapter.send(outbound())
    await adapter.close()
    assert len({r.provider_message_id for r in receipts}) == 5
    assert len(fake_whatsapp_cloud.messages) == 7


# --- media ------------------------------------------------------------------------------------


async def test_download_media_of_an_inbound_image(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    media_id = fake_whatsapp_cloud.add_media(b"\xff\xd8\xff\xe0 a succulent", "image/jpeg")
    payload = with_message("message__image", image={"id": media_id, "mime_type": "image/jpeg", "sha256": "x"})
    adapter = against(fake_whatsapp_cloud)
    try:
        [event] = adapter.parse(webhook(payload))
        assert isinstance(event, InboundMessage)
        assert event.attachments[0].url == f"{fake_whatsapp_cloud.base_url}/{DEFAULT_API_VERSION}/{media_id}"
        data, mime_type = await adapter.download_media(event.extra["media_id"])
    finally:
        await adapter.close()
    assert (data, mime_type) == (b"\xff\xd8\xff\xe0 a succulent", "image/jpeg")
    assert fake_whatsapp_cloud.media_requests[0] == f"/{DEFAULT_API_VERSION}/{media_id}"
    assert fake_whatsapp_cloud.media_requests[1].startswith("/whatsapp_business/attachments/?mid=")


@pytest.mark.parametrize("report_size", [True, False])
async def test_download_media_refuses_more_than_16_mb(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi, report_size: bool
) -> None:
    media_id = fake_whatsapp_cloud.add_media(
        b"v" * (MAX_MEDIA_BYTES + 1), "video/mp4", report_size=report_size
    )
    adapter = against(fake_whatsapp_cloud)
    try:
        with pytest.raises(PermanentDeliveryError, match="more than") as caught:
            await adapter.download_media(media_id)
    finally:
        await adapter.close()
    assert caught.value.code == "media_too_large"
    # Told the size up front, the adapter does not even fetch the bytes.
    assert len(fake_whatsapp_cloud.media_requests) == (1 if report_size else 2)


async def test_download_media_of_exactly_16_mb_streams_through(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    media_id = fake_whatsapp_cloud.add_media(b"a" * MAX_MEDIA_BYTES, "audio/ogg", report_size=False)
    adapter = against(fake_whatsapp_cloud)
    try:
        data, mime_type = await adapter.download_media(media_id)
    finally:
        await adapter.close()
    assert (len(data), mime_type) == (MAX_MEDIA_BYTES, "audio/ogg")


async def test_download_media_of_an_unknown_id_is_permanent(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    adapter = against(fake_whatsapp_cloud)
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            await adapter.download_media("1234567890")
    finally:
        await adapter.close()
    assert caught.value.code == "100"


async def test_download_media_refuses_ids_that_are_not_ids(fake_whatsapp_cloud: FakeWhatsAppCloudApi) -> None:
    adapter = against(fake_whatsapp_cloud)
    try:
        with pytest.raises(PermanentDeliveryError, match="not a WhatsApp media id"):
            await adapter.download_media("../1/messages")
    finally:
        await adapter.close()
    assert fake_whatsapp_cloud.media_requests == []


async def test_download_media_with_a_wrong_token_is_an_auth_error(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    media_id = fake_whatsapp_cloud.add_media(b"x", "image/png")
    adapter = WhatsAppCloud.from_settings(
        {
            "phone_number_id": fake_whatsapp_cloud.phone_number_id,
            "api_base_url": fake_whatsapp_cloud.base_url,
        },
        SECRETS | {"access_token": "EAA-revoked"},
    )
    try:
        with pytest.raises(ChannelAuthError):
            await adapter.download_media(media_id)
    finally:
        await adapter.close()


# --- the fake's own webhooks, end to end through the adapter ------------------------------------


async def test_status_webhooks_from_the_fake_verify_and_parse(
    fake_whatsapp_cloud: FakeWhatsAppCloudApi,
) -> None:
    adapter = against(fake_whatsapp_cloud)
    events: list[InboundEvent] = []

    async def hook(request: web.Request) -> web.Response:
        hook_request = WebhookRequest(
            method="POST", url=str(request.url), route="", headers=request.headers, body=await request.read()
        )
        try:
            adapter.verify(hook_request)
        except SignatureError:
            return web.Response(status=403)
        events.extend(adapter.parse(hook_request))
        return web.Response()

    app = web.Application()
    app.router.add_post("/webhooks/9", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake_whatsapp_cloud.subscribe(str(server.make_url("/webhooks/9")))
    try:
        receipt = await adapter.send(outbound())
        wamid = receipt.provider_message_id
        assert await fake_whatsapp_cloud.send_status(wamid, "sent") == 200
        assert await fake_whatsapp_cloud.send_status(wamid, "delivered") == 200
        assert (
            await fake_whatsapp_cloud.send_status(
                wamid, "failed", error_code=131026, error_title="Message undeliverable"
            )
            == 200
        )
        assert (
            await fake_whatsapp_cloud.deliver(inbound_payload(text_message("hi")), signature="sha256=00")
        ).status == 403
    finally:
        await adapter.close()
        await server.close()
    assert [(e.provider_message_id, e.status) for e in events if isinstance(e, DeliveryStatus)] == [
        (wamid, "sent"),
        (wamid, "delivered"),
        (wamid, "failed"),
    ]
    assert isinstance(events[2], DeliveryStatus) and events[2].error_code == "131026"
