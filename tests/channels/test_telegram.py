"""The Telegram adapter: fixture updates in, normalised events out; sends go through PTB to a fake Bot API."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.base import (
    Address,
    Attachment,
    Button,
    ButtonReply,
    ChannelAuthError,
    ConfigurationError,
    InboundEvent,
    InboundMessage,
    Location,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    SharedContact,
    SignatureError,
    TransientDeliveryError,
    WebhookRequest,
)
from channels.telegram import Telegram
from tests.fakes.telegram_api import (
    DEFAULT_BOT_TOKEN,
    DEFAULT_WEBHOOK_SECRET,
    FIXTURES,
    USER_ID,
    FakeTelegramApi,
    fake_telegram,
    load_fixture,
    text_update,
)

__all__ = ["fake_telegram"]  # the fixture, imported so pytest finds it here

HOOK_URL = "https://parley.example.com/webhooks/7"
HEADER = "X-Telegram-Bot-Api-Secret-Token"
SECRETS = {"bot_token": DEFAULT_BOT_TOKEN, "webhook_secret": DEFAULT_WEBHOOK_SECRET}


def channel(**settings: Any) -> Telegram:
    return Telegram.from_settings(settings, SECRETS)


def webhook(update: Any, *, headers: dict[str, str] | None = None) -> WebhookRequest:
    """A request as the gateway builds it, carrying the secret token as Telegram sends it."""
    body = update if isinstance(update, bytes) else json.dumps(update).encode()
    return WebhookRequest(
        method="POST",
        url=HOOK_URL,
        route="",
        headers={HEADER: DEFAULT_WEBHOOK_SECRET} if headers is None else headers,
        body=body,
    )


def receive(update: dict[str, Any] | str) -> Sequence[InboundEvent]:
    """Verify and parse an update (or the fixture of that name) the way the gateway does."""
    request = webhook(load_fixture(update) if isinstance(update, str) else update)
    adapter = channel()
    adapter.verify(request)
    return adapter.parse(request)


def receive_one(update: dict[str, Any] | str) -> InboundMessage:
    [event] = receive(update)
    assert isinstance(event, InboundMessage)
    return event


def outbound(text: str = "Your order has shipped", **kwargs: Any) -> OutboundMessage:
    return OutboundMessage(message_id=1, recipient=Address("telegram", str(USER_ID)), text=text, **kwargs)


ADA = Address("telegram", str(USER_ID))


# --- inbound messages -------------------------------------------------------------------------


def test_text_message() -> None:
    event = receive_one("message__text")
    assert event == InboundMessage(
        provider_message_id="804512001",
        sender=ADA,
        recipient=None,
        text="Hi, is my order on its way?",
        sender_name="Ada Lovelace",
        extra={"chat_id": USER_ID, "chat_type": "private", "message_id": 4417, "username": "ada_l"},
    )


def test_group_message_is_from_the_member_and_keeps_the_group_chat() -> None:
    event = receive_one("message__group_text")
    assert (event.sender, event.sender_name) == (ADA, "Ada")
    assert event.extra["chat_id"] == -1001987654321
    assert (event.extra["chat_type"], event.extra["chat_title"]) == ("supergroup", "Acme customers")


def test_photo_keeps_the_largest_size_and_the_caption() -> None:
    event = receive_one("message__photo")
    assert event.text == "The box arrived like this"
    assert event.attachments == (
        Attachment(url="tg-file:AgACAgQAAxkBAAIBZ2aZ-large", content_type="image/jpeg", size=84216),
    )
    assert event.extra["media_group_id"] == "13992158327851244"


def test_document_keeps_name_type_and_size() -> None:
    event = receive_one("message__document")
    assert event.text == "Here is my receipt"
    assert event.attachments == (
        Attachment(
            url="tg-file:BQACAgQAAxkBAAIBaGaZ-receipt",
            content_type="application/pdf",
            filename="receipt-1042.pdf",
            size=48213,
        ),
    )


def test_voice_note_without_caption() -> None:
    event = receive_one("message__voice")
    assert event.text == ""
    assert event.attachments == (
        Attachment(url="tg-file:AwACAgQAAxkBAAIBaWaZ-voice", content_type="audio/ogg", size=13056),
    )


def test_video() -> None:
    event = receive_one("message__video")
    assert event.text == "Unboxing"
    [video] = event.attachments
    assert (video.url, video.content_type, video.filename) == (
        "tg-file:BAACAgQAAxkBAAIBamaZ-video",
        "video/mp4",
        "unboxing.mp4",
    )


def test_animation_is_not_also_reported_as_its_document_twin() -> None:
    update = load_fixture("message__text")
    message = update["message"]
    del message["text"]
    gif = {"file_id": "CgACAgQ-gif", "file_unique_id": "u-gif", "width": 320, "height": 240, "duration": 2}
    message["animation"] = {**gif, "mime_type": "video/mp4", "file_name": "party.mp4"}
    message["document"] = {"file_id": "CgACAgQ-gif", "file_unique_id": "u-gif", "mime_type": "video/mp4"}
    event = receive_one(update)
    assert [a.url for a in event.attachments] == ["tg-file:CgACAgQ-gif"]


def test_sticker_reads_as_its_emoji() -> None:
    update = load_fixture("message__text")
    del update["message"]["text"]
    update["message"]["sticker"] = {
        "file_id": "CAACAgIAAxkBAAEB-sticker",
        "file_unique_id": "u-sticker",
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": False,
        "emoji": "👍",
    }
    event = receive_one(update)
    assert event.text == "👍"
    assert event.attachments == (
        Attachment(url="tg-file:CAACAgIAAxkBAAEB-sticker", content_type="image/webp"),
    )


def test_contact_is_a_shared_contact_with_readable_text() -> None:
    event = receive_one("message__contact")
    assert event.shared_contacts == (
        SharedContact(name="Charles Babbage", phones=("+447700900123",), emails=("charles@example.com",)),
    )
    assert event.text == "Contact: Charles Babbage (+447700900123, charles@example.com)"
    assert event.sender == ADA  # the customer who shared it, not the contact


def test_location_with_readable_text() -> None:
    event = receive_one("message__location")
    assert event.location == Location(latitude=51.500729, longitude=-0.124625)
    assert event.text == "Location: 51.500729, -0.124625"


def test_venue_is_a_named_location() -> None:
    event = receive_one("message__venue")
    assert event.location == Location(
        51.5194, -0.127, name="British Museum", address="Great Russell St, London WC1B 3DG"
    )
    assert event.text == "British Museum, Great Russell St, London WC1B 3DG"


def test_button_press_is_a_button_reply_titled_like_the_pressed_button() -> None:
    event = receive_one("callback_query__button")
    assert event == InboundMessage(
        provider_message_id="804512010",
        sender=ADA,
        recipient=None,
        text="Talk to a person",
        sender_name="Ada Lovelace",
        button_reply=ButtonReply(id="human", title="Talk to a person"),
        extra={
            "callback_query_id": "530215379182736451",
            "chat_id": USER_ID,
            "chat_type": "private",
            "message_id": 4425,
            "username": "ada_l",
        },
    )


def test_button_press_on_a_message_too_old_to_show_falls_back_to_the_data() -> None:
    update = load_fixture("callback_query__button")
    # Telegram's InaccessibleMessage: the chat, the message id and date 0.
    update["callback_query"]["message"] = {
        "chat": {"id": USER_ID, "type": "private"},
        "message_id": 4425,
        "date": 0,
    }
    event = receive_one(update)
    assert event.button_reply == ButtonReply(id="human", title="human")
    assert (event.extra["chat_id"], event.extra["message_id"]) == (USER_ID, 4425)


def test_button_press_without_data_is_acknowledged_and_ignored() -> None:
    update = load_fixture("callback_query__button")
    del update["callback_query"]["data"]
    update["callback_query"]["game_short_name"] = "tetris"
    assert receive(update) == []


@pytest.mark.parametrize("name", ["edited_message__text", "channel_post__text"])
def test_update_types_parley_does_not_handle_give_no_events(name: str) -> None:
    assert receive(name) == []


def test_an_update_type_newer_than_ptb_gives_no_events() -> None:
    assert receive({"update_id": 804512099, "some_future_update": {"id": "x"}}) == []


def test_message_with_nothing_parley_can_show_gives_no_events() -> None:
    update = load_fixture("message__text")
    del update["message"]["text"]
    update["message"]["dice"] = {"emoji": "🎲", "value": 4}
    assert receive(update) == []


def test_fields_newer_than_ptb_are_kept_in_extra() -> None:
    update = load_fixture("message__text")
    update["message"]["some_future_field"] = {"x": 1}
    assert receive_one(update).extra["unparsed"] == {"some_future_field": {"x": 1}}


def test_sender_name_falls_back_to_the_username() -> None:
    user = {"id": USER_ID, "is_bot": False, "first_name": "", "username": "ada_l"}
    assert receive_one(text_update(1, "hi", user=user)).sender_name == "ada_l"


def test_extra_is_plain_json() -> None:
    for name in ("message__text", "message__photo", "message__group_text", "callback_query__button"):
        event = receive_one(name)
        assert json.loads(json.dumps(event.extra)) == event.extra


# --- malformed updates ------------------------------------------------------------------------


def test_update_without_update_id_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="update_id"):
        receive("malformed__no_update_id")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"update"',
        b'{"update_id": "804512001"}',
        b'{"update_id": true}',
        b'{"update_id": 1.5}',
    ],
)
def test_bodies_that_are_not_updates_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        channel().parse(webhook(body))


def mutate(path: Sequence[str], value: Any) -> dict[str, Any]:
    """The text fixture with the field at `path` set to `value` (removed when None)."""
    update = load_fixture("message__text")
    node = update
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return update


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("message", "chat"), None),
        (("message", "date"), None),
        (("message", "date"), "yesterday"),
        (("message", "from"), None),
        (("message", "from"), "Ada"),
        (("message", "from", "id"), "123456789"),
        (("message", "from", "id"), None),
        (("message", "chat", "id"), "me"),
        (("message", "text"), 42),
        (
            ("message", "photo"),
            [{"file_id": "../../etc/passwd", "file_unique_id": "x", "width": 1, "height": 1}],
        ),
        (("message", "location"), {"latitude": "north", "longitude": 0}),
        (("message", "location"), {"latitude": 91, "longitude": 0}),
        (("message",), "hello"),
    ],
)
def test_updates_with_bad_fields_are_malformed(path: Sequence[str], value: Any) -> None:
    with pytest.raises(MalformedPayload):
        receive(mutate(path, value))


# --- the webhook secret -----------------------------------------------------------------------


def test_verify_accepts_the_secret() -> None:
    channel().verify(webhook(load_fixture("message__text")))


def test_verify_accepts_a_lowercase_header_name() -> None:
    request = webhook(load_fixture("message__text"), headers={HEADER.lower(): DEFAULT_WEBHOOK_SECRET})
    channel().verify(request)


def test_verify_rejects_a_request_without_the_header() -> None:
    with pytest.raises(SignatureError, match="missing"):
        channel().verify(webhook(load_fixture("message__text"), headers={}))


@pytest.mark.parametrize(
    "secret", ["", "wrong-secret", DEFAULT_WEBHOOK_SECRET[:-1], DEFAULT_WEBHOOK_SECRET + "x", "sécret"]
)
def test_verify_rejects_a_wrong_secret(secret: str) -> None:
    with pytest.raises(SignatureError):
        channel().verify(webhook(load_fixture("message__text"), headers={HEADER: secret}))


def test_verify_rejects_the_bot_token_in_place_of_the_secret() -> None:
    with pytest.raises(SignatureError):
        channel().verify(webhook(load_fixture("message__text"), headers={HEADER: DEFAULT_BOT_TOKEN}))


# --- the webhook answer -----------------------------------------------------------------------


def test_a_button_press_is_answered_in_the_webhook_reply() -> None:
    adapter = channel()
    request = webhook(load_fixture("callback_query__button"))
    reply = adapter.acknowledge(request, adapter.parse(request))
    assert (reply.status, reply.content_type) == (200, "application/json")
    assert json.loads(reply.body) == {
        "method": "answerCallbackQuery",
        "callback_query_id": "530215379182736451",
    }


def test_a_button_press_parley_ignores_is_still_answered() -> None:
    update = load_fixture("callback_query__button")
    del update["callback_query"]["data"]
    adapter = channel()
    request = webhook(update)
    reply = adapter.acknowledge(request, adapter.parse(request))
    assert json.loads(reply.body)["method"] == "answerCallbackQuery"


@pytest.mark.parametrize("name", ["message__text", "edited_message__text", "channel_post__text"])
def test_other_updates_get_an_empty_200(name: str) -> None:
    adapter = channel()
    request = webhook(load_fixture(name))
    reply = adapter.acknowledge(request, adapter.parse(request))
    assert (reply.status, reply.body) == (200, "")


# --- configuration ----------------------------------------------------------------------------


def test_validate_config_cleans_settings_and_secrets() -> None:
    settings, secrets = Telegram.validate_config(
        {"api_base_url": " http://127.0.0.1:8081/ ", "timeout": 3},
        {"bot_token": f" {DEFAULT_BOT_TOKEN}\n", "webhook_secret": f"{DEFAULT_WEBHOOK_SECRET} "},
    )
    assert settings == {"api_base_url": "http://127.0.0.1:8081", "timeout": 3.0}
    assert secrets == SECRETS


def test_validate_config_defaults() -> None:
    settings, _ = Telegram.validate_config({}, SECRETS)
    assert settings == {"api_base_url": "https://api.telegram.org", "timeout": 10.0}


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"api_base_url": "ftp://api.telegram.org"}, "api_base_url"),
        ({"api_base_url": "api.telegram.org"}, "api_base_url"),
        ({"api_base_url": "https://api.telegram.org/?x=1"}, "api_base_url"),
        ({"api_base_url": 443}, "api_base_url"),
        ({"api_base_url": "https://api.telegram.org/{token}"}, "api_base_url"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 301}, "timeout"),
        ({"timeout": "fast"}, "timeout"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_validate_config_names_the_bad_setting(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        Telegram.validate_config(settings, SECRETS)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"bot_token": None}, "bot_token is required"),
        ({"bot_token": "  "}, "bot_token is required"),
        ({"bot_token": "AAHfakeTelegramBotToken"}, "bot_token must look like"),
        ({"bot_token": "bot:AAHfake"}, "bot_token must look like"),
        ({"bot_token": "7000000001:AAH fake"}, "bot_token must look like"),
        ({"webhook_secret": None}, "webhook_secret is required"),
        ({"webhook_secret": ""}, "webhook_secret is required"),
        ({"webhook_secret": "has spaces in it"}, "webhook_secret must be"),
        ({"webhook_secret": "semi;colon"}, "webhook_secret must be"),
        ({"webhook_secret": "a" * 257}, "webhook_secret must be"),
    ],
)
def test_validate_config_names_the_bad_secret(changes: dict[str, Any], field: str) -> None:
    secrets = {k: v for k, v in (SECRETS | changes).items() if v is not None}
    with pytest.raises(ConfigurationError, match=field):
        Telegram.validate_config({}, secrets)


def test_the_longest_webhook_secret_telegram_allows_is_accepted() -> None:
    Telegram.validate_config({}, {**SECRETS, "webhook_secret": "a" * 256})


def test_capabilities() -> None:
    caps = Telegram.capabilities
    assert (caps.media, caps.buttons, caps.max_text_length, caps.templates, caps.reply_window) == (
        True,
        True,
        4096,
        False,
        None,
    )
    assert (Telegram.name, Telegram.identity_kind, Telegram.consent_channel) == ("telegram",) * 3


# --- sending ----------------------------------------------------------------------------------


@pytest.fixture
async def adapter(fake_telegram: FakeTelegramApi) -> AsyncIterator[Telegram]:
    sender = against(fake_telegram)
    yield sender
    await sender.close()


def against(fake: FakeTelegramApi, **settings: Any) -> Telegram:
    return Telegram.from_settings(
        {"api_base_url": fake.base_url} | settings, {**SECRETS, "bot_token": fake.token}
    )


async def test_send_text(adapter: Telegram, fake_telegram: FakeTelegramApi) -> None:
    receipt = await adapter.send(outbound())
    [call] = fake_telegram.requests
    assert call.method == "sendMessage"
    assert call.params == {"chat_id": str(USER_ID), "text": "Your order has shipped"}
    [message] = fake_telegram.messages
    assert receipt.provider_message_id == f"{USER_ID}:{message['message_id']}"
    assert receipt.status == "sent"


async def test_send_buttons_as_an_inline_keyboard_one_a_row(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    buttons = (Button("track", "Track my order"), Button("human", "Talk to a person"))
    await adapter.send(outbound("How can we help?", buttons=buttons))
    [call] = fake_telegram.requests
    assert call.params["text"] == "How can we help?"
    assert call.json("reply_markup") == {
        "inline_keyboard": [
            [{"text": "Track my order", "callback_data": "track"}],
            [{"text": "Talk to a person", "callback_data": "human"}],
        ]
    }


async def test_a_button_id_longer_than_64_bytes_is_refused_before_sending(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    with pytest.raises(PermanentDeliveryError, match="64 bytes") as caught:
        await adapter.send(outbound(buttons=(Button("é" * 33, "Too long"),)))
    assert caught.value.code == "button_id_too_long"
    assert fake_telegram.requests == []


async def test_a_button_id_of_exactly_64_bytes_is_sent(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    await adapter.send(outbound(buttons=(Button("x" * 64, "Fits"),)))
    assert (
        fake_telegram.requests[0].json("reply_markup")["inline_keyboard"][0][0]["callback_data"] == "x" * 64
    )


async def test_send_an_image_by_url_with_the_text_as_caption(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    photo = Attachment("https://cdn.example.com/label.png", "image/png")
    receipt = await adapter.send(outbound("Your label", attachments=(photo,)))
    [call] = fake_telegram.requests
    assert call.method == "sendPhoto"
    assert call.params == {
        "chat_id": str(USER_ID),
        "photo": "https://cdn.example.com/label.png",
        "caption": "Your label",
    }
    assert receipt.provider_message_id == f"{USER_ID}:{fake_telegram.messages[0]['message_id']}"


async def test_send_a_document_and_guess_the_type_from_the_url(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    await adapter.send(outbound("", attachments=(Attachment("https://cdn.example.com/invoice.pdf"),)))
    [call] = fake_telegram.requests
    assert call.method == "sendDocument"
    assert call.params == {"chat_id": str(USER_ID), "document": "https://cdn.example.com/invoice.pdf"}


async def test_an_image_url_without_a_type_goes_as_a_photo(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    await adapter.send(outbound("", attachments=(Attachment("https://cdn.example.com/a.JPG?v=2"),)))
    assert fake_telegram.requests[0].method == "sendPhoto"


async def test_a_received_telegram_file_is_sent_back_by_file_id(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    [photo] = receive_one("message__photo").attachments
    await adapter.send(outbound("Is this the one?", attachments=(photo,)))
    [call] = fake_telegram.requests
    assert (call.method, call.params["photo"]) == ("sendPhoto", "AgACAgQAAxkBAAIBZ2aZ-large")


async def test_several_attachments_are_several_messages_with_caption_and_buttons_on_the_last(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    receipt = await adapter.send(
        outbound(
            "Which one?",
            attachments=(
                Attachment("https://cdn.example.com/a.png"),
                Attachment("https://cdn.example.com/b.pdf"),
            ),
            buttons=(Button("a", "The first"),),
        )
    )
    first, last = fake_telegram.requests
    assert (first.method, set(first.params)) == ("sendPhoto", {"chat_id", "photo"})
    assert (last.method, last.params["caption"]) == ("sendDocument", "Which one?")
    assert "reply_markup" in last.params
    ids = [m["message_id"] for m in fake_telegram.messages]
    assert receipt.provider_message_id == f"{USER_ID}:{ids[-1]}"
    assert receipt.extra["message_ids"] == ids


async def test_text_too_long_for_a_caption_follows_the_attachment(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    text = "x" * 1025
    await adapter.send(
        outbound(
            text, attachments=(Attachment("https://cdn.example.com/a.png"),), buttons=(Button("ok", "OK"),)
        )
    )
    photo, message = fake_telegram.requests
    assert (
        photo.method == "sendPhoto" and "caption" not in photo.params and "reply_markup" not in photo.params
    )
    assert message.method == "sendMessage" and message.params["text"] == text
    assert "reply_markup" in message.params


@pytest.mark.parametrize(
    "url",
    ["/etc/passwd", "file:///etc/passwd", "ftp://cdn.example.com/a.png", "tg-file:../../etc/passwd", "a.png"],
)
async def test_attachments_that_are_not_urls_or_telegram_files_are_refused(
    adapter: Telegram, fake_telegram: FakeTelegramApi, url: str
) -> None:
    # PTB would read a local path from disk and upload it.
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound(attachments=(Attachment(url, "image/png"),)))
    assert caught.value.code == "invalid_attachment"
    assert fake_telegram.requests == []


async def test_an_empty_message_is_refused(adapter: Telegram, fake_telegram: FakeTelegramApi) -> None:
    with pytest.raises(PermanentDeliveryError, match="nothing to send"):
        await adapter.send(outbound("  "))
    assert fake_telegram.requests == []


@pytest.mark.parametrize("recipient", [Address("phone", "+14155550100"), Address("telegram", "@ada_l")])
async def test_a_recipient_that_is_not_a_chat_id_is_refused(
    adapter: Telegram, fake_telegram: FakeTelegramApi, recipient: Address
) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(OutboundMessage(1, recipient, "hi"))
    assert caught.value.code == "invalid_recipient"
    assert fake_telegram.requests == []


async def test_a_group_chat_id_is_sent_to(adapter: Telegram, fake_telegram: FakeTelegramApi) -> None:
    receipt = await adapter.send(OutboundMessage(1, Address("telegram", "-1001987654321"), "hi all"))
    assert fake_telegram.requests[0].params["chat_id"] == "-1001987654321"
    assert receipt.provider_message_id.startswith("-1001987654321:")


# --- errors -----------------------------------------------------------------------------------


# PTB itself reads the deprecated int `retry_after` while building RetryAfter.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_flood_control_is_transient_with_retry_after(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    fake_telegram.fail_next(429, "Too Many Requests: retry after 7", retry_after=7)
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.retry_after == 7.0
    assert fake_telegram.messages == []


async def test_retry_after_with_ptb_timedeltas_enabled(
    adapter: Telegram, fake_telegram: FakeTelegramApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    fake_telegram.fail_next(429, "Too Many Requests: retry after 3", retry_after=3)
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.retry_after == 3.0


async def test_a_blocked_bot_is_permanent_with_a_clear_reason(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    fake_telegram.fail_next(403, "Forbidden: bot was blocked by the user")
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.code == "blocked"
    assert "blocked the bot" in str(caught.value)


async def test_other_forbidden_answers_are_permanent(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    fake_telegram.fail_next(403, "Forbidden: bot can't initiate conversation with a user")
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.code == "forbidden"
    assert "can't initiate conversation" in str(caught.value)


async def test_bad_request_is_permanent_with_telegrams_description(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    fake_telegram.fail_next(400, "Bad Request: chat not found")
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.code == "bad_request"
    assert str(caught.value) == "Chat not found"  # PTB drops the "Bad Request: " prefix


async def test_a_message_the_fake_refuses_is_permanent(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    with pytest.raises(PermanentDeliveryError, match="too long"):
        await adapter.send(outbound("x" * 4097))


async def test_a_group_that_became_a_supergroup_is_permanent(
    adapter: Telegram, fake_telegram: FakeTelegramApi
) -> None:
    fake_telegram.fail_next(
        400, "Bad Request: group chat was upgraded to a supergroup chat", migrate_to_chat_id=-1001987654321
    )
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(OutboundMessage(1, Address("telegram", "-4001234567"), "hi all"))
    assert caught.value.code == "chat_migrated"
    assert "-1001987654321" in str(caught.value)


async def test_a_wrong_token_is_an_auth_error(fake_telegram: FakeTelegramApi) -> None:
    sender = Telegram.from_settings(
        {"api_base_url": fake_telegram.base_url}, {**SECRETS, "bot_token": "7000000001:revoked-token"}
    )
    try:
        with pytest.raises(ChannelAuthError):
            await sender.send(outbound())
    finally:
        await sender.close()
    assert len(fake_telegram.requests) == 1 and fake_telegram.messages == []


async def test_server_errors_are_transient(adapter: Telegram, fake_telegram: FakeTelegramApi) -> None:
    fake_telegram.fail_next(502, "Bad Gateway")
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.retry_after is None
    await adapter.send(outbound())  # the failure was used up
    assert len(fake_telegram.messages) == 1


async def test_a_hung_request_times_out_as_transient(fake_telegram: FakeTelegramApi) -> None:
    fake_telegram.delay_next(30)
    sender = against(fake_telegram, timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TransientDeliveryError):
            await sender.send(outbound())
    finally:
        await sender.close()
    assert time.monotonic() - started < 5


async def test_an_unreachable_api_is_transient() -> None:
    server = TestServer(web.Application())
    await server.start_server()
    base_url = str(server.make_url("")).rstrip("/")
    await server.close()  # nothing listens there any more
    sender = Telegram.from_settings({"api_base_url": base_url}, SECRETS)
    try:
        with pytest.raises(TransientDeliveryError):
            await sender.send(outbound())
    finally:
        await sender.close()


async def test_send_works_again_after_close(fake_telegram: FakeTelegramApi) -> None:
    sender = against(fake_telegram)
    await sender.send(outbound())
    await sender.close()
    await sender.send(outbound())
    await sender.close()
    await sender.close()  # closing twice is harmless
    assert len(fake_telegram.messages) == 2


async def test_the_bot_token_stays_out_of_the_logs(
    adapter: Telegram, fake_telegram: FakeTelegramApi, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await adapter.send(outbound())
    assert "/bot<redacted>/sendMessage" in caplog.text
    assert fake_telegram.token not in caplog.text


# --- any field, any value ---------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.json") if not p.stem.startswith("malformed__"))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if len(prefix) >= 2 else []  # the update_id and the update type stay
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        found += _paths(child, (*prefix, key))
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(FIXTURE_NAMES), data=st.data())
def test_any_field_replaced_by_any_json_parses_or_is_malformed(name: str, data: st.DataObject) -> None:
    update = load_fixture(name)
    path = data.draw(st.sampled_from(_paths(update)))
    node = update
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = data.draw(JSON_VALUES)
    adapter = channel()
    request = webhook(update)
    try:
        events = adapter.parse(request)
    except MalformedPayload:
        return
    adapter.acknowledge(request, events)
    for event in events:
        assert isinstance(event, InboundMessage)
        json.dumps(event.extra)  # storable
