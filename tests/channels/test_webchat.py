"""Web chat's pure parts: session tokens, identity hashes, origins, settings and widget frames."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from channels.base import Address, ConfigurationError, MalformedPayload, OutboundMessage, SignatureError
from channels.webchat import (
    Ack,
    ContactDetails,
    Hello,
    Say,
    SessionTokens,
    Typing,
    WebChat,
    normalise_origin,
    parse_frame,
    visitor_topic,
)
from parley.realtime import LocalHub

SECRET = "identity-secret-0123456789"


def chat(**settings: Any) -> WebChat:
    return WebChat.from_settings(
        {"allowed_origins": ["https://shop.example.com", "http://127.0.0.1:8123"], **settings},
        {"identity_secret": SECRET},
    )


# Session tokens


def test_a_session_token_round_trips_for_its_inbox() -> None:
    tokens = SessionTokens("server-secret")
    token = tokens.issue(7, "7:v:abc")
    assert tokens.verify(token, 7, max_age=60) == "7:v:abc"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: "e30" + t[t.index(".") :],  # payload swapped for {}
        lambda t: "not a token",
        lambda t: "",
    ],
)
def test_a_forged_session_token_is_refused(mangle: Any) -> None:
    tokens = SessionTokens("server-secret")
    with pytest.raises(SignatureError, match="not valid"):
        tokens.verify(mangle(tokens.issue(7, "7:v:abc")), 7, max_age=60)


def test_a_token_signed_with_another_servers_key_is_refused() -> None:
    token = SessionTokens("someone-else").issue(7, "7:v:abc")
    with pytest.raises(SignatureError, match="not valid"):
        SessionTokens("server-secret").verify(token, 7, max_age=60)


def test_an_expired_session_token_is_refused() -> None:
    issued_long_ago = SessionTokens("server-secret", clock=lambda: time.time() - 31 * 86400)
    token = issued_long_ago.issue(7, "7:v:abc")
    with pytest.raises(SignatureError, match="expired"):
        SessionTokens("server-secret").verify(token, 7, max_age=30 * 86400)
    # The same token is fine for an inbox that keeps sessions longer.
    assert SessionTokens("server-secret").verify(token, 7, max_age=32 * 86400) == "7:v:abc"


def test_a_token_of_another_inbox_is_refused() -> None:
    tokens = SessionTokens("server-secret")
    with pytest.raises(SignatureError, match="another inbox"):
        tokens.verify(tokens.issue(7, "7:v:abc"), 8, max_age=60)


# Identity verification (Chatwoot's identifier_hash)


def test_identity_hash_is_hmac_sha256_of_the_identifier() -> None:
    expected = hmac.new(SECRET.encode(), b"user-42", hashlib.sha256).hexdigest()
    assert chat().identity_hash_valid("user-42", expected)
    assert chat().identity_hash_valid("user-42", expected.upper())


@pytest.mark.parametrize("given", ["", "0" * 64, "not hex"])
def test_a_wrong_identity_hash_is_refused(given: str) -> None:
    assert not chat().identity_hash_valid("user-42", given)


def test_another_users_hash_does_not_identify_this_user() -> None:
    hash_of_43 = hmac.new(SECRET.encode(), b"user-43", hashlib.sha256).hexdigest()
    assert not chat().identity_hash_valid("user-42", hash_of_43)


def test_without_an_identity_secret_nobody_is_identified() -> None:
    channel = WebChat.from_settings({"allowed_origins": ["https://shop.example.com"]}, {})
    assert not channel.verifies_identity
    assert not channel.identity_hash_valid("user-42", hmac.new(b"", b"user-42", hashlib.sha256).hexdigest())


# Origins


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://shop.example.com", True),
        ("https://SHOP.example.com:443", True),
        ("http://127.0.0.1:8123", True),
        ("http://shop.example.com", False),  # other scheme
        ("https://shop.example.com:8443", False),  # other port
        ("https://evil.example.com", False),
        ("https://shop.example.com.evil.net", False),
        ("null", False),  # sandboxed iframes and file:// pages
        ("", False),
        (None, False),
    ],
)
def test_origin_check(origin: str | None, allowed: bool) -> None:
    assert chat().origin_allowed(origin) is allowed


def test_origins_are_normalised_in_settings() -> None:
    assert normalise_origin("HTTPS://Shop.Example.com:443/") == "https://shop.example.com"
    assert normalise_origin("https://shop.example.com/path") is None
    assert chat().allowed_origins == {"https://shop.example.com", "http://127.0.0.1:8123"}


@pytest.mark.parametrize(
    ("settings", "secrets", "message"),
    [
        ({}, {}, "allowed_origins"),
        ({"allowed_origins": []}, {}, "allowed_origins"),
        ({"allowed_origins": ["*"]}, {}, "not an http"),
        ({"allowed_origins": ["javascript:alert(1)"]}, {}, "not an http"),
        ({"allowed_origins": ["https://a.example"], "pre_chat_form": "yes"}, {}, "pre_chat_form"),
        ({"allowed_origins": ["https://a.example"], "session_days": 0}, {}, "session_days"),
        ({"allowed_origins": ["https://a.example"]}, {"identity_secret": "short"}, "identity_secret"),
    ],
)
def test_invalid_settings_are_refused(
    settings: dict[str, Any], secrets: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WebChat.validate_config(settings, secrets)


# Frames


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def test_frames_parse_into_typed_objects() -> None:
    assert parse_frame(frame(type="hello", token="t", since=12)) == Hello("t", None, None, 12)
    say = parse_frame(frame(type="message", id="0b5e0a3c-1c35-4f3e-9a9d-3f0c2f8e6a11", text="<b>hi</b>"))
    assert say == Say("0b5e0a3c-1c35-4f3e-9a9d-3f0c2f8e6a11", "<b>hi</b>", None)
    assert parse_frame(frame(type="typing", typing=True)) == Typing(True)
    assert parse_frame(frame(type="ack", message_id=5, status="read")) == Ack(5, "read")
    assert parse_frame(frame(type="contact", name=" Ann ", email="ann@example.com")) == ContactDetails(
        "Ann", "ann@example.com"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        (frame(type="launch_missiles"), "unknown frame type"),
        (frame(type="message", id="1", text="hi"), "UUID"),
        (frame(type="message", id="0b5e0a3c-1c35-4f3e-9a9d-3f0c2f8e6a11", text="  "), "non-empty"),
        (frame(type="message", id="0b5e0a3c-1c35-4f3e-9a9d-3f0c2f8e6a11", text="x" * 5001), "5000"),
        (frame(type="typing", typing="yes"), "true or false"),
        (frame(type="ack", message_id=-1, status="read"), "non-negative"),
        (frame(type="ack", message_id=True, status="read"), "non-negative"),
        (frame(type="ack", message_id=1, status="failed"), "delivered"),
        (frame(type="contact"), "name or an email"),
        (frame(type="hello", since="0"), "since"),
    ],
)
def test_malformed_frames_say_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse_frame(raw)


async def test_send_publishes_the_reply_to_the_visitors_topic() -> None:
    channel = chat()
    hub = LocalHub()
    channel.attach_hub(hub)
    async with hub.subscribe(visitor_topic("7:v:abc")) as subscription:
        receipt = await channel.send(
            OutboundMessage(message_id=31, recipient=Address("web_visitor", "7:v:abc"), text="Hello")
        )
        pushed = await subscription.get()
    assert receipt.provider_message_id == "webchat:31" and receipt.status == "sent"
    assert pushed["type"] == "message"
    assert pushed["message"]["id"] == 31 and pushed["message"]["text"] == "Hello"


def test_webchat_has_no_webhook() -> None:
    from channels.base import WebhookRequest

    with pytest.raises(SignatureError, match="WebSocket"):
        chat().verify(
            WebhookRequest(method="POST", url="http://x/webhooks/1", route="", headers={}, body=b"")
        )
