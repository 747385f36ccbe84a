"""The corpus of unusual real-world emails, each through the parser and the whole intake.

Every `tests/fixtures/email/*.eml` must be listed in `EXPECTED` with what should become of it, so a
new corpus file cannot slip in untested. Nothing may crash the intake: a message is stored, ignored
(auto-replies), applied (bounces) or rejected with a reason, and a rejected one leaves no rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from channels.base import MalformedPayload
from channels.email.mime import parse_email
from crm_core.models import Contact
from gateway.email_intake import EmailIntake, IntakeOutcome, accept_email
from inbox.models import Conversation, Message
from inbox.runtime import InboxDirectory
from parley.crypto import SecretBox
from parley.db import Database
from parley.media import MediaStore
from parley.models import OutboxEvent
from tests.channels.email.conftest import make_email_inbox
from tests.conftest import SECRET_KEY, make_tenant

CORPUS = Path(__file__).parents[2] / "fixtures" / "email"


@dataclass(frozen=True)
class Expect:
    """What should become of one corpus message."""

    outcome: str  # stored / ignored / bounce / rejected
    sender: str | None = None
    sender_name: str | None = None
    subject: str | None = None
    # Snippets the stored text must contain, and ones it must not (quoted history, signatures).
    text: tuple[str, ...] = ()
    not_in_text: tuple[str, ...] = ()
    quoted: tuple[str, ...] = ()
    attachments: tuple[tuple[str, str], ...] = ()
    thread_refs: tuple[str, ...] = ()
    reason: str | None = None
    bounced: str | None = None  # the outbound Message-ID a report is about
    bounced_status: str = "failed"  # what becomes of that message ("sent": the report changes nothing)
    extra: dict[str, object] = field(default_factory=dict)


EXPECTED: dict[str, Expect] = {
    "message__iso_2022_jp.eml": Expect(
        "stored", "taro@example.jp", "山田 太郎", "注文について", text=("注文番号12345の配送について",)
    ),
    "message__windows_1252_labelled_utf8.eml": Expect(
        "stored", "zoe@example.com", subject="Invoice question", text=("€120", "“total”", "Café")
    ),
    "message__8bit_headers.eml": Expect(
        "stored",
        "juergen@example.de",
        "Jürgen Müller",
        "Rückfrage zur Bestellung \u2013 dringend",
        text=("Grüße aus München",),
    ),
    "message__rfc2047_names.eml": Expect(
        "stored",
        "francois@example.fr",
        "François d\u2019Ars",
        "Remboursement de ma commande n° 42",
        text=("être remboursé", "arrivé abîmé"),
    ),
    "message__rfc2231_filename.eml": Expect(
        "stored",
        "asa@example.se",
        "Åsa Lindström",
        text=("Här är kvittot",),
        attachments=(("kvitto för märz.pdf", "application/pdf"),),
    ),
    "message__nested_multipart.eml": Expect(
        "stored",
        "sam.lee@example.com",
        "Lee, Sam",
        text=("arrived broken",),
        attachments=(("widget.png", "image/png"), ("order-1001.pdf", "application/pdf")),
        extra={"cc": ["boss@example.com"], "inline_content_ids": ["<photo1@example.com>"]},
    ),
    "message__missing_date_and_message_id.eml": Expect(
        "stored", "nora@example.com", subject="No date, no id", text=("neither a Date",)
    ),
    "message__empty_body.eml": Expect("stored", "omar@example.com", subject="Call me back please"),
    "message__huge_headers.eml": Expect(
        "stored", "pat@example.com", text=("The body is short",), thread_refs=("<thread-0599@example.com>",)
    ),
    "message__winmail_dat.eml": Expect(
        "stored",
        "rita@exchange.example.com",
        text=("Grüße, Rita",),
        attachments=(("winmail.dat", "application/ms-tnef"),),
    ),
    "message__html_only_with_script.eml": Expect(
        "stored",
        "noreply-form@example.com",
        text=("I need help with my account",),
        not_in_text=("<", "cookie"),
    ),
    "message__unknown_charset.eml": Expect(
        "stored", "yuri@example.ru", text=("the charset of this message",)
    ),
    "message__broken_base64.eml": Expect(
        "stored", "ivy@example.com", text=("screenshot",), attachments=(("screen.png", "image/png"),)
    ),
    "message__unterminated_multipart.eml": Expect("stored", "tom@example.com", text=("cut off",)),
    "message__forwarded_rfc822.eml": Expect(
        "stored",
        "uma@example.com",
        text=("the amount is wrong",),
        attachments=(("Order confirmation.eml", "message/rfc822"),),
    ),
    "message__group_and_odd_addresses.eml": Expect(
        "stored", "victor.hugo@example.com", 'Victor "Vic" Hugo', text=("empty group",)
    ),
    "message__lf_only_line_endings.eml": Expect("stored", "wes@example.com", text=("bare LF",)),
    "message__calendar_invite.eml": Expect(
        "stored",
        "xena@example.com",
        text=("onboarding call",),
        attachments=(("attachment.ics", "text/calendar"),),
    ),
    "reply__outlook_quoted.eml": Expect(
        "stored",
        "priya@example.com",
        subject="RE: Your order",
        text=("ship it to my office address",),
        not_in_text=("Should we use your home address",),
        quoted=("Should we use your home address",),
        thread_refs=("<parley-outbound-3@parley.test>", "<original-3@example.com>"),
    ),
    "reply__gmail_quoted.eml": Expect(
        "stored",
        "marco.rossi@gmail.example",
        text=("tracking link does not work",),
        not_in_text=("Your order has shipped",),
        quoted=("Your order has shipped",),
        thread_refs=("<parley-outbound-4@parley.test>",),
    ),
    "reply__apple_mail_quoted.eml": Expect(
        "stored",
        "chloe@icloud.example",
        "Chloé Dubois",
        text=("Perfect, merci",),
        not_in_text=("refund was issued", "Sent from my iPhone"),
        quoted=("refund was issued",),
    ),
    "message__long_message_id.eml": Expect("stored", "longid@example.com", text=("longer than any column",)),
    "message__utf16_body.eml": Expect("stored", "uwe@example.de", text=("UTF-16 kodiert: Grüße",)),
    # An encoded-word decoding to a line break and another address stays in the display name.
    "message__header_injection_in_encoded_word.eml": Expect(
        "stored",
        "eve@example.com",
        "Eve Bcc: victim@example.com",
        "Hello X-Injected: yes",
        text=("must not become headers",),
    ),
    "message__nul_bytes_and_a_long_line.eml": Expect(
        "stored",
        "nils@example.com",
        text=("Before the junk.", "After the NULs. AAAA", "The end."),
        not_in_text=("\x00",),
    ),
    "message__uuencoded_attachment.eml": Expect(
        "stored",
        "old@example.com",
        text=("the old way",),
        attachments=(("notes.txt", "application/octet-stream"),),
    ),
    "message__html_with_data_uri_and_styles.eml": Expect(
        "stored", "dana@example.com", text=("See order 7",), extra={"subject": "Pretty HTML"}
    ),
    "invalid__nested_too_deep.eml": Expect("rejected", reason="nested more than 30 deep"),
    "bounce__qmail_failure_notice.eml": Expect(
        "bounce", bounced="<parley-outbound-10@parley.test>", reason="bounced"
    ),
    "message__auto_submitted_no.eml": Expect("stored", "hana@example.com", text=("wants an answer",)),
    # Reports about mail that did arrive, or is only late: our message stays sent.
    "bounce__dsn_delayed.eml": Expect(
        "ignored", bounced="<parley-outbound-7@parley.test>", bounced_status="sent"
    ),
    "auto_reply__read_receipt_mdn.eml": Expect(
        "ignored", bounced="<parley-outbound-8@parley.test>", bounced_status="sent"
    ),
    "auto_reply__arf_feedback_report.eml": Expect(
        "ignored", bounced="<parley-outbound-9@parley.test>", bounced_status="sent"
    ),
    "auto_reply__auto_submitted.eml": Expect("ignored"),
    "auto_reply__x_autoreply.eml": Expect("ignored"),
    "auto_reply__precedence.eml": Expect("ignored"),
    "bounce__dsn_multipart_report.eml": Expect(
        "bounce", bounced="<parley-outbound-1@parley.test>", reason="5.1.1"
    ),
    "bounce__dsn_with_original_message.eml": Expect(
        "bounce", bounced="<parley-outbound-2@parley.test>", reason="5.2.2"
    ),
    "invalid__missing_from.eml": Expect("rejected", reason="no sender address"),
    "invalid__not_an_email.eml": Expect("rejected", reason="does not start with a header field"),
}


def corpus() -> list[str]:
    return sorted(p.name for p in CORPUS.glob("*.eml"))


def test_every_corpus_file_has_an_expectation() -> None:
    assert set(corpus()) == set(EXPECTED)


@dataclass
class Intake:
    db: Database
    runtime: EmailIntake
    tenant_id: int
    inbox_id: int

    async def accept(self, raw: bytes) -> IntakeOutcome:
        inbox = await self.runtime.directory.get(self.inbox_id)
        return await accept_email(self.runtime, raw, envelope_recipients=(), inbox=inbox)

    async def count(self, model: type[object]) -> int:
        async with self.db.sessionmaker() as session:
            return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


class _Notifier:
    def __init__(self) -> None:
        self.calls = 0

    def notify(self) -> None:
        self.calls += 1


@pytest_asyncio.fixture
async def intake(db: Database, tmp_path: Path) -> AsyncIterator[Intake]:
    tenant = await make_tenant(db, "acme")
    inbox_id = await make_email_inbox(db, tenant.tenant_id)
    directory = InboxDirectory(db, SecretBox(SECRET_KEY))
    runtime = EmailIntake(
        db=db,
        directory=directory,
        media=MediaStore(tmp_path / "media", 10 * 1024 * 1024, base_url="http://127.0.0.1:8080"),
        notifier=_Notifier(),
    )
    yield Intake(db, runtime, tenant.tenant_id, inbox_id)
    await directory.close()


async def sent_message(intake: Intake, provider_message_id: str) -> int:
    """An agent's reply already sent from this inbox, with our Message-ID (for bounces to find)."""
    async with intake.db.transaction() as session:
        contact = Contact(tenant_id=intake.tenant_id, name="Someone", email="someone@example.org")
        session.add(contact)
        await session.flush()
        from crm_core.models import ChannelIdentity

        identity = ChannelIdentity(
            tenant_id=intake.tenant_id, contact_id=contact.id, kind="email", address="someone@example.org"
        )
        session.add(identity)
        await session.flush()
        conversation = Conversation(
            tenant_id=intake.tenant_id,
            inbox_id=intake.inbox_id,
            contact_id=contact.id,
            identity_id=identity.id,
            thread_key="<original@example.org>",
        )
        session.add(conversation)
        await session.flush()
        message = Message(
            tenant_id=intake.tenant_id,
            inbox_id=intake.inbox_id,
            conversation_id=conversation.id,
            direction="outbound",
            sender_type="user",
            body="Thanks, your order ships tomorrow.",
            provider_message_id=provider_message_id,
            status="sent",
        )
        session.add(message)
        await session.flush()
        return message.id


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_corpus_message_through_the_intake(intake: Intake, name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    expect = EXPECTED[name]
    outbound_id = await sent_message(intake, expect.bounced) if expect.bounced else None
    messages_before = await intake.count(Message)
    events_before = await intake.count(OutboxEvent)

    outcome = await intake.accept(raw)

    assert outcome.status == expect.outcome, outcome
    if expect.reason is not None:
        assert expect.reason in outcome.reason or expect.outcome == "bounce"
    if expect.outcome == "rejected":
        with pytest.raises(MalformedPayload, match=expect.reason):
            parse_email(raw)
    if expect.outcome != "stored":
        # Nothing half-stored: no message, no conversation, no contact, no event (a bounce only
        # updates the message it reports on, and announces that).
        assert await intake.count(Message) == messages_before
        failed = expect.bounced is not None and expect.bounced_status == "failed"
        assert await intake.count(OutboxEvent) == events_before + (1 if failed else 0)
        assert await intake.count(Conversation) == (1 if expect.bounced else 0)
        if expect.bounced:
            async with intake.db.sessionmaker() as session:
                bounced = await session.get_one(Message, outbound_id)
            assert bounced.status == expect.bounced_status
            if failed:
                assert bounced.error_code == expect.reason
                assert bounced.error_message
        return

    [message_id] = outcome.message_ids
    async with intake.db.sessionmaker() as session:
        message = await session.get_one(Message, message_id)
        conversation = await session.get_one(Conversation, message.conversation_id)
        contact = await session.get_one(Contact, conversation.contact_id)
    parsed = parse_email(raw)
    assert message.provider_message_id == parsed.message_id
    assert conversation.thread_key == parsed.message_id  # a new email opens its own thread
    if expect.sender:
        assert contact.email == expect.sender
    if expect.sender_name:
        assert contact.name == expect.sender_name
    if expect.subject:
        assert message.extra["subject"] == expect.subject
    for snippet in expect.text:
        assert snippet in message.body, (snippet, message.body)
    for snippet in expect.not_in_text:
        assert snippet not in message.body, (snippet, message.body)
    for snippet in expect.quoted:
        assert snippet in message.extra.get("quoted", ""), message.extra
    assert [(a["filename"], a["content_type"]) for a in message.attachments] == list(expect.attachments)
    for attachment in message.attachments:
        key = attachment["url"].split("/media/", 1)[1]
        assert await intake.runtime.media.read(key)  # the bytes are in the media store
    if expect.thread_refs:
        assert parsed.thread_refs[: len(expect.thread_refs)] == expect.thread_refs
    for key, value in expect.extra.items():
        assert message.extra.get(key) == value, (key, message.extra)
    html = message.extra.get("html") or ""
    for dangerous in ("<script", "onerror", "onload", "javascript:", "<iframe", "data:text", "<form", "<svg"):
        assert dangerous not in html.lower()

    again = await intake.accept(raw)  # the same mail delivered twice (a transport retrying)
    assert again.status == "duplicate"
    assert await intake.count(Message) == messages_before + 1


async def test_the_whole_corpus_in_one_inbox_threads_nothing_together_by_accident(intake: Intake) -> None:
    outcomes = [await intake.accept((CORPUS / name).read_bytes()) for name in corpus()]
    stored = [o for o in outcomes if o.status == "stored"]
    assert len(stored) == sum(e.outcome == "stored" for e in EXPECTED.values())
    # Replies to messages this inbox never sent open their own conversations.
    assert await intake.count(Conversation) == len(stored)


@pytest.mark.parametrize("name", corpus())
async def test_a_cut_or_damaged_corpus_message_is_stored_or_rejected_never_a_crash(
    intake: Intake, name: str
) -> None:
    raw = (CORPUS / name).read_bytes()
    variants = [raw[: len(raw) * i // 7] for i in range(1, 7)]
    variants.append(raw.replace(b"\r\n", b"\r"))  # old Mac line endings
    variants.append(raw.replace(b"--", b"-"))  # every MIME boundary broken
    variants.append(bytes(b ^ 0x80 if i % 97 == 0 else b for i, b in enumerate(raw)))  # flipped high bits
    for variant in variants:
        messages_before = await intake.count(Message)
        outcome = await intake.accept(variant)
        assert outcome.status in ("stored", "duplicate", "ignored", "bounce", "rejected")
        if outcome.status == "rejected":
            assert outcome.reason
            assert await intake.count(Message) == messages_before
