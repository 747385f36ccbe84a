"""Email through the whole gateway, on both databases: SMTP in (smtplib as the sending MTA), replies
out through a loopback smarthost (aiosmtpd), and the customer's answers threading back."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, update

from channels.base import Attachment
from crm_core.models import Contact
from gateway.app import create_app
from gateway.email_intake import EmailIntake, accept_email, smtp_context
from gateway.keys import DB, DIRECTORY, MEDIA, NOTIFIER
from inbox.models import Conversation, Message
from inbox.service import queue_outbound
from parley.db import Database
from parley.models import OutboxEvent
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, free_port, make_tenant, message_row
from tests.support.smtp import SMTP_PASSWORD, Received, Smarthost, make_email_inbox

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@dataclass
class Mail:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    inbox_id: int
    smarthost: Smarthost
    smtp_port: int
    intake: EmailIntake

    async def send(self, message: EmailMessage | bytes, *, to: str = "support@parley.test") -> None:
        """Deliver over SMTP as a sending MTA would (smtplib, in a thread: it blocks)."""
        raw = message if isinstance(message, bytes) else message.as_bytes()

        def deliver() -> None:
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as smtp:
                smtp.sendmail("sender@example.com", [to], raw)

        await asyncio.to_thread(deliver)

    async def rows(self, model: Any, *where: Any) -> list[Any]:
        async with self.db.sessionmaker() as session:
            return list((await session.execute(select(model).where(*where).order_by(model.id))).scalars())

    async def count(self, model: Any) -> int:
        async with self.db.sessionmaker() as session:
            return int((await session.execute(select(func.count()).select_from(model))).scalar_one())

    async def reply(self, conversation_id: int, body: str) -> int:
        async with self.db.transaction() as session:
            conversation = (
                await session.execute(select(Conversation).where(Conversation.id == conversation_id))
            ).scalar_one()
            message = await queue_outbound(
                session, conversation, body=body, sender_type="user", sender_id=self.tenant.user_id
            )
        self.client.app[NOTIFIER].notify()
        return message.id

    async def sent(self, count: int) -> list[Received]:
        await eventually(lambda: len(self.smarthost.received) >= count)
        return self.smarthost.received


@pytest_asyncio.fixture
async def mail(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
) -> AsyncIterator[Mail]:
    smarthost = Smarthost(free_port())
    smarthost.start()
    tenant = await make_tenant(db, "acme")
    inbox_id = await make_email_inbox(
        db, tenant.tenant_id, smtp=smarthost.settings(), secret_key=settings.secret_key
    )
    # The SMTP server inside the gateway, as `parley serve --smtp-port` runs it.
    smtp_port = free_port()
    app = create_app(settings)
    app.cleanup_ctx.append(smtp_context(host="127.0.0.1", port=smtp_port, max_message_bytes=1024 * 1024))
    client = await aiohttp_client(app, server_kwargs={"port": public_port, "host": "127.0.0.1"})
    # A second intake on the same parts, for calling accept_email directly (as IMAP and webhooks do).
    intake = EmailIntake(app[DB], app[DIRECTORY], app[MEDIA], app[NOTIFIER])
    yield Mail(client, db, tenant, inbox_id, smarthost, smtp_port, intake)
    smarthost.stop()


def customer_mail(
    body: str = "My order 1001 has not arrived.",
    *,
    message_id: str = "<ann-1@example.com>",
    subject: str = "Order 1001",
    sender: str = "Ann Lee <ann@example.com>",
    to: str = "support@parley.test",
    **headers: str,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def answer_to(received: EmailMessage, body: str, *, message_id: str) -> EmailMessage:
    """What a mail client makes of "Reply": threading headers from the message being answered."""
    answer = EmailMessage()
    answer["From"] = "Ann Lee <ann@example.com>"
    answer["To"] = str(received["Reply-To"] or received["From"])
    answer["Subject"] = "Re: " + str(received["Subject"])
    answer["Message-ID"] = message_id
    answer["In-Reply-To"] = str(received["Message-ID"])
    answer["References"] = " ".join(
        filter(None, [str(received["References"] or ""), str(received["Message-ID"])])
    )
    quoted = "\n".join(
        "> " + line for line in (received.get_body(("plain",)) or received).get_content().splitlines()
    )
    answer.set_content(f"{body}\n\nOn Tue, 3 Mar 2026, Acme Support wrote:\n{quoted}\n")
    return answer


async def test_new_mail_opens_a_conversation_with_its_attachment_stored(mail: Mail) -> None:
    message = customer_mail("Photo attached.\n\nOn Mon, Bob <bob@example.com> wrote:\n> forwarded stuff\n")
    message.add_attachment(b"\x89PNG fake image", maintype="image", subtype="png", filename="broken.png")
    await mail.send(message)

    [conversation] = await mail.rows(Conversation)
    [stored] = await mail.rows(Message)
    [contact] = await mail.rows(Contact)
    assert (conversation.thread_key, conversation.status, conversation.inbox_id) == (
        "<ann-1@example.com>",
        "open",
        mail.inbox_id,
    )
    assert (contact.email, contact.name, contact.tenant_id) == (
        "ann@example.com",
        "Ann Lee",
        mail.tenant.tenant_id,
    )
    assert stored.body == "Photo attached."
    assert stored.provider_message_id == "<ann-1@example.com>"
    assert stored.extra["subject"] == "Order 1001"
    assert stored.extra["quoted"].startswith("On Mon, Bob")
    [attachment] = stored.attachments
    assert (attachment["filename"], attachment["content_type"], attachment["size"]) == (
        "broken.png",
        "image/png",
        len(b"\x89PNG fake image"),
    )
    path = attachment["url"].split("/media/", 1)[1]
    response = await mail.client.get(f"/media/{path}")
    assert response.status == 200 and await response.read() == b"\x89PNG fake image"


async def test_agent_replies_thread_and_the_customers_answers_come_back_to_the_same_conversation(
    mail: Mail,
) -> None:
    await mail.send(customer_mail(subject="Order 1001"))
    [conversation] = await mail.rows(Conversation)

    first_reply = await mail.reply(conversation.id, "Sorry! It ships <today> & arrives Friday.")
    [sent] = await mail.sent(1)
    received = sent.message
    assert sent.rcpt_tos == ["ann@example.com"]
    assert received["Subject"] == "Re: Order 1001"
    assert received["In-Reply-To"] == "<ann-1@example.com>"
    assert received["References"] == "<ann-1@example.com>"
    await eventually(_status_is(mail, first_reply, "sent"))
    stored_reply = await message_row(mail.db, first_reply)
    assert stored_reply.provider_message_id == received["Message-ID"]
    html = received.get_body(("html",))
    assert html is not None and "&lt;today&gt; &amp;" in html.get_content()

    # Ann presses Reply in her mail client (Reply-To is the signed address, which is fine).
    await mail.send(answer_to(received, "Thanks, Friday is fine.", message_id="<ann-2@example.com>"))
    conversations = await mail.rows(Conversation)
    assert len(conversations) == 1
    messages = await mail.rows(Message, Message.conversation_id == conversation.id)
    assert [m.body for m in messages] == [
        "My order 1001 has not arrived.",
        "Sorry! It ships <today> & arrives Friday.",
        "Thanks, Friday is fine.",
    ]

    # The next reply answers Ann's latest mail and carries the whole chain.
    await mail.reply(conversation.id, "Great.")
    second = (await mail.sent(2))[1].message
    assert second["In-Reply-To"] == "<ann-2@example.com>"
    assert second["References"].split() == [
        "<ann-1@example.com>",
        str(received["Message-ID"]),
        "<ann-2@example.com>",
    ]
    assert second["Subject"] == "Re: Order 1001"


def _status_is(mail: Mail, message_id: int, status: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await message_row(mail.db, message_id)).status == status

    return check


async def test_a_reply_without_threading_headers_finds_its_conversation_by_the_reply_to_token(
    mail: Mail,
) -> None:
    await mail.send(customer_mail())
    [conversation] = await mail.rows(Conversation)
    await mail.reply(conversation.id, "Which colour?")
    received = (await mail.sent(1))[0].message
    token_address = received["Reply-To"].addresses[0].addr_spec
    async with mail.db.transaction() as session:
        await session.execute(
            update(Conversation).values(status="resolved", resolved_at=Conversation.created_at)
        )

    # A client that drops In-Reply-To/References and the subject: only the address is left.
    await mail.send(
        customer_mail("Blue.", message_id="<ann-9@example.com>", subject="colour", to=token_address),
        to=token_address,
    )
    [same] = await mail.rows(Conversation)
    assert same.id == conversation.id and same.status == "open"
    assert [m.body for m in await mail.rows(Message)][-1] == "Blue."

    # A forged token (another conversation id with this signature) is just a new thread.
    forged = token_address.replace(f"+c{conversation.id}-", f"+c{conversation.id + 1}-")
    await mail.send(customer_mail("Hi", message_id="<ann-10@example.com>", to=forged), to=forged)
    assert len(await mail.rows(Conversation)) == 2


async def test_a_new_mail_without_references_is_a_new_conversation(mail: Mail) -> None:
    await mail.send(customer_mail())
    await mail.send(customer_mail("Another question.", message_id="<ann-2@example.com>", subject="Invoice"))
    conversations = await mail.rows(Conversation)
    assert [c.thread_key for c in conversations] == ["<ann-1@example.com>", "<ann-2@example.com>"]
    assert conversations[0].contact_id == conversations[1].contact_id


async def test_a_bounce_fails_the_message_it_reports_and_opens_nothing(mail: Mail) -> None:
    await mail.send(customer_mail(sender="Ann <typo@example.org>"))
    [conversation] = await mail.rows(Conversation)
    reply_id = await mail.reply(conversation.id, "Hello")
    our_id = str((await mail.sent(1))[0].message["Message-ID"])
    await eventually(_status_is(mail, reply_id, "sent"))

    bounce = (
        "From: MAILER-DAEMON@mx.example.org\r\nTo: support@parley.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <bounce-1@mx.example.org>\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
        "Final-Recipient: rfc822; typo@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <typo@example.org>: User unknown\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: support@parley.test\r\nMessage-ID: {our_id}\r\n"
        "Subject: Re: Order 1001\r\n\r\n--B--\r\n"
    ).encode()
    await mail.send(bounce)
    await eventually(_status_is(mail, reply_id, "failed"))
    failed = await message_row(mail.db, reply_id)
    assert failed.error_code == "5.1.1"
    assert failed.error_message is not None and "User unknown" in failed.error_message
    assert len(await mail.rows(Conversation)) == 1
    assert await mail.count(Message) == 2


async def test_an_auto_reply_neither_opens_a_conversation_nor_gets_answered(mail: Mail) -> None:
    await mail.send(customer_mail())
    [conversation] = await mail.rows(Conversation)
    await mail.reply(conversation.id, "Hello")
    ours = str((await mail.sent(1))[0].message["Message-ID"])

    away = customer_mail(
        "I am out of the office.",
        message_id="<ooo-1@example.com>",
        subject="Automatic reply: Re: Order 1001",
        In_Reply_To=ours,
        Auto_Submitted="auto-replied",
    )
    await mail.send(away)
    await mail.send(
        customer_mail("Away", message_id="<ooo-2@example.com>", subject="Away", X_Autoreply="yes")
    )
    assert await mail.count(Message) == 2
    assert len(await mail.rows(Conversation)) == 1
    await asyncio.sleep(0.3)
    assert len(mail.smarthost.received) == 1


async def test_a_duplicate_delivery_stores_one_message(mail: Mail) -> None:
    await mail.send(customer_mail())
    await mail.send(customer_mail())
    outcome = await accept_email(
        mail.intake, customer_mail().as_bytes(), envelope_recipients=["support@parley.test"]
    )
    assert outcome.status == "duplicate"
    assert await mail.count(Message) == 1
    async with mail.db.sessionmaker() as session:
        opened = await session.execute(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.topic == "conversation.opened")
        )
    assert opened.scalar_one() == 1


async def test_mail_lands_in_the_inbox_of_the_tenant_owning_the_address(
    mail: Mail, settings: Settings
) -> None:
    other = await make_tenant(mail.db, "globex")
    other_inbox = await make_email_inbox(
        mail.db, other.tenant_id, addresses=("help@globex.test",), secret_key=settings.secret_key
    )
    await mail.send(
        customer_mail(to="HELP@Globex.Test", message_id="<g-1@example.com>"), to="HELP@Globex.Test"
    )
    await mail.send(customer_mail(message_id="<acme-only@example.com>"))
    conversations = await mail.rows(Conversation)
    assert [(c.inbox_id, c.tenant_id) for c in conversations] == [
        (other_inbox, other.tenant_id),
        (mail.inbox_id, mail.tenant.tenant_id),
    ]
    # The same Message-ID in two tenants' inboxes is two messages: dedupe is per inbox.
    await mail.send(customer_mail(message_id="<g-1@example.com>"))
    assert await mail.count(Message) == 3
    # A reference to another tenant's message does not join its conversation.
    await mail.send(
        customer_mail(
            to="help@globex.test", message_id="<g-2@example.com>", In_Reply_To="<acme-only@example.com>"
        ),
        to="help@globex.test",
    )
    [g2] = await mail.rows(Message, Message.provider_message_id == "<g-2@example.com>")
    [g2_conversation] = await mail.rows(Conversation, Conversation.id == g2.conversation_id)
    assert (g2_conversation.inbox_id, g2_conversation.thread_key) == (other_inbox, "<g-2@example.com>")
    # Mail for an address nobody has is refused at RCPT time.
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await mail.send(customer_mail(to="nobody@parley.test"), to="nobody@parley.test")


async def test_an_agent_reply_carries_files_from_the_media_store(mail: Mail) -> None:
    await mail.send(customer_mail())
    [conversation] = await mail.rows(Conversation)
    stored = await mail.client.app[MEDIA].put(
        mail.tenant.tenant_id, b"%PDF-1.4 label", filename="label.pdf", content_type="application/pdf"
    )
    async with mail.db.transaction() as session:
        row = (
            await session.execute(select(Conversation).where(Conversation.id == conversation.id))
        ).scalar_one()
        await queue_outbound(
            session,
            row,
            body="Your return label.",
            sender_type="user",
            sender_id=mail.tenant.user_id,
            attachments=[Attachment(stored.url, stored.content_type)],
        )
    mail.client.app[NOTIFIER].notify()
    message = (await mail.sent(1))[0].message
    [part] = list(message.iter_attachments())
    assert (part.get_filename(), part.get_content_type(), part.get_content()) == (
        "label.pdf",
        "application/pdf",
        b"%PDF-1.4 label",
    )


async def test_an_inbox_created_through_the_api_receives_and_replies(mail: Mail) -> None:
    response = await mail.client.post(
        "/api/v1/inboxes",
        headers=mail.tenant.headers,
        json={
            "name": "Sales",
            "channel": "email",
            "settings": {"addresses": ["Sales@Parley.test"], "smtp": mail.smarthost.settings()},
            "secrets": {"smtp_password": SMTP_PASSWORD},
        },
    )
    assert response.status == 201, await response.text()
    inbox = await response.json()
    assert inbox["settings"]["addresses"] == ["sales@parley.test"]
    assert inbox["secrets_set"] == ["reply_token_key", "smtp_password"]  # the token key is made for it

    await mail.send(customer_mail(to="sales@parley.test"), to="sales@parley.test")
    [conversation] = await mail.rows(Conversation)
    assert conversation.inbox_id == inbox["id"]
    await mail.reply(conversation.id, "Hello from sales")
    sent = (await mail.sent(1))[0].message
    assert sent["From"] == "sales@parley.test"
    assert sent["Reply-To"].addresses[0].addr_spec.startswith(f"sales+c{conversation.id}-")

    invalid = await mail.client.post(
        "/api/v1/inboxes",
        headers=mail.tenant.headers,
        json={"name": "Bad", "channel": "email", "settings": {"addresses": ["nope"]}, "secrets": {}},
    )
    assert invalid.status == 422
    assert "not an email address" in (await invalid.json())["error"]["message"]
