"""Email.send against a real SMTP server on loopback (aiosmtpd), and the errors it translates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from channels.base import (
    Address,
    Attachment,
    ChannelAuthError,
    ConfigurationError,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from channels.email.channel import Email, reply_subject
from channels.email.mime import parse_email
from tests.conftest import free_port
from tests.support.smtp import REPLY_TOKEN_KEY, SMTP_PASSWORD, Smarthost

# The smarthost asks for AUTH over plain TCP on loopback; aiosmtpd warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    host = Smarthost(free_port())
    host.start()
    yield host
    host.stop()


def channel(smtp: dict[str, Any], password: str = SMTP_PASSWORD) -> Email:
    return Email.from_settings(
        {"addresses": ["Support@Parley.test", "help@parley.test"], "from_name": "Acme Support", "smtp": smtp},
        {"smtp_password": password, "reply_token_key": REPLY_TOKEN_KEY},
    )


def reply(**overrides: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "message_id": 42,
        "recipient": Address("email", "ann@example.com"),
        "text": "Hello Ann,\n\nuse <b>this</b> & that.\nThanks",
        "conversation_id": 7,
        "subject": "Re: RE: Order 1001",
        "in_reply_to": "<ann-2@example.com>",
        "references": ("<ann-1@example.com>", "<parley.40.x@parley.test>"),
    }
    return OutboundMessage(**(fields | overrides))


async def test_a_reply_carries_threading_headers_and_escaped_html(smarthost: Smarthost) -> None:
    email_channel = channel(smarthost.settings())
    receipt = await email_channel.send(reply())

    [sent] = smarthost.received
    assert sent.mail_from == "support@parley.test" and sent.rcpt_tos == ["ann@example.com"]
    message = sent.message
    assert message["From"] == "Acme Support <support@parley.test>"
    assert message["Subject"] == "Re: Order 1001"
    assert message["In-Reply-To"] == "<ann-2@example.com>"
    assert message["References"].split() == [
        "<ann-1@example.com>",
        "<parley.40.x@parley.test>",
        "<ann-2@example.com>",
    ]
    assert message["Message-ID"] == receipt.provider_message_id == email_channel.message_id_for(42)
    assert receipt.provider_message_id.endswith("@parley.test>")
    # Replies to the Reply-To address find conversation 7 even without the headers.
    reply_to = message["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith("support+c7-") and reply_to.endswith("@parley.test")
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    assert (
        plain.get_content().replace("\r\n", "\n").strip() == "Hello Ann,\n\nuse <b>this</b> & that.\nThanks"
    )
    assert "use &lt;b&gt;this&lt;/b&gt; &amp; that.<br>Thanks" in html.get_content().replace("\r\n", "\n")
    assert "<b>" not in html.get_content()


async def test_the_message_id_is_the_same_on_a_retry(smarthost: Smarthost) -> None:
    email_channel = channel(smarthost.settings())
    first = await email_channel.send(reply())
    second = await email_channel.send(reply())
    assert first.provider_message_id == second.provider_message_id
    assert email_channel.message_id_for(43) != first.provider_message_id


async def test_a_reply_token_verifies_only_unaltered(smarthost: Smarthost) -> None:
    email_channel = channel(smarthost.settings())
    address = email_channel.reply_address(7)
    assert address is not None
    answer = b"From: ann@example.com\r\nTo: %s\r\nSubject: hi\r\n\r\nanswer\r\n"
    assert email_channel.token_of(parse_email(answer % address.encode())) == 7
    forged = address.replace("+c7-", "+c8-")
    assert email_channel.token_of(parse_email(answer % forged.encode())) is None
    other_key = Email.from_settings(
        {"addresses": ["support@parley.test"]}, {"reply_token_key": "another-key-0123456789abcdef"}
    )
    assert other_key.token_of(parse_email(answer % address.encode())) is None


@pytest_asyncio.fixture
async def file_server() -> AsyncIterator[str]:
    async def serve(request: web.Request) -> web.Response:
        if request.match_info["name"] == "gone":
            return web.Response(status=404)
        return web.Response(body=b"%PDF-1.4 invoice", content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/media/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_attachments_are_fetched_and_attached(smarthost: Smarthost, file_server: str) -> None:
    email_channel = channel(smarthost.settings())
    attachment = Attachment(f"{file_server}/media/invoice", "application/pdf", "invoice.pdf")
    await email_channel.send(reply(attachments=(attachment,)))
    message = smarthost.received[0].message
    assert message.get_content_type() == "multipart/mixed"
    [part] = list(message.iter_attachments())
    assert (part.get_filename(), part.get_content_type(), part.get_content()) == (
        "invoice.pdf",
        "application/pdf",
        b"%PDF-1.4 invoice",
    )
    odd = Attachment(f"{file_server}/media/x", 'image/png; name="x"\r\nBcc: evil@x', "a\r\nb.png")
    await email_channel.send(reply(attachments=(odd,)))
    [odd_part] = list(smarthost.received[1].message.iter_attachments())
    assert (odd_part.get_content_type(), odd_part.get_filename()) == ("image/png", "a b.png")
    assert smarthost.received[1].rcpt_tos == ["ann@example.com"]
    with pytest.raises(PermanentDeliveryError, match="404"):
        await email_channel.send(reply(attachments=(Attachment(f"{file_server}/media/gone"),)))


@pytest.mark.parametrize(
    "where, answer, error, code",
    [
        ("data", "554 5.7.1 Message rejected as spam", PermanentDeliveryError, "smtp_554"),
        ("data", "452 4.3.1 Insufficient system storage", TransientDeliveryError, None),
        ("rcpt", "550 5.1.1 <ann@example.com>: user unknown", PermanentDeliveryError, "smtp_550"),
        ("rcpt", "450 4.2.0 Greylisted, try again", TransientDeliveryError, None),
    ],
)
async def test_smtp_refusals_are_translated(
    smarthost: Smarthost, where: str, answer: str, error: type[Exception], code: str | None
) -> None:
    if where == "data":
        smarthost.handler.data_reply = answer
    else:
        smarthost.handler.rcpt_reply = answer
    with pytest.raises(error) as raised:
        await channel(smarthost.settings()).send(reply())
    assert answer.split(" ", 1)[1] in str(raised.value)
    if code is not None:
        assert isinstance(raised.value, PermanentDeliveryError) and raised.value.code == code


async def test_a_refused_login_is_an_auth_error(smarthost: Smarthost) -> None:
    with pytest.raises(ChannelAuthError, match="535"):
        await channel(smarthost.settings(), password="wrong-password").send(reply())
    assert smarthost.received == []


async def test_an_unreachable_server_is_transient() -> None:
    settings = {"host": "127.0.0.1", "port": free_port(), "security": "none", "timeout": 2}
    with pytest.raises(TransientDeliveryError, match="unreachable"):
        await channel(settings).send(reply())


async def test_an_inbox_without_smtp_fails_the_reply_with_a_reason() -> None:
    inbound_only = Email.from_settings({"addresses": ["support@parley.test"]}, {})
    with pytest.raises(PermanentDeliveryError, match="no outgoing SMTP"):
        await inbound_only.send(reply())


@pytest.mark.parametrize(
    "subject, expected",
    [
        ("Order 1001", "Re: Order 1001"),
        ("Re: Order 1001", "Re: Order 1001"),
        ("RE: Re: AW:  Order   1001", "Re: Order 1001"),
        ("Re[2]: Fwd: Order", "Re: Order"),
        ("", "Re: your message"),
        (None, "Re: your message"),
    ],
)
def test_reply_subjects_do_not_stack(subject: str | None, expected: str) -> None:
    assert reply_subject(subject) == expected


@pytest.mark.parametrize(
    "settings, secrets, reason",
    [
        ({}, {}, "addresses"),
        ({"addresses": ["not-an-address"]}, {}, "not an email address"),
        ({"addresses": ["support+x@parley.test"]}, {}, r"\+tag"),
        ({"addresses": ["a@parley.test", "A@parley.test"]}, {}, "repeat"),
        (
            {"addresses": ["a@parley.test"], "smtp": {"host": "smtp.example.com", "security": "ssl"}},
            {},
            "security",
        ),
        (
            {"addresses": ["a@parley.test"], "smtp": {"host": "smtp.example.com", "username": "u"}},
            {},
            "password",
        ),
    ],
)
def test_configuration_is_checked(settings: dict[str, Any], secrets: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        Email.validate_config(settings, secrets)


def test_the_reply_token_is_on_an_address_the_inbox_receives_for() -> None:
    email_channel = Email.from_settings(
        {"addresses": ["support@in.parley.test"], "from_address": "support@parley.test"},
        {"reply_token_key": REPLY_TOKEN_KEY},
    )
    address = email_channel.reply_address(5)
    assert address is not None and address.endswith("@in.parley.test")
    answer = parse_email(b"From: ann@example.com\r\nTo: " + address.encode() + b"\r\n\r\nok\r\n")
    assert email_channel.token_of(answer) == 5


def test_a_new_inbox_gets_a_reply_token_key() -> None:
    _, secrets = Email.validate_config({"addresses": ["a@parley.test"]}, {})
    assert len(secrets["reply_token_key"]) >= 32
    _, again = Email.validate_config({"addresses": ["a@parley.test"]}, secrets)
    assert again["reply_token_key"] == secrets["reply_token_key"]


def test_the_built_message_round_trips_through_the_parser() -> None:
    email_channel = Email.from_settings(
        {"addresses": ["support@parley.test"]}, {"reply_token_key": REPLY_TOKEN_KEY}
    )
    built: EmailMessage = email_channel.build(reply(text="Für Sie: 5 € <ok>"))
    parsed = parse_email(built.as_bytes())
    assert parsed.text == "Für Sie: 5 € <ok>"
    assert parsed.in_reply_to == ("<ann-2@example.com>",)
    assert asyncio.iscoroutinefunction(email_channel.send)
