"""SendGrid Inbound Parse and Mailgun routes: who may post, and the raw message taken from the form."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from multidict import MultiDict, MultiDictProxy
from urllib3 import encode_multipart_formdata

from channels.base import ConfigurationError, MalformedPayload, SignatureError, WebhookRequest
from channels.email.providers import (
    MAX_AGE,
    clean_provider_secrets,
    envelope_recipients,
    form_fields,
    raw_mime,
    verify_webhook,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "email"
SENDGRID_TOKEN = "sg-" + "s3cret" * 4
MAILGUN_KEY = "key-" + "0123456789abcdef" * 2
SECRETS = {"sendgrid_webhook_token": SENDGRID_TOKEN, "mailgun_signing_key": MAILGUN_KEY}


def fixture(name: str) -> tuple[dict[str, Any], bytes]:
    """A provider post's documented fields and the raw message it carries."""
    doc = json.loads((FIXTURES / name).read_text())
    return dict(doc["fields"]), (FIXTURES / doc["email_fixture"]).read_bytes()


def post(
    route: str,
    fields: dict[str, Any],
    *,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    urlencoded: bool = False,
) -> WebhookRequest:
    if urlencoded:
        body, content_type = urlencode(fields).encode(), "application/x-www-form-urlencoded"
    else:
        body, content_type = encode_multipart_formdata(fields)
    return WebhookRequest(
        method="POST",
        url=f"https://parley.example.com/webhooks/1/{route}",
        route=route,
        headers={"Content-Type": content_type, **(headers or {})},
        body=body,
        query=MultiDictProxy(MultiDict(query or {})),
    )


def sendgrid(token: str | None = SENDGRID_TOKEN, **extra: Any) -> WebhookRequest:
    fields, raw = fixture("sendgrid__inbound_raw.json")
    return post("sendgrid", {**fields, "email": raw, **extra}, query={"token": token} if token else None)


def mailgun_signature(timestamp: str, token: str, key: str = MAILGUN_KEY) -> str:
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def mailgun(
    *,
    timestamp: float | None = None,
    token: str | None = None,
    key: str = MAILGUN_KEY,
    raw: bytes | None = None,
    urlencoded: bool = False,
    route: str = "mailgun-mime",
) -> WebhookRequest:
    fields, fixture_raw = fixture("mailgun__inbound_mime.json")
    stamp = str(int(time.time() if timestamp is None else timestamp))
    token = token or secrets.token_hex(25)  # Mailgun's tokens are 50 characters
    signed = {"timestamp": stamp, "token": token, "signature": mailgun_signature(stamp, token, key)}
    body_mime = raw if raw is not None else fixture_raw
    if urlencoded:
        return post(route, {**fields, **signed, "body-mime": body_mime}, urlencoded=True)
    return post(route, {**fields, **signed, "body-mime": body_mime})


# SendGrid: a secret token in the URL, or as the basic-auth password.


def test_sendgrid_with_the_token_in_the_url_is_accepted_and_yields_the_raw_message() -> None:
    request = sendgrid()
    verify_webhook(request, {}, SECRETS)
    assert raw_mime(request) == (FIXTURES / "message__nested_multipart.eml").read_bytes()
    assert envelope_recipients(request) == ("support@parley.test",)


def test_sendgrid_with_the_token_as_basic_auth_password_is_accepted() -> None:
    fields, raw = fixture("sendgrid__inbound_raw.json")
    credentials = base64.b64encode(f"parley:{SENDGRID_TOKEN}".encode()).decode()
    request = post("sendgrid", {**fields, "email": raw}, headers={"Authorization": f"Basic {credentials}"})
    verify_webhook(request, {}, SECRETS)


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (sendgrid(token=None), "missing webhook token"),
        (sendgrid(token=SENDGRID_TOKEN + "x"), "does not match"),
        (sendgrid(token="guess"), "does not match"),
    ],
)
def test_sendgrid_without_the_right_token_is_refused(request_: WebhookRequest, error: str) -> None:
    with pytest.raises(SignatureError, match=error):
        verify_webhook(request_, {}, SECRETS)


def test_sendgrid_with_a_wrong_basic_auth_password_is_refused() -> None:
    fields, raw = fixture("sendgrid__inbound_raw.json")
    for value in (
        "Basic " + base64.b64encode(b"parley:wrong").decode(),
        "Basic !!!not-base64",
        "Bearer " + SENDGRID_TOKEN,
    ):
        request = post("sendgrid", {**fields, "email": raw}, headers={"Authorization": value})
        with pytest.raises(SignatureError):
            verify_webhook(request, {}, SECRETS)


def test_an_inbox_without_a_sendgrid_token_takes_no_sendgrid_posts() -> None:
    with pytest.raises(SignatureError, match="no sendgrid_webhook_token"):
        verify_webhook(sendgrid(), {}, {"mailgun_signing_key": MAILGUN_KEY})


