"""SendGrid Inbound Parse and Mailgun routes: who may post, and the raw message taken from the form."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from multidict import MultiDict, MultiDictProxy
from sqlalchemy import select
from urllib3 import encode_multipart_formdata

from channels.base import ConfigurationError, MalformedPayload, SignatureError, WebhookRequest
from channels.email.channel import Email
from channels.email.providers import (
    DEFAULT_MAX_WEBHOOK_BYTES,
    MAX_AGE,
    clean_provider_secrets,
    envelope_recipients,
    form_fields,
    raw_mime,
    verify_webhook,
)
from gateway.app import create_app
from gateway.webhooks import MAX_WEBHOOK_BYTES
from inbox.models import Conversation, Message
from inbox.runtime import InboxDirectory
from parley.crypto import SecretBox
from parley.db import Database
from parley.settings import Settings
from tests.channels.email.conftest import make_email_inbox
from tests.conftest import SECRET_KEY, make_tenant

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


# Through the whole gateway: `/webhooks/<inbox>/<route>` → verify → parse → media → pipeline.


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    db: Database
    tenant_id: int
    inbox_id: int

    async def post(self, request: WebhookRequest) -> tuple[int, str]:
        path = f"/webhooks/{self.inbox_id}/{request.route}"
        response = await self.client.post(
            path, data=request.body, headers=dict(request.headers), params=dict(request.query)
        )
        return response.status, await response.text()

    async def messages(self) -> list[Message]:
        async with self.db.sessionmaker() as session:
            return list((await session.execute(select(Message).order_by(Message.id))).scalars())

    async def conversations(self) -> list[Conversation]:
        async with self.db.sessionmaker() as session:
            return list((await session.execute(select(Conversation).order_by(Conversation.id))).scalars())


@pytest_asyncio.fixture
async def gateway(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], db: Database, settings: Settings
) -> Gateway:
    tenant = await make_tenant(db, "acme")
    inbox_id = await make_email_inbox(db, tenant.tenant_id, secrets=SECRETS)
    client = await aiohttp_client(create_app(settings))
    return Gateway(client, db, tenant.tenant_id, inbox_id)


async def test_sendgrid_post_becomes_a_conversation_with_its_attachments_stored(gateway: Gateway) -> None:
    assert (await gateway.post(sendgrid()))[0] == 200

    [message] = await gateway.messages()
    assert message.provider_message_id == "<nested-0001@example.com>"
    assert message.body == "The widget arrived broken, see the photo."
    assert [(a["filename"], a["content_type"]) for a in message.attachments] == [
        ("widget.png", "image/png"),
        ("order-1001.pdf", "application/pdf"),
    ]
    for attachment in message.attachments:  # stored in the media store, served by the gateway
        path = attachment["url"][attachment["url"].index("/media/") :]
        response = await gateway.client.get(path)
        assert response.status == 200
    assert "<script" not in message.extra["html"]
    [conversation] = await gateway.conversations()
    assert conversation.thread_key == "<nested-0001@example.com>"


async def test_a_provider_retry_stores_nothing_twice(gateway: Gateway) -> None:
    request = mailgun()
    assert (await gateway.post(request))[0] == 200
    assert (await gateway.post(request))[0] == 200  # Mailgun retrying after a lost answer
    assert len(await gateway.messages()) == 1


async def test_an_unverified_post_is_403_and_stores_nothing(gateway: Gateway) -> None:
    status, body = await gateway.post(sendgrid(token="wrong-token-wrong-token"))
    assert status == 403 and "token does not match" in body
    status, body = await gateway.post(mailgun(key="key-not-ours"))
    assert status == 403 and "signature does not match" in body
    assert await gateway.messages() == []


async def test_a_post_whose_message_is_not_an_email_is_400_with_the_reason(gateway: Gateway) -> None:
    status, body = await gateway.post(sendgrid(email=(FIXTURES / "invalid__not_an_email.eml").read_bytes()))
    assert status == 400 and "does not start with a header field" in body
    status, body = await gateway.post(mailgun(raw=(FIXTURES / "invalid__missing_from.eml").read_bytes()))
    assert status == 400 and "no sender address" in body
    assert await gateway.messages() == [] and await gateway.conversations() == []


async def test_an_auto_reply_posted_by_a_provider_opens_nothing(gateway: Gateway) -> None:
    raw = (FIXTURES / "auto_reply__auto_submitted.eml").read_bytes()
    assert (await gateway.post(mailgun(raw=raw)))[0] == 200
    assert await gateway.messages() == [] and await gateway.conversations() == []


async def test_a_bounce_posted_by_a_provider_fails_the_message_it_reports_on(gateway: Gateway) -> None:
    raw = (FIXTURES / "message__rfc2047_names.eml").read_bytes()
    assert (await gateway.post(sendgrid(email=raw)))[0] == 200
    [conversation] = await gateway.conversations()
    async with gateway.db.transaction() as session:  # the agent's reply, as delivery left it once sent
        session.add(
            Message(
                tenant_id=gateway.tenant_id,
                inbox_id=gateway.inbox_id,
                conversation_id=conversation.id,
                direction="outbound",
                sender_type="user",
                body="Your refund is on its way.",
                provider_message_id="<parley-outbound-1@parley.test>",
                status="sent",
            )
        )

    bounce = (FIXTURES / "bounce__dsn_multipart_report.eml").read_bytes()
    assert (await gateway.post(sendgrid(email=bounce)))[0] == 200

    messages = await gateway.messages()
    assert len(messages) == 2  # the bounce is no message of its own
    failed = messages[1]
    assert (failed.status, failed.error_code) == ("failed", "5.1.1")
    assert "User unknown" in (failed.error_message or "")
    assert len(await gateway.conversations()) == 1


async def test_email_webhooks_take_messages_bigger_than_the_default_webhook_limit(gateway: Gateway) -> None:
    big = (
        b"Message-ID: <big-0001@example.com>\r\nFrom: big@example.com\r\nTo: support@parley.test\r\n"
        b"Subject: Scans\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain\r\n\r\nAll the scans.\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename=scans.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(secrets.token_bytes(3 * 1024 * 1024 + MAX_WEBHOOK_BYTES // 2))
        + b"\r\n--b--\r\n"
    )
    assert len(big) > MAX_WEBHOOK_BYTES
    assert (await gateway.post(sendgrid(email=big)))[0] == 200
    [message] = await gateway.messages()
    assert message.attachments[0]["filename"] == "scans.pdf"

    too_big = sendgrid(email=b"X" * (DEFAULT_MAX_WEBHOOK_BYTES + 1))
    assert (await gateway.post(too_big))[0] == 413


def ann(message_id: str, subject: str, text: str, *, in_reply_to: str | None = None) -> bytes:
    threading = f"In-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\n" if in_reply_to else ""
    return (
        f"Message-ID: {message_id}\r\n{threading}From: Ann <ann@example.com>\r\n"
        f"To: support@parley.test\r\nSubject: {subject}\r\n\r\n{text}\r\n"
    ).encode()


async def test_a_reply_posted_by_a_provider_joins_its_thread_by_references(gateway: Gateway) -> None:
    first = ann("<q1@example.com>", "Order 7", "Where is it?")
    reply = ann("<q2@example.com>", "Re: Order 7", "Any news?", in_reply_to="<q1@example.com>")
    assert (await gateway.post(sendgrid(email=first)))[0] == 200
    assert (await gateway.post(mailgun(raw=reply)))[0] == 200
    [conversation] = await gateway.conversations()
    assert [m.conversation_id for m in await gateway.messages()] == [conversation.id] * 2


async def test_the_envelope_recipient_carries_a_reply_token_past_a_client_that_drops_headers(
    gateway: Gateway,
) -> None:
    first = ann("<q1@example.com>", "Order 7", "Where is it?")
    assert (await gateway.post(sendgrid(email=first)))[0] == 200
    [conversation] = await gateway.conversations()
    directory = InboxDirectory(gateway.db, SecretBox(SECRET_KEY))
    inbox = await directory.get(gateway.inbox_id)
    assert inbox is not None and isinstance(inbox.channel, Email)
    token_address = inbox.channel.reply_address(conversation.id)
    await directory.close()
    assert token_address is not None

    # No In-Reply-To, no References, a new subject, and the token only in SendGrid's envelope.
    bare = ann("<q9@example.com>", "hello", "Still waiting.")
    envelope = json.dumps({"to": [token_address], "from": "ann@example.com"})
    assert (await gateway.post(sendgrid(email=bare, envelope=envelope)))[0] == 200
    assert len(await gateway.conversations()) == 1
    assert [m.conversation_id for m in await gateway.messages()] == [conversation.id] * 2


@hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=600) | st.builds(lambda b: b"--abc\r\n" + b, st.binary(max_size=400)),
    content_type=st.sampled_from(
        [
            "multipart/form-data; boundary=abc",
            'multipart/form-data; boundary="a b"',
            "multipart/form-data",
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=latin-1",
            "text/plain",
            "",
        ]
    ),
    route=st.sampled_from(["sendgrid", "mailgun-mime", "mailgun"]),
)
def test_any_body_is_read_or_refused_with_a_reason_never_a_crash(
    body: bytes, content_type: str, route: str
) -> None:
    request = WebhookRequest(
        "POST",
        f"https://x/webhooks/1/{route}",
        route,
        {"Content-Type": content_type},
        body,
        query=MultiDictProxy(MultiDict({"token": SENDGRID_TOKEN})),
    )
    try:
        verify_webhook(request, {}, SECRETS)
    except SignatureError:
        return
    try:
        raw_mime(request)
        envelope_recipients(request)
    except MalformedPayload:
        pass
