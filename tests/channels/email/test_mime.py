"""parse_email: whatever the bytes, a ParsedEmail or MalformedPayload with a reason."""

from __future__ import annotations

import time
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.base import DeliveryStatus, InboundMessage, MalformedPayload
from channels.email.mime import html_to_text, parse_email, split_reply


def mail(body: str = "Hello", **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = headers.pop("From", "Ann Lee <Ann.Lee@Example.com>")
    message["To"] = headers.pop("To", "support@parley.test")
    message["Subject"] = headers.pop("Subject", "Order 1001")
    message["Message-ID"] = headers.pop("Message_ID", "<m1@example.com>")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()


def test_addresses_ids_and_threading_references() -> None:
    parsed = parse_email(
        mail(In_Reply_To="<b@x>", References="<root@x>  <a@x>\t<b@x>", Cc="Bob <BOB@example.com>, junk"),
        envelope_recipients=["Support@Parley.test"],
    )
    assert (parsed.from_address, parsed.from_name) == ("ann.lee@example.com", "Ann Lee")
    assert parsed.message_id == "<m1@example.com>"
    assert parsed.cc == ("bob@example.com",)
    # Nearest first: what it answers, then the chain backwards.
    assert parsed.thread_refs == ("<b@x>", "<a@x>", "<root@x>")
    assert parsed.recipients == ("support@parley.test", "bob@example.com")
    event = parsed.to_inbound(recipient="support@parley.test")
    assert isinstance(event, InboundMessage)
    assert (event.thread_key, event.thread_refs) == ("<m1@example.com>", parsed.thread_refs)
    assert event.extra["subject"] == "Order 1001" and event.extra["cc"] == ["bob@example.com"]


def test_a_missing_message_id_is_synthesised_from_the_bytes_deterministically() -> None:
    raw = b"From: a@example.com\r\nSubject: hi\r\n\r\nno id\r\n"
    first, again = parse_email(raw), parse_email(raw)
    assert first.message_id == again.message_id and first.message_id.endswith("@parley.invalid>")
    assert parse_email(raw + b"more").message_id != first.message_id


def test_an_overlong_message_id_is_stored_as_a_hash_and_still_matches_references() -> None:
    long_id = "<" + "x" * 300 + "@example.com>"
    original = parse_email(mail(Message_ID=long_id))
    reply = parse_email(mail(Message_ID="<r@example.com>", In_Reply_To=long_id))
    assert len(original.message_id) < 200
    assert reply.thread_refs == (original.message_id,)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty"),
        (b"   \r\n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "header"),
        (b"just some text\nwithout headers\n", "header"),
        (b"Subject: no sender\r\n\r\nbody\r\n", "sender"),
        (b"From: not an address\r\nSubject: x\r\n\r\nbody\r\n", "sender"),
    ],
)
def test_what_is_not_an_email_is_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedPayload, match=reason):
        parse_email(raw)


def test_the_envelope_sender_stands_in_for_a_missing_from() -> None:
    parsed = parse_email(b"Subject: x\r\n\r\nbody\r\n", envelope_sender="Robot@Example.com")
    assert parsed.from_address == "robot@example.com"


def test_raw_8bit_headers_and_a_charset_that_lies() -> None:
    raw = (
        "From: J\u00fcrgen <j@example.de>\r\nSubject: R\u00fcckfrage\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode() + "Caf\u00e9 \u20ac5".encode("cp1252")
    parsed = parse_email(raw)
    assert parsed.from_name == "J\u00fcrgen" and parsed.subject == "R\u00fcckfrage"
    assert parsed.text == "Caf\u00e9 \u20ac5"


def test_html_is_sanitised_and_an_html_only_mail_gets_text_with_its_quote_split_off() -> None:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message.set_content(
        '<p>New answer <b>here</b><script>alert(1)</script></p><img src=x onerror="alert(2)">'
        '<a href="javascript:alert(3)">x</a><blockquote>old <i>stuff</i></blockquote>',
        subtype="html",
    )
    parsed = parse_email(message.as_bytes())
    assert parsed.html is not None
    assert "script" not in parsed.html and "onerror" not in parsed.html and "javascript" not in parsed.html
    assert parsed.text == "New answer here\nx"
    assert parsed.quoted == "> old stuff"


def test_attachments_with_encoded_names_and_inline_images() -> None:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message.set_content("see attached")
    message.add_alternative('<p>see <img src="cid:img1@x"></p>', subtype="html")
    message.get_payload()[1].add_related(b"\x89PNG-bytes", "image", "png", cid="<img1@x>")
    message.add_attachment(
        b"%PDF-1.4", maintype="application", subtype="pdf", filename="kvitto f\u00f6r m\u00e4rz.pdf"
    )
    message.add_attachment(b"x", maintype="application", subtype="octet-stream", filename="../../etc/passwd")
    parsed = parse_email(message.as_bytes())
    assert [(a.filename, a.content_type, a.data, a.inline) for a in parsed.attachments] == [
        ("attachment.png", "image/png", b"\x89PNG-bytes", True),
        ("kvitto f\u00f6r m\u00e4rz.pdf", "application/pdf", b"%PDF-1.4", False),
        ("passwd", "application/octet-stream", b"x", False),
    ]
    assert parsed.text == "see attached"
    assert "cid:img1@x" in (parsed.html or "")
    event = parsed.to_inbound()
    assert [a.data for a in event.attachments] == [a.data for a in parsed.attachments]
    assert event.extra["inline_content_ids"] == ["<img1@x>"]


def test_a_dsn_bounce_becomes_a_failed_status_for_the_message_we_sent() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.org\r\nTo: support@parley.test\r\nSubject: Undelivered Mail\r\n"
        b"Message-ID: <bounce1@mx>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
        b"Final-Recipient: rfc822; Nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
        b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: support@parley.test\r\n"
        b"Message-ID: <parley.7.abc@parley.test>\r\nSubject: Re: Order\r\n\r\n--B--\r\n"
    )
    parsed = parse_email(raw)
    assert parsed.bounce is not None and parsed.bounce.failed
    assert parsed.bounce.original_message_id == "<parley.7.abc@parley.test>"
    assert parsed.bounce.recipient == "nobody@example.org"
    [event] = parsed.to_events()
    assert isinstance(event, DeliveryStatus)
    assert (event.provider_message_id, event.status, event.error_code) == (
        "<parley.7.abc@parley.test>",
        "failed",
        "5.1.1",
    )
    assert event.error_message is not None and "User unknown" in event.error_message