def test_sendgrid_in_parsed_mode_is_a_clear_malformed_payload() -> None:
    fields, _ = fixture("sendgrid__inbound_raw.json")
    request = post(
        "sendgrid", {**fields, "text": "hello", "html": "<p>hello</p>"}, query={"token": SENDGRID_TOKEN}
    )
    verify_webhook(request, {}, SECRETS)
    with pytest.raises(MalformedPayload, match="POST the raw, full MIME message"):
        raw_mime(request)


def test_the_raw_message_keeps_its_bytes_eight_bit_and_all() -> None:
    raw = (FIXTURES / "message__windows_1252_labelled_utf8.eml").read_bytes()
    assert b"\x93" in raw
    assert raw_mime(sendgrid(email=raw)) == raw


# Mailgun: HMAC-SHA256 of timestamp + token, fresh, each token with one body only.


@pytest.mark.parametrize("route", ["mailgun-mime", "mailgun"])
def test_mailgun_signed_post_is_accepted_and_yields_the_raw_message(route: str) -> None:
    request = mailgun(route=route)
    verify_webhook(request, {}, SECRETS)
    assert raw_mime(request) == (FIXTURES / "reply__gmail_quoted.eml").read_bytes()
    assert envelope_recipients(request) == ("support@parley.test",)


def test_mailgun_url_encoded_post_is_read_from_the_raw_body() -> None:
    raw = (FIXTURES / "message__8bit_headers.eml").read_bytes()
    request = mailgun(raw=raw, urlencoded=True)
    verify_webhook(request, {}, SECRETS)
    assert raw_mime(request) == raw


def test_mailgun_unsigned_post_is_refused() -> None:
    fields, raw = fixture("mailgun__inbound_mime.json")
    with pytest.raises(SignatureError, match="missing Mailgun"):
        verify_webhook(post("mailgun-mime", {**fields, "body-mime": raw}), {}, SECRETS)


def test_mailgun_post_signed_with_another_key_is_refused() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify_webhook(mailgun(key="key-someone-elses"), {}, SECRETS)


@pytest.mark.parametrize("age", [MAX_AGE + 60, -(MAX_AGE + 60)])
def test_mailgun_stale_or_future_timestamp_is_refused(age: int) -> None:
    with pytest.raises(SignatureError, match="away from now"):
        verify_webhook(mailgun(timestamp=time.time() - age), {}, SECRETS)


def test_mailgun_token_replayed_with_another_body_is_refused_but_a_retry_passes() -> None:
    token, stamp = secrets.token_hex(25), time.time()
    original = mailgun(token=token, timestamp=stamp)
    verify_webhook(original, {}, SECRETS)
    verify_webhook(original, {}, SECRETS)  # Mailgun retrying the same post after a 5xx
    forged = mailgun(token=token, timestamp=stamp, raw=b"From: attacker@example.com\r\n\r\nhi\r\n")
    with pytest.raises(SignatureError, match="replay"):
        verify_webhook(forged, {}, SECRETS)


def test_an_inbox_without_a_mailgun_key_takes_no_mailgun_posts() -> None:
    with pytest.raises(SignatureError, match="no mailgun_signing_key"):
        verify_webhook(mailgun(), {}, {"sendgrid_webhook_token": SENDGRID_TOKEN})


def test_mailgun_parsed_route_without_body_mime_names_the_fix() -> None:
    fields, _ = fixture("mailgun__inbound_mime.json")
    stamp, token = str(int(time.time())), secrets.token_hex(25)
    request = post(
        "mailgun",
        {**fields, "timestamp": stamp, "token": token, "signature": mailgun_signature(stamp, token)},
    )
    verify_webhook(request, {}, SECRETS)
    with pytest.raises(MalformedPayload, match="ending in 'mime'"):
        raw_mime(request)


# The form itself.


def test_an_unknown_email_route_is_refused() -> None:
    with pytest.raises(SignatureError, match="no email webhook at route 'postmark'"):
        verify_webhook(post("postmark", {"x": "y"}), {}, SECRETS)


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        ("application/json", b"{}", "expected a multipart/form-data post"),
        ("multipart/form-data", b"--x\r\n", "without a boundary"),
        ("multipart/form-data; boundary=abc", b"this is not multipart at all", "cannot be read"),
        (
            "multipart/form-data; boundary=abc",
            b"--abc\r\nContent-Disposition: form-data\r\n\r\nx",
            "cannot be read",
        ),
    ],
)
def test_a_body_that_is_not_a_form_is_malformed(content_type: str, body: bytes, error: str) -> None:
    request = WebhookRequest(
        "POST", "https://x/webhooks/1/sendgrid", "sendgrid", {"Content-Type": content_type}, body
    )
    with pytest.raises(MalformedPayload, match=error):
        form_fields(request)


def test_sendgrid_envelope_that_is_not_json_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="envelope"):
        envelope_recipients(sendgrid(envelope="to=support@parley.test"))


def test_provider_secrets_are_checked() -> None:
    assert clean_provider_secrets({"mailgun_signing_key": f" {MAILGUN_KEY} ", "other": "x"}) == {
        "mailgun_signing_key": MAILGUN_KEY
    }
    with pytest.raises(ConfigurationError, match="sendgrid_webhook_token"):
        clean_provider_secrets({"sendgrid_webhook_token": "short"})
