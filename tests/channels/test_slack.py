"""The Slack adapter: signed fixture events in, normalised messages out; sends through slack_sdk to a fake."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict, MultiDictProxy

from channels.base import (
    Address,
    Attachment,
    Button,
    ButtonReply,
    ChannelAuthError,
    ConfigurationError,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    SignatureError,
    TransientDeliveryError,
    WebhookRequest,
)
from channels.slack import Slack
from tests.fakes.slack_api import (
    APP_ID,
    BOT_ID,
    BOT_USER_ID,
    CHANNEL_ID,
    DEFAULT_BOT_TOKEN,
    DEFAULT_SIGNING_SECRET,
    FIXTURES,
    TEAM_ID,
    USER_ID,
    FakeSlackApi,
    block_actions_payload,
    bot_message_event,
    event_body,
    fake_slack,
    interactivity_body,
    load_fixture,
    message_event,
    sign,
)

__all__ = ["fake_slack"]  # the fixture, imported so pytest finds it here

HOOK_URL = "https://parley.example.com/webhooks/7"
SECRETS = {"bot_token": DEFAULT_BOT_TOKEN, "signing_secret": DEFAULT_SIGNING_SECRET}
ADA = Address("slack", f"{TEAM_ID}:{USER_ID}")
ROOT_TS = "1700000000.000100"
THREAD = f"{CHANNEL_ID}:{ROOT_TS}"


def channel(**settings: Any) -> Slack:
    return Slack.from_settings(settings, SECRETS)


def events_request(
    envelope: Any, *, headers: dict[str, str] | None = None, timestamp: int | None = None
) -> WebhookRequest:
    """An Events API request as the gateway builds it, signed as Slack signs it."""
    body = event_body(envelope)
    return WebhookRequest(
        method="POST",
        url=HOOK_URL,
        route="",
        headers=sign(body, DEFAULT_SIGNING_SECRET, timestamp) if headers is None else headers,
        body=body,
    )


def interactivity_request(payload: Any, *, form: dict[str, str] | None = None) -> WebhookRequest:
    """A button click as Slack posts it: a form whose `payload` field holds the JSON."""
    fields = {"payload": json.dumps(payload)} if form is None else form
    body = interactivity_body(payload)
    return WebhookRequest(
        method="POST",
        url=f"{HOOK_URL}/interactivity",
        route="interactivity",
        headers=sign(body, DEFAULT_SIGNING_SECRET),
        body=body,
        form=MultiDictProxy(MultiDict(fields)),
    )


def request_for(data: dict[str, Any] | str) -> WebhookRequest:
    """The request carrying a fixture (by name) or a payload: block_actions go to the interactivity route."""
    payload = load_fixture(data) if isinstance(data, str) else data
    if payload.get("type") == "block_actions":
        return interactivity_request(payload)
    return events_request(payload)


def receive(data: dict[str, Any] | str, **settings: Any) -> Sequence[InboundEvent]:
    """Verify and parse the way the gateway does."""
    request = request_for(data)
    adapter = channel(**settings)
    adapter.verify(request)
    return adapter.parse(request)


def receive_one(data: dict[str, Any] | str, **settings: Any) -> InboundMessage:
    [event] = receive(data, **settings)
    assert isinstance(event, InboundMessage)
    return event


# --- messages ---------------------------------------------------------------------------------


def test_a_top_level_message_starts_a_thread_rooted_at_itself() -> None:
    event = receive_one("message__top_level")
    assert event == InboundMessage(
        provider_message_id="Ev06A1B2C3D4",
        sender=ADA,
        recipient=None,
        # Slack escapes &, < and > in message text.
        text="Hi, my order #1042 hasn't arrived & the tracking page says <nothing>",
        thread_key=THREAD,
        extra={
            "channel": CHANNEL_ID,
            "ts": ROOT_TS,
            "thread_ts": None,
            "team": TEAM_ID,
            "event_time": 1700000000,
            "channel_type": "channel",
        },
    )


def test_a_reply_in_a_thread_belongs_to_the_threads_root() -> None:
    event = receive_one("message__in_thread")
    assert event.thread_key == THREAD
    assert (event.provider_message_id, event.text) == ("Ev06A1B2C3D5", "Any news on this?")
    assert (event.extra["ts"], event.extra["thread_ts"]) == ("1700000300.000400", ROOT_TS)


def test_another_person_in_the_thread_is_another_sender_in_the_same_thread() -> None:
    envelope = message_event("Same here", ts="1700000400.000500", thread_ts=ROOT_TS, user="U0G9QF9C6")
    event = receive_one(envelope)
    assert event.sender == Address("slack", f"{TEAM_ID}:U0G9QF9C6")
    assert event.thread_key == THREAD


def test_an_unthreaded_direct_message_joins_the_contacts_conversation_like_sms() -> None:
    event = receive_one("message__im")
    assert event.thread_key is None
    assert event.extra["channel_type"] == "im"


def test_a_thread_inside_a_direct_message_is_its_own_conversation() -> None:
    envelope = json.loads((FIXTURES / "message__im.json").read_text())
    envelope["event"]["thread_ts"] = "1700000400.000100"
    event = receive_one(envelope)
    assert event.thread_key == "D0LAN3B4K:1700000400.000100"


@pytest.mark.parametrize("name", ["message__bot", "message__bot_message"])
def test_bot_messages_are_ignored(name: str) -> None:
    assert receive(name) == []


def test_the_apps_own_reply_coming_back_as_an_event_is_ignored() -> None:
    # Without this Parley would store its own replies as the customer's, and answer them.
    envelope = load_fixture("message__bot")
    del envelope["event"]["bot_id"]
    assert envelope["event"]["user"] == BOT_USER_ID
    assert receive(envelope) == []
    del envelope["authorizations"]
    assert envelope["event"]["app_id"] == APP_ID
    assert receive(envelope) == []


@pytest.mark.parametrize("name", ["message__changed", "message__deleted", "message__replied"])
def test_edits_deletions_and_thread_reports_are_ignored(name: str) -> None:
    assert receive(name) == []


@pytest.mark.parametrize("subtype", ["channel_join", "channel_topic", "pinned_item", "some_future_subtype"])
def test_other_message_subtypes_are_ignored(subtype: str) -> None:
    envelope = load_fixture("message__top_level")
    envelope["event"]["subtype"] = subtype
    assert receive(envelope) == []


def test_shared_files_are_attachments_named_in_the_text() -> None:
    event = receive_one("message__file_share")
    assert event.attachments == (
        Attachment(
            url="https://files.slack.com/files-pri/T061EG9R6-F0LAN4R2P/damaged-box.jpg",
            content_type="image/jpeg",
            filename="damaged-box.jpg",
            size=84216,
        ),
        Attachment(
            url="https://files.slack.com/files-pri/T061EG9R6-F0LAN4R3Q/receipt-1042.pdf",
            content_type="application/pdf",
            filename="receipt-1042.pdf",
            size=48213,
        ),
    )
    # The third file is hidden by the workspace's plan: Slack gives only its id.
    assert event.text == "damaged-box.jpg, receipt-1042.pdf"
    assert event.thread_key == THREAD
    assert event.extra["subtype"] == "file_share"
    assert event.extra["files"] == [
        {
            "id": "F0LAN4R2P",
            "name": "damaged-box.jpg",
            "permalink": "https://acme.slack.com/files/U061F7AUR/F0LAN4R2P/damaged-box.jpg",
        },
        {
            "id": "F0LAN4R3Q",
            "name": "receipt-1042.pdf",
            "permalink": "https://acme.slack.com/files/U061F7AUR/F0LAN4R3Q/receipt-1042.pdf",
        },
    ]


def test_a_file_shared_with_text_keeps_the_text() -> None:
    envelope = load_fixture("message__file_share")
    envelope["event"]["text"] = "The box arrived like this"
    assert receive_one(envelope).text == "The box arrived like this"


def test_a_thread_reply_also_sent_to_the_channel_is_a_message_in_the_thread() -> None:
    event = receive_one("message__thread_broadcast")
    assert (event.text, event.thread_key) == ("Found it, thanks everyone!", THREAD)


def test_a_message_with_nothing_to_show_is_ignored() -> None:
    envelope = load_fixture("message__top_level")
    envelope["event"]["text"] = ""
    assert receive(envelope) == []


def test_the_senders_name_is_taken_from_the_profile_when_slack_includes_it() -> None:
    envelope = load_fixture("message__top_level")
    envelope["event"]["user_profile"] = {"real_name": "Ada Lovelace", "display_name": "", "name": "ada"}
    assert receive_one(envelope).sender_name == "Ada Lovelace"


def test_slacks_retry_headers_are_kept_in_extra() -> None:
    body = event_body(load_fixture("message__top_level"))
    headers = sign(body) | {"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_timeout"}
    adapter = channel()
    request = events_request(body, headers=headers)
    adapter.verify(request)
    [event] = adapter.parse(request)
    assert isinstance(event, InboundMessage)
    assert (event.extra["retry_num"], event.extra["retry_reason"]) == (2, "http_timeout")
    assert event.provider_message_id == "Ev06A1B2C3D4"  # the same event_id as the first delivery


def test_app_mentions_are_ignored_as_duplicates_of_the_message_event() -> None:
    assert receive("app_mention__channel") == []


def test_other_event_types_are_ignored() -> None:
    assert receive("reaction_added__message") == []


def test_events_from_another_workspace_are_ignored_when_the_inbox_names_its_team() -> None:
    assert receive("message__other_team", team_id=TEAM_ID) == []


def test_without_a_team_id_every_workspace_the_app_is_in_is_served() -> None:
    event = receive_one("message__other_team")
    assert event.sender == Address("slack", "T0OTHER42:U09Z8Y7X6")


def test_url_verification_gives_no_events_and_acknowledge_answers_the_challenge() -> None:
    adapter = channel(team_id=TEAM_ID)
    request = events_request(load_fixture("url_verification__challenge"))
    adapter.verify(request)
    events = adapter.parse(request)
    assert events == []
    reply = adapter.acknowledge(request, events)
    assert (reply.status, reply.content_type) == (200, "application/json")
    assert json.loads(reply.body) == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


@pytest.mark.parametrize("name", ["message__top_level", "message__bot", "reaction_added__message"])
def test_other_events_get_an_empty_200(name: str) -> None:
    adapter = channel()
    request = events_request(load_fixture(name))
    reply = adapter.acknowledge(request, adapter.parse(request))
    assert (reply.status, reply.body) == (200, "")


def test_slack_rate_limiting_the_app_is_acknowledged() -> None:
    envelope = {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "type": "app_rate_limited",
        "team_id": TEAM_ID,
        "minute_rate_limited": 1518467820,
        "api_app_id": APP_ID,
    }
    assert receive(envelope) == []


def test_an_unknown_envelope_type_is_acknowledged() -> None:
    assert receive({"type": "some_future_envelope", "team_id": TEAM_ID}) == []


def test_extra_is_plain_json() -> None:
    for name in ("message__top_level", "message__file_share", "block_actions__button"):
        event = receive_one(name)
        assert json.loads(json.dumps(event.extra)) == event.extra


# --- button clicks ----------------------------------------------------------------------------


def test_a_button_click_is_a_button_reply_in_the_thread_of_the_message_it_was_on() -> None:
    event = receive_one("block_actions__button")
    assert event == InboundMessage(
        provider_message_id="action:6225104538455.6086131221.1c8a6e1f0d8b2a3c4d5e6f7a8b9c0d1e",
        sender=ADA,
        recipient=None,
        text="Talk to a person",
        sender_name="ada",
        button_reply=ButtonReply(id="human", title="Talk to a person"),
        thread_key=THREAD,
        extra={
            "team": TEAM_ID,
            "action_id": "parley_1",
            "channel": CHANNEL_ID,
            "message_ts": "1700000100.000200",
            "thread_ts": ROOT_TS,
            "action_ts": "1700001200.123456",
        },
    )


def test_a_click_on_a_top_level_message_threads_under_that_message() -> None:
    payload = load_fixture("block_actions__button")
    del payload["message"]["thread_ts"], payload["container"]["thread_ts"]
    assert receive_one(payload).thread_key == f"{CHANNEL_ID}:1700000100.000200"


def test_a_click_without_a_trigger_id_is_identified_by_its_action_ts() -> None:
    payload = load_fixture("block_actions__button")
    del payload["trigger_id"]
    assert receive_one(payload).provider_message_id == "action:1700001200.123456"


def test_a_button_without_a_value_replies_with_its_action_id() -> None:
    payload = load_fixture("block_actions__button")
    del payload["actions"][0]["value"]
    assert receive_one(payload).button_reply == ButtonReply(id="parley_1", title="Talk to a person")


def test_actions_that_are_not_buttons_are_ignored() -> None:
    payload = load_fixture("block_actions__button")
    payload["actions"] = [
        {
            "type": "static_select",
            "action_id": "pick",
            "block_id": "b",
            "selected_option": {"text": {"type": "plain_text", "text": "Blue"}, "value": "blue"},
            "action_ts": "1700001200.123456",
        }
    ]
    assert receive(payload) == []


def test_other_interactions_are_ignored() -> None:
    payload = {"type": "view_submission", "team": {"id": TEAM_ID}, "user": {"id": USER_ID}, "view": {}}
    adapter = channel()
    request = interactivity_request(payload)
    adapter.verify(request)
    assert adapter.parse(request) == []
    assert adapter.acknowledge(request, []).body == ""


def test_clicks_from_another_workspace_are_ignored_when_the_inbox_names_its_team() -> None:
    payload = load_fixture("block_actions__button")
    payload["team"]["id"] = "T0OTHER42"
    assert receive(payload, team_id=TEAM_ID) == []


def test_an_interactivity_form_without_payload_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="payload"):
        channel().parse(interactivity_request({}, form={"something": "else"}))


def test_an_interactivity_payload_that_is_not_json_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="not JSON"):
        channel().parse(interactivity_request({}, form={"payload": "{nope"}))


def test_an_unknown_route_is_malformed() -> None:
    request = events_request(load_fixture("message__top_level"))
    other = WebhookRequest(request.method, request.url, "status", request.headers, request.body)
    with pytest.raises(MalformedPayload, match="route"):
        channel().parse(other)


# --- malformed events -------------------------------------------------------------------------


def test_an_envelope_without_event_id_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="event_id"):
        receive("malformed__no_event_id")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"event"',
        b"{}",
        b'{"type": 1}',
        b'{"type": "url_verification"}',
    ],
)
def test_bodies_that_are_not_events_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        channel().parse(events_request(body))


def mutate(path: Sequence[str], value: Any, name: str = "message__top_level") -> dict[str, Any]:
    """The fixture with the field at `path` set to `value` (removed when None)."""
    data = load_fixture(name)
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("team_id",), None),
        (("team_id",), 42),
        (("event_time",), "yesterday"),
        (("event_time",), True),
        (("event",), None),
        (("event",), "hello"),
        (("event", "type"), None),
        (("event", "user"), None),
        (("event", "user"), "U061F7AUR:evil"),
        (("event", "channel"), None),
        (("event", "channel"), "C0LAN2Q65:1.2"),
        (("event", "ts"), None),
        (("event", "ts"), "yesterday"),
        (("event", "thread_ts"), 1700000000.0001),
        (("event", "text"), 42),
        (("event", "subtype"), 7),
        (("event", "files"), "damaged-box.jpg"),
    ],
)
def test_events_with_bad_fields_are_malformed(path: Sequence[str], value: Any) -> None:
    with pytest.raises(MalformedPayload):
        receive(mutate(path, value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("team",), None),
        (("team", "id"), None),
        (("user",), None),
        (("user", "id"), 42),
        (("actions",), "parley_1"),
        (("actions", 0, "action_id"), None),
        (("actions", 0, "action_ts"), "now"),
        (("container", "channel_id"), "C0LAN2Q65:x"),
        (("message", "ts"), 1700000100),
    ],
)
def test_clicks_with_bad_fields_are_malformed(path: Sequence[Any], value: Any) -> None:
    with pytest.raises(MalformedPayload):
        receive(mutate(path, value, "block_actions__button"))


# --- the signature ----------------------------------------------------------------------------


def test_verify_accepts_slacks_signature() -> None:
    channel().verify(events_request(load_fixture("message__top_level")))


def test_verify_accepts_lowercase_header_names() -> None:
    body = event_body(load_fixture("message__top_level"))
    headers = {k.lower(): v for k, v in sign(body).items()}
    channel().verify(events_request(body, headers=headers))


def test_verify_checks_the_raw_form_body_of_a_click() -> None:
    channel().verify(interactivity_request(load_fixture("block_actions__button")))


@pytest.mark.parametrize("missing", ["X-Slack-Request-Timestamp", "X-Slack-Signature"])
def test_verify_rejects_a_request_without_the_headers(missing: str) -> None:
    body = event_body(load_fixture("message__top_level"))
    headers = {k: v for k, v in sign(body).items() if k != missing}
    with pytest.raises(SignatureError, match=f"missing {missing}"):
        channel().verify(events_request(body, headers=headers))


def test_verify_rejects_an_unsigned_request() -> None:
    with pytest.raises(SignatureError, match="missing"):
        channel().verify(events_request(load_fixture("message__top_level"), headers={}))


def test_verify_rejects_a_signature_made_with_another_secret() -> None:
    body = event_body(load_fixture("message__top_level"))
    with pytest.raises(SignatureError, match="does not match"):
        channel().verify(events_request(body, headers=sign(body, "0" * 32)))


def test_verify_rejects_a_tampered_body() -> None:
    body = event_body(load_fixture("message__top_level"))
    tampered = body.replace(b"U061F7AUR", b"U0EVIL000")
    with pytest.raises(SignatureError, match="does not match"):
        channel().verify(events_request(tampered, headers=sign(body)))


def test_verify_rejects_a_signature_moved_to_another_timestamp() -> None:
    body = event_body(load_fixture("message__top_level"))
    headers = sign(body, timestamp=int(time.time()) - 10)
    headers["X-Slack-Request-Timestamp"] = str(int(time.time()))
    with pytest.raises(SignatureError, match="does not match"):
        channel().verify(events_request(body, headers=headers))


@pytest.mark.parametrize("age", [301, -301, 3600, -86400])
def test_verify_rejects_a_stale_timestamp_even_when_correctly_signed(age: int) -> None:
    with pytest.raises(SignatureError, match="stale"):
        channel().verify(events_request(load_fixture("message__top_level"), timestamp=int(time.time()) - age))


@pytest.mark.parametrize("age", [290, -290])
def test_verify_accepts_a_timestamp_within_five_minutes(age: int) -> None:
    channel().verify(events_request(load_fixture("message__top_level"), timestamp=int(time.time()) - age))


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        ("now", None),
        ("-1", None),
        ("1.5e9", None),
        ("\uff11\uff17" + "\uff10" * 8, None),  # fullwidth digits, which int() takes
        (None, "v1=abc"),
        (None, "v0=é"),
        (None, ""),
    ],
)
def test_verify_rejects_malformed_headers(timestamp: str | None, signature: str | None) -> None:
    body = event_body(load_fixture("message__top_level"))
    headers = sign(body)
    if timestamp is not None:
        headers["X-Slack-Request-Timestamp"] = timestamp
    if signature is not None:
        headers["X-Slack-Signature"] = signature
    with pytest.raises(SignatureError):
        channel().verify(events_request(body, headers=headers))


def test_verify_rejects_a_body_that_is_not_utf8() -> None:
    body = b'{"type": "event_callback", "x": "\xff"}'
    with pytest.raises(SignatureError):
        channel().verify(events_request(body, headers=sign(body)))


# --- configuration ----------------------------------------------------------------------------


def test_validate_config_cleans_settings_and_secrets() -> None:
    settings, secrets = Slack.validate_config(
        {"team_id": f" {TEAM_ID} ", "api_base_url": " http://127.0.0.1:8081/api ", "timeout": 3},
        {"bot_token": f" {DEFAULT_BOT_TOKEN}\n", "signing_secret": f"{DEFAULT_SIGNING_SECRET} "},
    )
    assert settings == {"team_id": TEAM_ID, "api_base_url": "http://127.0.0.1:8081/api/", "timeout": 3.0}
    assert secrets == SECRETS


def test_validate_config_defaults() -> None:
    settings, _ = Slack.validate_config({}, SECRETS)
    assert settings == {"api_base_url": "https://slack.com/api/", "timeout": 10.0}


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"team_id": "acme"}, "team_id"),
        ({"team_id": "U061F7AUR"}, "team_id"),
        ({"team_id": 42}, "team_id"),
        ({"api_base_url": "ftp://slack.com/api/"}, "api_base_url"),
        ({"api_base_url": "slack.com/api"}, "api_base_url"),
        ({"api_base_url": "https://slack.com/api/?x=1"}, "api_base_url"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 301}, "timeout"),
        ({"timeout": "fast"}, "timeout"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_validate_config_names_the_bad_setting(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        Slack.validate_config(settings, SECRETS)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bot_token": None}, "bot_token is required"),
        ({"bot_token": " "}, "bot_token is required"),
        ({"bot_token": "xoxp-1234-5678-abcdef"}, "xoxb-"),
        ({"bot_token": "xapp-1-A0MDYCDME-1234-abcdef"}, "xoxb-"),
        ({"bot_token": "xoxb-has spaces"}, "xoxb-"),
        ({"signing_secret": None}, "signing_secret is required"),
        ({"signing_secret": ""}, "signing_secret is required"),
        ({"signing_secret": "Jhj5dZrVaK7ZwHHjRyZWjbDl"}, "32-hex-digit"),
        ({"signing_secret": DEFAULT_SIGNING_SECRET + "0"}, "32-hex-digit"),
    ],
)
def test_validate_config_names_the_bad_secret(changes: dict[str, Any], message: str) -> None:
    secrets = {k: v for k, v in (SECRETS | changes).items() if v is not None}
    with pytest.raises(ConfigurationError, match=message):
        Slack.validate_config({}, secrets)


def test_capabilities() -> None:
    caps = Slack.capabilities
    assert (caps.media, caps.buttons, caps.max_text_length, caps.templates, caps.reply_window) == (
        False,
        True,
        40000,
        False,
        None,
    )
    assert (Slack.name, Slack.identity_kind, Slack.consent_channel) == ("slack",) * 3


def test_the_registry_knows_slack() -> None:
    from channels.registry import channel_class

    assert channel_class("slack") is Slack


# --- sending ----------------------------------------------------------------------------------


@pytest.fixture
async def adapter(fake_slack: FakeSlackApi) -> AsyncIterator[Slack]:
    sender = against(fake_slack)
    yield sender
    await sender.close()


def against(fake: FakeSlackApi, **settings: Any) -> Slack:
    return Slack.from_settings(
        {"api_base_url": fake.base_url} | settings, {**SECRETS, "bot_token": fake.token}
    )


def outbound(text: str = "We're looking into it", **kwargs: Any) -> OutboundMessage:
    kwargs.setdefault("thread_key", THREAD)
    return OutboundMessage(message_id=1, recipient=ADA, text=text, **kwargs)


async def test_a_reply_goes_into_the_conversations_thread(adapter: Slack, fake_slack: FakeSlackApi) -> None:
    receipt = await adapter.send(outbound())
    [call] = fake_slack.requests
    assert call.method == "chat.postMessage"
    assert call.content_type == "application/json"
    assert call.params == {"channel": CHANNEL_ID, "thread_ts": ROOT_TS, "text": "We're looking into it"}
    assert call.token == fake_slack.token  # as a bearer token, never in the body
    [posted] = fake_slack.messages
    assert receipt.provider_message_id == f"{CHANNEL_ID}:{posted['ts']}"
    assert receipt.status == "sent"
    assert receipt.extra == {"channel": CHANNEL_ID, "ts": posted["ts"], "thread_key": THREAD}


async def test_the_thread_key_parse_gives_is_the_thread_send_replies_in(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    inbound = receive_one("message__in_thread")
    await adapter.send(outbound(thread_key=inbound.thread_key))
    assert fake_slack.requests[0].params["thread_ts"] == ROOT_TS


async def test_buttons_go_as_blocks_with_the_text_as_fallback(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    buttons = (Button("track", "Track my order"), Button("human", "Talk to a person"))
    await adapter.send(outbound("How can we help?", buttons=buttons))
    [call] = fake_slack.requests
    assert call.params["text"] == "How can we help?"
    assert call.params["blocks"] == [
        {"type": "section", "text": {"type": "mrkdwn", "text": "How can we help?"}},
        {
            "type": "actions",
            "block_id": "parley_buttons_0",
            "elements": [
                {
                    "type": "button",
                    "action_id": "parley_0",
                    "text": {"type": "plain_text", "text": "Track my order", "emoji": True},
                    "value": "track",
                },
                {
                    "type": "button",
                    "action_id": "parley_1",
                    "text": {"type": "plain_text", "text": "Talk to a person", "emoji": True},
                    "value": "human",
                },
            ],
        },
    ]


async def test_a_click_on_a_sent_button_comes_back_as_that_buttons_reply(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    await adapter.send(outbound("How can we help?", buttons=(Button("human", "Talk to a person"),)))
    click = receive_one(block_actions_payload(fake_slack.messages[-1], "human"))
    assert click.button_reply == ButtonReply(id="human", title="Talk to a person")
    assert click.thread_key == THREAD


async def test_more_than_25_buttons_take_several_actions_blocks(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    buttons = tuple(Button(f"option-{i}", f"Option {i}") for i in range(30))
    await adapter.send(outbound("Pick one", buttons=buttons))
    blocks = fake_slack.requests[0].params["blocks"]
    assert [b["type"] for b in blocks] == ["section", "actions", "actions"]
    assert [len(b["elements"]) for b in blocks[1:]] == [25, 5]
    assert blocks[2]["elements"][0]["action_id"] == "parley_25"


async def test_long_button_titles_are_shortened(adapter: Slack, fake_slack: FakeSlackApi) -> None:
    await adapter.send(outbound("Pick", buttons=(Button("long", "x" * 100),)))
    label = fake_slack.requests[0].params["blocks"][1]["elements"][0]["text"]["text"]
    assert label == "x" * 74 + "…"


async def test_a_button_id_slack_cannot_carry_is_refused_before_sending(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound("Pick", buttons=(Button("x" * 2001, "Too long"),)))
    assert caught.value.code == "button_id_too_long"
    assert fake_slack.requests == []


async def test_long_text_with_buttons_is_split_into_sections(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    text = "a&b " * 1500  # 6000 characters, 10500 once escaped
    await adapter.send(outbound(text, buttons=(Button("ok", "OK"),)))
    sections = [b["text"]["text"] for b in fake_slack.requests[0].params["blocks"] if b["type"] == "section"]
    assert all(len(s) <= 3000 for s in sections)
    assert "".join(sections) == text.replace("&", "&amp;")


async def test_text_is_escaped_so_slack_shows_it_as_written(adapter: Slack, fake_slack: FakeSlackApi) -> None:
    await adapter.send(outbound("Use <b> & <!channel> as-is", buttons=(Button("ok", "OK"),)))
    params = fake_slack.requests[0].params
    assert params["text"] == "Use &lt;b&gt; &amp; &lt;!channel&gt; as-is"
    assert params["blocks"][0]["text"]["text"] == params["text"]


async def test_attachments_go_as_links_after_the_text(adapter: Slack, fake_slack: FakeSlackApi) -> None:
    label = Attachment("https://cdn.example.com/label.pdf", "application/pdf")
    await adapter.send(outbound("Your return label", attachments=(label,)))
    assert fake_slack.requests[0].params["text"] == "Your return label\n\nhttps://cdn.example.com/label.pdf"


async def test_without_a_thread_parley_writes_to_the_customers_dm(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    receipt = await adapter.send(outbound("Your order has shipped", thread_key=None))
    opened, posted = fake_slack.requests
    assert (opened.method, opened.params) == ("conversations.open", {"users": USER_ID})
    assert posted.method == "chat.postMessage"
    assert posted.params == {"channel": "D061F7AUR", "text": "Your order has shipped"}
    ts = fake_slack.messages[0]["ts"]
    assert receipt.provider_message_id == f"D061F7AUR:{ts}"
    assert receipt.extra["thread_key"] == f"D061F7AUR:{ts}"


@pytest.mark.parametrize(
    "recipient",
    [Address("phone", "+14155550100"), Address("slack", "U061F7AUR"), Address("slack", "T061EG9R6:")],
)
async def test_a_recipient_that_is_not_a_slack_user_is_refused(
    adapter: Slack, fake_slack: FakeSlackApi, recipient: Address
) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(OutboundMessage(1, recipient, "hi"))
    assert caught.value.code == "invalid_recipient"
    assert fake_slack.requests == []


@pytest.mark.parametrize(
    "thread_key", ["C0LAN2Q65", "C0LAN2Q65:", ":1700000000.000100", "c0lan:1.2", "C0:now"]
)
async def test_a_thread_key_that_is_not_a_slack_thread_is_refused(
    adapter: Slack, fake_slack: FakeSlackApi, thread_key: str
) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound(thread_key=thread_key))
    assert caught.value.code == "invalid_thread"
    assert fake_slack.requests == []


async def test_an_empty_message_is_refused(adapter: Slack, fake_slack: FakeSlackApi) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound("  "))
    assert caught.value.code == "no_text"
    assert fake_slack.requests == []


async def test_a_message_longer_than_slack_carries_is_refused(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound("x" * 40001))
    assert caught.value.code == "msg_too_long"
    assert fake_slack.requests == []


# --- errors -----------------------------------------------------------------------------------


async def test_a_rate_limit_is_transient_with_slacks_retry_after(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    fake_slack.fail_next("ratelimited", status=429, retry_after=7)
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.retry_after == 7.0
    assert len(fake_slack.requests) == 1  # the SDK did not retry on its own
    assert fake_slack.messages == []


async def test_a_rate_limit_without_retry_after_is_transient(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    fake_slack.fail_next("ratelimited")
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.retry_after is None


async def test_a_wrong_token_is_an_auth_error(fake_slack: FakeSlackApi) -> None:
    sender = Slack.from_settings(
        {"api_base_url": fake_slack.base_url}, {**SECRETS, "bot_token": "xoxb-1-2-revoked"}
    )
    try:
        with pytest.raises(ChannelAuthError, match="invalid_auth"):
            await sender.send(outbound())
    finally:
        await sender.close()
    assert len(fake_slack.requests) == 1 and fake_slack.messages == []


@pytest.mark.parametrize("error", ["not_authed", "account_inactive", "token_revoked", "missing_scope"])
async def test_refused_credentials_are_auth_errors(
    adapter: Slack, fake_slack: FakeSlackApi, error: str
) -> None:
    fake_slack.fail_next(error)
    with pytest.raises(ChannelAuthError, match=error):
        await adapter.send(outbound())


@pytest.mark.parametrize(
    "error", ["channel_not_found", "not_in_channel", "is_archived", "msg_too_long", "no_text"]
)
async def test_slacks_refusals_are_permanent_with_its_error_code(
    adapter: Slack, fake_slack: FakeSlackApi, error: str
) -> None:
    fake_slack.fail_next(error)
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.code == error


async def test_not_in_channel_says_what_to_do(adapter: Slack, fake_slack: FakeSlackApi) -> None:
    fake_slack.fail_next("not_in_channel")
    with pytest.raises(PermanentDeliveryError, match="/invite"):
        await adapter.send(outbound())


async def test_a_dm_to_an_unknown_user_is_permanent(adapter: Slack, fake_slack: FakeSlackApi) -> None:
    fake_slack.fail_next("user_not_found")
    with pytest.raises(PermanentDeliveryError) as caught:
        await adapter.send(outbound(thread_key=None))
    assert caught.value.code == "user_not_found"
    assert [c.method for c in fake_slack.requests] == ["conversations.open"]


@pytest.mark.parametrize(
    ("error", "status"), [(None, 503), (None, 500), ("internal_error", 200), ("fatal_error", 500)]
)
async def test_server_errors_are_transient(
    adapter: Slack, fake_slack: FakeSlackApi, error: str | None, status: int
) -> None:
    fake_slack.fail_next(error, status=status)
    with pytest.raises(TransientDeliveryError) as caught:
        await adapter.send(outbound())
    assert caught.value.retry_after is None
    await adapter.send(outbound())  # the failure was used up
    assert len(fake_slack.messages) == 1


async def test_a_hung_request_times_out_as_transient(fake_slack: FakeSlackApi) -> None:
    fake_slack.delay_next(30)
    sender = against(fake_slack, timeout=0.3)
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
    base_url = str(server.make_url("/api/"))
    await server.close()  # nothing listens there any more
    sender = Slack.from_settings({"api_base_url": base_url}, SECRETS)
    try:
        with pytest.raises(TransientDeliveryError):
            await sender.send(outbound())
    finally:
        await sender.close()


async def test_send_works_again_after_close(fake_slack: FakeSlackApi) -> None:
    sender = against(fake_slack)
    await sender.close()  # closing before any send is harmless
    await sender.send(outbound())
    await sender.close()
    await sender.send(outbound())
    await sender.close()
    await sender.close()  # closing twice is harmless
    assert len(fake_slack.messages) == 2


async def test_parleys_own_reply_coming_back_as_an_event_is_ignored(
    adapter: Slack, fake_slack: FakeSlackApi
) -> None:
    await adapter.send(outbound("We're on it"))
    echo = bot_message_event(fake_slack.messages[-1])
    assert echo["event"]["bot_id"] == BOT_ID
    assert receive(echo) == []


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
    found = [prefix] if prefix else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        found += _paths(child, (*prefix, key))
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(FIXTURE_NAMES), data=st.data())
def test_any_field_replaced_by_any_json_parses_or_is_malformed(name: str, data: st.DataObject) -> None:
    payload = load_fixture(name)
    path = data.draw(st.sampled_from(_paths(payload)))
    node = payload
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = data.draw(JSON_VALUES)
    interaction = name.startswith("block_actions__")
    request = interactivity_request(payload) if interaction else events_request(payload)
    adapter = channel(team_id=TEAM_ID)
    try:
        events = adapter.parse(request)
    except MalformedPayload:
        return
    adapter.acknowledge(request, events)
    for event in events:
        assert isinstance(event, InboundMessage)
        json.dumps(event.extra)  # storable
        assert event.sender.value.startswith(f"{TEAM_ID}:")