def test_a_delayed_delivery_report_changes_nothing() -> None:
    raw = (
        b"From: postmaster@mx.example.org\r\nSubject: Delayed\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; x@example.org\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n--B--\r\n"
    )
    assert parse_email(raw).to_events() == []


@pytest.mark.parametrize(
    "header",
    [
        {"Auto_Submitted": "auto-replied"},
        {"X_Autoreply": "yes"},
        {"Precedence": "auto_reply"},
        {"Precedence": "bulk"},
        {"Subject": "Automatic reply: Order 1001"},
    ],
)
def test_auto_replies_are_recognised_and_produce_no_event(header: dict[str, str]) -> None:
    parsed = parse_email(mail("I am away", **header))
    assert parsed.auto_reply
    assert parsed.to_events() == []


def test_a_person_writing_auto_submitted_no_is_not_an_auto_reply() -> None:
    assert not parse_email(mail(Auto_Submitted="no")).auto_reply


@pytest.mark.parametrize(
    "body, new, quoted_start, signature",
    [
        (
            "Thanks!\n\nOn Tue, 3 Mar 2026 at 15:00, Support <s@parley.test> wrote:\n> Try again.\n",
            "Thanks!",
            "On Tue",
            "",
        ),
        (
            "Works now.\n\nOn Tue, Mar 3, 2026 at 3:00 PM Support Team\n<s@parley.test> wrote:\n> x\n",
            "Works now.",
            "On Tue",
            "",
        ),
        (
            "Yes please.\n\n________________________________\nFrom: Support <s@parley.test>\n"
            "Sent: Tuesday, March 3, 2026 3:00 PM\nSubject: Your order\n\nHello",
            "Yes please.",
            "____",
            "",
        ),
        ("Ok\n\n-----Original Message-----\nFrom: x\n", "Ok", "-----Original", ""),
        ("Danke!\n\nAm 03.03.2026 um 15:00 schrieb Support <s@parley.test>:\n> x", "Danke!", "Am 03", ""),
        ("Answer\n-- \nAnn Lee\nAcme\n\n> old\n> text\n", "Answer", "> old", "-- \nAnn Lee\nAcme"),
        ("Short one\n\nSent from my iPhone", "Short one", "", "Sent from my iPhone"),
        # Inline answers between quotes: everything is kept as the new text.
        (
            "> question 1\nanswer 1\n> question 2\nanswer 2",
            "> question 1\nanswer 1\n> question 2\nanswer 2",
            "",
            "",
        ),
        # Nothing of its own: the whole text stays.
        ("> only a quote\n> nothing new", "> only a quote\n> nothing new", "", ""),
    ],
)
def test_new_text_is_split_from_quoted_history_and_signature(
    body: str, new: str, quoted_start: str, signature: str
) -> None:
    got_new, got_quoted, got_signature = split_reply(body)
    assert got_new == new
    assert got_quoted.startswith(quoted_start) if quoted_start else got_quoted == ""
    assert got_signature == signature


@pytest.mark.parametrize(
    "crafted",
    [
        "On " + "x " * 100_000,
        "On x wrote\n" * 20_000,
        "\n" * 200_000,
        "From: a\n" * 50_000,
        "> a\n\n" * 50_000,
        "-- \n" * 50_000,
    ],
)
def test_splitting_is_fast_on_crafted_bodies(crafted: str) -> None:
    # The reply-parser libraries take seconds to minutes on a few kilobytes of these.
    started = time.perf_counter()
    split_reply(crafted)
    parse_email(mail(crafted))
    assert time.perf_counter() - started < 3


@pytest.mark.parametrize(
    "crafted_header",
    [
        b"Subject: " + b"=?utf-8?q?a?= " * 20_000,
        b"To: " + b"=?utf-8?q?a?= " * 20_000 + b"<x@example.com>",
        b"To: " + b"x@example.com, " * 20_000,
        b"Content-Type: text/plain; " + b"a=b; " * 20_000,
        b"References: " + b"<a@b> " * 50_000,
    ],
)
def test_parsing_is_fast_on_crafted_headers(crafted_header: bytes) -> None:
    # The stdlib's structured headers (policy.default) take 5-10 s on each of these.
    started = time.perf_counter()
    parse_email(b"From: a@example.com\r\n" + crafted_header + b"\r\n\r\nbody\r\n")
    assert time.perf_counter() - started < 1.5


def test_encoded_words_decode_in_their_charsets_and_never_become_addresses() -> None:
    raw = (
        b"From: =?iso-8859-1?q?Fran=E7ois?= =?utf-8?b?ZOKAmUFycw==?= <f@example.fr>\r\n"
        b"To: =?utf-8?q?Eve=0D=0ABcc:_victim@example.com?= <eve@example.com>\r\n"
        b"Subject: =?bogus-charset?q?caf=C3=A9?= =?utf-8?b?not base64!?=\r\n\r\nx"
    )
    parsed = parse_email(raw)
    assert parsed.from_name == "Fran\u00e7oisd\u2019Ars"  # no space between adjacent encoded-words
    assert parsed.to == ("eve@example.com",)
    assert parsed.subject.startswith("caf\u00e9")


def test_html_to_text_drops_scripts_and_styles() -> None:
    assert html_to_text("<style>p{}</style><p>a &amp; b</p><script>x()</script><div>c</div>") == "a & b\nc"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_parse_or_are_refused_with_a_reason(raw: bytes) -> None:
    try:
        parse_email(raw)
    except MalformedPayload as e:
        assert str(e)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(
            [
                b"From: a@example.com\r\n",
                b"Content-Type: multipart/mixed; boundary=X\r\n",
                b"Content-Type: multipart/alternative; boundary=Y\r\n",
                b"Content-Type: text/plain; charset=bogus\r\n",
                b"Content-Transfer-Encoding: base64\r\n",
                b"Content-Transfer-Encoding: quoted-printable\r\n",
                b"Content-Disposition: attachment; filename*=utf-8''%FF%FE.txt\r\n",
                b"Subject: =?utf-8?B?broken?=\r\n",
                b"To: <<<@@>>>, undisclosed-recipients:;\r\n",
                b"Message-ID: <<a@b>\r\n",
                b"\r\n",
                b"--X\r\n",
                b"--Y\r\n",
                b"--X--\r\n",
                b"=E2=82\r\n",
                b"aGVsbG8=\r\n",
                b"\xff\xfe\x00 body\r\n",
                b"Content-Type: message/rfc822\r\n",
                b"Content-Type: multipart/report; report-type=delivery-status; boundary=X\r\n",
                b"Content-Type: message/delivery-status\r\n",
            ]
        ),
        max_size=40,
    )
)
def test_mime_shaped_garbage_never_crashes(lines: list[bytes]) -> None:
    try:
        parsed = parse_email(b"From: a@example.com\r\n" + b"".join(lines))
    except MalformedPayload as e:
        assert str(e)
    else:
        parsed.to_events()


def test_mail_from_the_null_sender_is_never_a_conversation_nor_a_bounce_unless_it_reports_one() -> None:
    # A vacation notice sent from <> (as RFC 3834 recommends) answering our message: no event, and
    # above all not a failure of the message it answers.
    vacation = mail("I am away until Monday.", In_Reply_To="<parley.7.abc@parley.test>")
    parsed = parse_email(vacation, envelope_sender="<>")
    assert parsed.bounce is None and parsed.machine_report
    assert parsed.to_events() == []
    assert parse_email(vacation, envelope_sender="ann@example.com").to_events() != []


def test_control_characters_never_reach_the_database() -> None:
    raw = (
        b"From: =?utf-8?q?Ann=00_Lee?= <ann@example.com>\r\nSubject: hi\x01there\r\n"
        b"Message-ID: <a\x00b@example.com>\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<p>one\x00two\x1b[31m</p>"
    )
    parsed = parse_email(raw)
    strings = [parsed.from_name or "", parsed.subject, parsed.text, parsed.full_text, parsed.html or ""]
    assert not any(ch in s for s in strings for ch in "\x00\x01\x1b")
    assert parsed.text == "onetwo[31m"
    assert parsed.message_id.endswith("@parley.invalid>")  # the id with a NUL is not an id
