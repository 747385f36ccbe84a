"""Raw RFC 5322 bytes into a `ParsedEmail`: addresses, threading ids, new text, HTML, attachments.

Whatever arrives (odd charsets, 8-bit headers, broken MIME, missing headers), `parse_email` either
returns a `ParsedEmail` or raises `MalformedPayload` with the reason: the stdlib parser is lenient,
and every header and part is read defensively on top of it, so one bad part costs that part only.

The new text is split from quoted history and signature line by line with bounded patterns: the
reply-parser libraries on PyPI (mail-parser-reply, email-reply-parser) take seconds to minutes on
crafted bodies of a few kilobytes (catastrophic regex backtracking), which a mail gateway cannot
afford, so the split here is linear in the body's length.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import email.utils
import hashlib
import logging
import mimetypes
import quopri
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from html.parser import HTMLParser
from typing import Any

import nh3

from channels.base import Address, Attachment, DeliveryStatus, InboundEvent, InboundMessage, MalformedPayload

logger = logging.getLogger(__name__)

# Message ids longer than this are stored as a hash (messages.provider_message_id is 200 wide).
MAX_ID_LENGTH = 190
MAX_REFERENCES = 50
MAX_PARTS = 500
MAX_DEPTH = 30
# Parsing a body for quotes works on at most this much text; the rest is kept as new text.
MAX_SPLIT_CHARS = 256 * 1024

_MSG_ID = re.compile(r"<([^<>\s\x00-\x1f\x7f\ud800-\udfff]{1,998})>")
_AUTO_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|out of (the )?office( autoreply)?)\s*:",
    re.IGNORECASE,
)
# "Message-ID: <id>" at the start of a line of a bounce's text: the returned message's own header.
_PASTED_MESSAGE_ID = re.compile(r"^message-id:[ \t]*<([^<>\s]{1,998})>", re.IGNORECASE | re.MULTILINE)
_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster)@", re.IGNORECASE)
_ALLOWED_HTML_SCHEMES = {"http", "https", "mailto", "tel", "cid"}


@dataclass(frozen=True, slots=True)
class EmailAttachment:
    filename: str | None
    content_type: str
    data: bytes = field(repr=False)
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True, slots=True)
class DsnReport:
    """A delivery status notification (RFC 3464) about a message we sent."""

    original_message_id: str | None
    recipient: str | None
    action: str | None
    status: str | None
    diagnostic: str | None

    @property
    def failed(self) -> bool:
        """A permanent failure; "delayed" and "delivered" reports change nothing."""
        if self.action is not None:
            return self.action.lower() == "failed"
        return self.status is None or self.status.startswith("5")

    def reason(self) -> str:
        parts = [f"bounced by {self.recipient}" if self.recipient else "bounced"]
        if self.status:
            parts.append(f"status {self.status}")
        if self.diagnostic:
            parts.append(self.diagnostic)
        return ": ".join(parts)[:1000]


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    message_id: str
    from_address: str
    from_name: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    delivered_to: tuple[str, ...]
    reply_to: tuple[str, ...]
    subject: str
    date: datetime | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    # The new text (quoted history and signature removed where recognised), the whole plain text,
    # the sanitised HTML, and what was cut off as quote or signature.
    text: str
    full_text: str
    html: str | None
    quoted: str
    signature: str
    attachments: tuple[EmailAttachment, ...]
    auto_reply: bool
    bounce: DsnReport | None
    # Other mail sent by a machine that must not open a conversation (read receipts, FBL reports).
    machine_report: bool = False
    envelope_recipients: tuple[str, ...] = ()

    @property
    def thread_refs(self) -> tuple[str, ...]:
        """The ids this message answers, nearest first: In-Reply-To, then References backwards."""
        refs: list[str] = []
        for ref in (*self.in_reply_to, *reversed(self.references)):
            if ref not in refs and ref != self.message_id:
                refs.append(ref)
        return tuple(refs[:MAX_REFERENCES])

    @property
    def recipients(self) -> tuple[str, ...]:
        """Every address this message was for: envelope, Delivered-To, To, Cc (deduplicated)."""
        seen: list[str] = []
        for address in (*self.envelope_recipients, *self.delivered_to, *self.to, *self.cc):
            if address and address not in seen:
                seen.append(address)
        return tuple(seen)

    def to_inbound(
        self, *, recipient: str | None = None, conversation_id: int | None = None
    ) -> InboundMessage:
        """The channel event: a message opening its own thread unless its references are known."""
        extra: dict[str, Any] = {"subject": self.subject}
        if self.to:
            extra["to"] = list(self.to)
        if self.cc:
            extra["cc"] = list(self.cc)
        if self.html:
            extra["html"] = self.html
        if self.quoted:
            extra["quoted"] = self.quoted
        if self.signature:
            extra["signature"] = self.signature
        if self.date is not None:
            extra["date"] = self.date.isoformat()
        inline = [a.content_id for a in self.attachments if a.inline and a.content_id]
        if inline:
            extra["inline_content_ids"] = inline
        return InboundMessage(
            provider_message_id=self.message_id,
            sender=Address("email", self.from_address),
            recipient=Address("email", recipient) if recipient else None,
            text=self.text or self.full_text or self.subject,
            attachments=tuple(
                Attachment(
                    url="",
                    content_type=a.content_type,
                    filename=a.filename,
                    size=len(a.data),
                    data=a.data,
                )
                for a in self.attachments
            ),
            sender_name=self.from_name,
            thread_key=self.message_id,
            thread_refs=self.thread_refs,
            conversation_id=conversation_id,
            extra=extra,
        )

    def to_events(
        self, *, recipient: str | None = None, conversation_id: int | None = None
    ) -> list[InboundEvent]:
        """What this email means for the pipeline, for every transport alike.

        A bounce marks the message it reports on failed; auto-replies, delayed-delivery notices
        and other machine reports mean nothing (logged, never a conversation, never answered);
        anything else is a customer's message.
        """
        if self.bounce is not None:
            if self.bounce.failed and self.bounce.original_message_id:
                return [
                    DeliveryStatus(
                        provider_message_id=self.bounce.original_message_id,
                        status="failed",
                        error_code=(self.bounce.status or "bounced")[:40],
                        error_message=self.bounce.reason(),
                        extra={"bounce_message_id": self.message_id},
                    )
                ]
            logger.info("email %s: delivery report without a failure we sent, ignored", self.message_id)
            return []
        if self.auto_reply or self.machine_report:
            logger.info("email %s from %s: automatic message, ignored", self.message_id, self.from_address)
            return []
        return [self.to_inbound(recipient=recipient, conversation_id=conversation_id)]


def parse_email(
    raw: bytes, *, envelope_recipients: Sequence[str] = (), envelope_sender: str | None = None
) -> ParsedEmail:
    """Parse one message; `MalformedPayload` with the reason if these bytes are not an email."""
    if not isinstance(raw, bytes | bytearray):
        raise MalformedPayload("an email must be bytes")
    if not raw.strip():
        raise MalformedPayload("the message is empty")
    if not _starts_with_header(bytes(raw)):
        raise MalformedPayload("the message does not start with a header field (Name: value)")
    try:
        return _parse(bytes(raw), envelope_recipients, envelope_sender)
    except MalformedPayload:
        raise
    except (RecursionError, MemoryError) as e:
        raise MalformedPayload(f"the message is too deeply nested or too large to parse: {e!r}") from e
    except Exception as e:
        # The stdlib parser's failure modes on hostile input are many and undocumented; whatever
        # is left after the defensive reading below is reported as this message's problem.
        logger.exception("email could not be parsed")
        raise MalformedPayload(f"the message cannot be parsed: {type(e).__name__}: {e}") from e


def _starts_with_header(raw: bytes) -> bool:
    first = raw.lstrip(b"\r\n").split(b"\n", 1)[0]
    if first.startswith(b"From "):  # mbox separator line
        first = raw.lstrip(b"\r\n").split(b"\n", 2)[1] if raw.count(b"\n") > 1 else b""
    name, colon, _ = first.partition(b":")
    return bool(colon) and bool(re.fullmatch(rb"[!-9;-~]{1,200}", name))


def _parse(raw: bytes, envelope_recipients: Sequence[str], envelope_sender: str | None) -> ParsedEmail:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)

    from_name, from_address = _first_address(msg, "From")
    if from_address is None:
        from_name, from_address = _first_address(msg, "Sender")
    if from_address is None and envelope_sender:
        from_address = _normalise_address(envelope_sender)
    if from_address is None:
        raise MalformedPayload(
            "the message has no sender address (no usable From, Sender or envelope sender)"
        )

    message_id = _message_ids(_header(msg, "Message-ID"))
    own_id = message_id[0] if message_id else "<" + hashlib.sha256(raw).hexdigest()[:40] + "@parley.invalid>"
    subject = _single_line(_header(msg, "Subject") or "")[:998]

    body = _Body()
    _walk(msg, body, depth=0)
    html = _sanitise_html(_normalise_newlines(body.html)) if body.html is not None else None
    full_text = body.plain if body.plain is not None else (html_to_text(body.html) if body.html else "")
    full_text = _normalise_newlines(full_text).strip("\n")
    new_text, quoted, signature = split_reply(full_text)

    content_type = msg.get_content_type()
    report_type = _param(msg, "report-type") if content_type == "multipart/report" else ""
    bounce = body.dsn
    if bounce is None and _looks_like_bounce(msg, from_address):
        # A bounce without a machine-readable report (old MTAs): its original id from the
        # quoted headers, the copy of the message qmail and Exim paste into the text, or the
        # threading headers some of them set.
        refs = _message_ids(_header(msg, "In-Reply-To")) + _message_ids(_header(msg, "References"))
        pasted = _PASTED_MESSAGE_ID.findall(full_text[:MAX_SPLIT_CHARS])
        bounce = DsnReport(
            original_message_id=body.original_message_id
            or (_storable_id(f"<{pasted[-1]}>") if pasted else None)
            or (refs[0] if refs else None),
            recipient=None,
            action="failed",
            status=None,
            diagnostic=_single_line(new_text)[:300] or None,
        )
    return ParsedEmail(
        message_id=_storable_id(own_id),
        from_address=from_address,
        from_name=from_name,
        to=_addresses(msg, "To"),
        cc=_addresses(msg, "Cc"),
        delivered_to=_addresses(msg, "Delivered-To") + _addresses(msg, "X-Original-To"),
        reply_to=_addresses(msg, "Reply-To"),
        subject=subject,
        date=_date(msg),
        in_reply_to=tuple(_storable_id(i) for i in _message_ids(_header(msg, "In-Reply-To"))),
        references=tuple(_storable_id(i) for i in _message_ids(_header(msg, "References"))[-MAX_REFERENCES:]),
        text=new_text,
        full_text=full_text,
        html=html,
        quoted=quoted,
        signature=signature,
        attachments=tuple(body.attachments),
        auto_reply=_is_auto_reply(msg, subject),
        bounce=bounce,
        # Read receipts and feedback reports; and anything sent from the null reverse-path, which
        # only notifications use (RFC 5321 4.5.5): vacation replies, bounces of other kinds.
        machine_report=(bool(report_type) and report_type.lower() != "delivery-status")
        or (envelope_sender is not None and envelope_sender.strip("<> ") == ""),
        envelope_recipients=tuple(
            a for a in (_normalise_address(r) for r in envelope_recipients) if a is not None
        ),
    )


# Headers, read from their raw text. The stdlib's structured headers (policy.default) take
# seconds on a few hundred kilobytes of crafted encoded-words, addresses or parameters (their
# parser is superlinear), so the message is parsed with compat32 and headers are decoded here:
# RFC 2047 encoded-words one by one, addresses from the raw text so that an encoded-word can never
# become an address.


def _raw_values(msg: Message, name: str) -> list[str]:
    lowered = name.lower()
    return [_repair(str(value)) for key, value in msg.raw_items() if key.lower() == lowered]


def _header(msg: Message, name: str) -> str | None:
    """The first `name` header, decoded (encoded-words, raw 8-bit bytes), or None."""
    values = _raw_values(msg, name)
    return decode_words(values[0]) if values else None


def _repair(value: str) -> str:
    """Undo surrogate escapes of raw 8-bit header bytes: UTF-8 if they are, else Windows-1252."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


# An RFC 2047 encoded-word (with RFC 2231's optional `*language`), and the space between two of them,
# which is not part of the text (RFC 2047 6.2).
_ENCODED_WORD = re.compile(r"=\?([^?\s*]{1,40})(?:\*[^?\s]{0,20})?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t\r\n]+(?==\?)")


def decode_words(value: str) -> str:
    """A header's text with its encoded-words decoded, each in its charset (unknown ones as UTF-8)."""
    if "=?" not in value:
        return value
    return _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub("", value))


def _decode_word(match: re.Match[str]) -> str:
    charset, encoding, text = match.groups()
    try:
        if encoding in "bB":
            data = base64.b64decode(text + "=" * (-len(text) % 4))
        else:
            data = quopri.decodestring(text.replace("_", " ").encode("ascii", "replace"), header=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    return _bytes_to_text(data, charset)


def _bytes_to_text(data: bytes, charset: str | None) -> str:
    """Bytes in their declared charset, else UTF-8, else Windows-1252 (which decodes anything)."""
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("cp1252", "replace")


def _single_line(value: str) -> str:
    return " ".join(_CONTROL.sub("", value).split())


# C0 controls but tab and newline, DEL, and lone surrogates: PostgreSQL stores no NUL in text or
# JSON, and no surrogate in UTF-8; none of them is something a person wrote.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _normalise_address(value: str) -> str | None:
    """A bare, lower-case address, or None when it is not one (`local@domain`, printable, short)."""
    value = _repair(value).strip().strip("<>").strip()
    if not value or len(value) > 320 or value.count("@") < 1:
        return None
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return None
    local, _, domain = value.rpartition("@")
    if not local or not domain or ("." not in domain and domain.lower() != "localhost"):
        return None
    return value.lower()


def _quoted_word(match: re.Match[str]) -> str:
    # An encoded-word in an address header becomes a quoted string before the addresses are read:
    # decoded, it may hold line breaks, colons or addresses ("=?UTF-8?Q?Eve=0D=0ABcc:_x@evil?=
    # <eve@...>"), which must stay part of the display name, never be read as the address.
    return '"' + match.group(0).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _address_list(value: str | None) -> list[tuple[str | None, str]]:
    if not value:
        return []
    try:
        pairs = email.utils.getaddresses([_ENCODED_WORD.sub(_quoted_word, value)])
    except Exception:  # an address list the parser cannot read
        return []
    found: list[tuple[str | None, str]] = []
    for name, address in pairs:
        normalised = _normalise_address(address)
        if normalised is not None:
            found.append((_single_line(decode_words(name)) or None, normalised))
    return found


def _first_address(msg: Message, name: str) -> tuple[str | None, str | None]:
    values = _raw_values(msg, name)
    found = _address_list(values[0]) if values else []
    return found[0] if found else (None, None)


def _addresses(msg: Message, name: str) -> tuple[str, ...]:
    values: list[str] = []
    for raw_value in _raw_values(msg, name):
        for _, address in _address_list(raw_value):
            if address not in values:
                values.append(address)
    return tuple(values)


def _message_ids(value: str | None) -> list[str]:
    """The `<id>`s in a header; a bare id without brackets (broken clients) is bracketed."""
    if not value:
        return []
    ids = [f"<{m}>" for m in _MSG_ID.findall(value)]
    if not ids:
        ids = [
            f"<{token.strip('<>')}>"
            for token in value.split()
            if "@" in token and len(token) < 998 and not _CONTROL.search(token)
        ]
    return ids


def _storable_id(message_id: str) -> str:
    """The id as stored: itself, or a hash of it when it is too long for the column."""
    if len(message_id) <= MAX_ID_LENGTH:
        return message_id
    return "<" + hashlib.sha256(message_id.encode("utf-8", "replace")).hexdigest()[:40] + "@long-id.parley>"


def _date(msg: Message) -> datetime | None:
    value = _header(msg, "Date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _is_auto_reply(msg: Message, subject: str) -> bool:
    """RFC 3834's Auto-Submitted, the vendors' X-Autoreply family, Precedence, OOF subjects."""
    auto_submitted = (_header(msg, "Auto-Submitted") or "").strip().lower()
    if auto_submitted and auto_submitted != "no":
        return True
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Reply"):
        value = (_header(msg, name) or "").strip().lower()
        if value and value not in ("no", "false", "0"):
            return True
    precedence = (_header(msg, "Precedence") or "").strip().lower()
    if precedence in ("auto_reply", "bulk", "junk"):
        return True
    if (_header(msg, "X-Auto-Response-Suppress") or "") and (_header(msg, "X-MS-Exchange-Inbox-Rules-Loop")):
        return True
    return bool(_AUTO_SUBJECT.match(subject))


def _looks_like_bounce(msg: Message, from_address: str) -> bool:
    # Read receipts (disposition-notification) and spam complaints (feedback-report) are reports
    # too, but about mail that arrived: only a delivery-status report is a bounce.
    if msg.get_content_type() == "multipart/report" and _param(msg, "report-type").lower() in (
        "",
        "delivery-status",
    ):
        return True
    return bool(_BOUNCE_SENDER.match(from_address)) and bool(
        re.search(
            r"(undeliver|delivery (status|failure)|failure notice|returned mail)",
            _header(msg, "Subject") or "",
            re.IGNORECASE,
        )
    )


# The body: text, HTML, attachments and a DSN, from a walk over the MIME tree.


@dataclass(slots=True)
class _Body:
    plain: str | None = None
    html: str | None = None
    attachments: list[EmailAttachment] = field(default_factory=list)
    dsn: DsnReport | None = None
    original_message_id: str | None = None
    parts: int = 0


def _walk(part: Message, body: _Body, *, depth: int) -> None:
    body.parts += 1
    if body.parts > MAX_PARTS:
        raise MalformedPayload(f"the message has more than {MAX_PARTS} MIME parts")
    if depth > MAX_DEPTH:
        raise MalformedPayload(f"the message's MIME parts are nested more than {MAX_DEPTH} deep")
    content_type = _content_type(part)
    maintype = content_type.split("/", 1)[0]
    if maintype == "multipart":
        children = part.get_payload()
        if not isinstance(children, list):
            # A multipart without its boundary: the parser left the body as text. Read it as such.
            _leaf(part, "text/plain", body)
            return
        if content_type == "multipart/report":
            _report(part, children, body)
        for child in children:
            if isinstance(child, Message):
                _walk(child, body, depth=depth + 1)
        return
    _leaf(part, content_type, body)


def _param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
        if isinstance(value, tuple):  # an RFC 2231 parameter
            value = email.utils.collapse_rfc2231_value(value)
    except Exception:  # an unreadable Content-Type
        return ""
    return value if isinstance(value, str) else ""


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # a Content-Type the parser cannot read: RFC 2045's default
        return "text/plain"


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:  # unreadable Content-Disposition
        return None


def _leaf(part: Message, content_type: str, body: _Body) -> None:
    disposition = _disposition(part)
    filename = _filename(part)
    if content_type in ("message/delivery-status", "message/global-delivery-status"):
        return  # read by _report
    if content_type in ("text/rfc822-headers", "message/rfc822", "message/global") and body.dsn is not None:
        return  # the returned original inside a report, read by _report
    is_text = content_type in ("text/plain", "text/html") and disposition != "attachment" and filename is None
    if is_text:
        text = _decode_text(part)
        if content_type == "text/plain" and body.plain is None:
            body.plain = text
            return
        if content_type == "text/html" and body.html is None:
            body.html = text
            return
        if content_type == "text/plain" and body.plain is not None and disposition == "inline":
            body.plain += "\n\n" + text  # Apple Mail splits text around inline images
            return
        return  # a second alternative of the same kind
    data = _payload_bytes(part, content_type)
    if data is None:
        return
    content_id = _header(part, "Content-ID")
    body.attachments.append(
        EmailAttachment(
            filename=filename or _default_filename(content_type),
            content_type=content_type,
            data=data,
            content_id=_single_line(content_id)[:300] or None if content_id else None,
            inline=disposition == "inline" or (disposition is None and content_id is not None),
        )
    )


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # a filename parameter the parser cannot decode
        name = None
    if not name:
        return None
    name = _single_line(decode_words(_repair(str(name))))
    name = re.split(r"[\\/]", name)[-1].strip().lstrip(".")
    return name[:200] or None


def _default_filename(content_type: str) -> str:
    if content_type in ("message/rfc822", "message/global"):
        return "message.eml"
    if content_type == "application/ms-tnef":
        return "winmail.dat"
    return "attachment" + (mimetypes.guess_extension(content_type) or "")


def _payload_bytes(part: Message, content_type: str) -> bytes | None:
    if content_type.startswith("message/"):
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            try:
                return inner[0].as_bytes(policy=email.policy.compat32)
            except Exception:  # an attached message that will not serialise: its raw text
                return str(inner[0]).encode("utf-8", "replace")
    try:
        data = part.get_payload(decode=True)
    except Exception:  # undecodable transfer encoding: the raw payload
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else None


def _decode_text(part: Message) -> str:
    """A text part's content: its declared charset, else UTF-8, else Windows-1252."""
    try:
        data = part.get_payload(decode=True)
    except Exception:  # undecodable transfer encoding
        data = None
    if not isinstance(data, bytes):
        raw = part.get_payload()
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:  # an unreadable charset parameter
        charset = "utf-8"
    for candidate in (charset, "utf-8"):
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("cp1252", "replace")


def _report(part: Message, children: Sequence[Message | str], body: _Body) -> None:
    """Read a multipart/report's delivery-status and the returned original's Message-ID."""
    report_type = _param(part, "report-type").lower()
    original: str | None = None
    fields: dict[str, str] = {}
    for child in children:
        if not isinstance(child, Message):
            continue
        content_type = _content_type(child)
        if content_type in ("message/delivery-status", "message/global-delivery-status"):
            fields = _dsn_fields(child)
        elif content_type in ("message/rfc822", "message/global", "text/rfc822-headers"):
            original = _returned_message_id(child, content_type) or original
    body.original_message_id = original
    if report_type != "delivery-status" and not fields:
        return
    diagnostic = fields.get("diagnostic-code")
    if diagnostic and ";" in diagnostic:
        diagnostic = diagnostic.split(";", 1)[1].strip()
    recipient = fields.get("final-recipient") or fields.get("original-recipient")
    if recipient and ";" in recipient:
        recipient = recipient.split(";", 1)[1].strip()
    body.dsn = DsnReport(
        original_message_id=original,
        recipient=_normalise_address(recipient) if recipient else None,
        action=fields.get("action", "").strip().lower() or None,
        status=_single_line(fields.get("status") or "")[:20] or None,
        diagnostic=_single_line(diagnostic)[:500] if diagnostic else None,
    )


def _dsn_fields(part: Message) -> dict[str, str]:
    """The per-message and first per-recipient fields of a delivery-status body, lower-case names."""
    payload = part.get_payload()
    blocks: list[Message] = []
    if isinstance(payload, list):
        blocks = [b for b in payload if isinstance(b, Message)]
    text = ""
    if not blocks:
        text = _decode_text(part)
    fields: dict[str, str] = {}
    if blocks:
        for block in blocks:
            for key, value in block.raw_items():
                fields.setdefault(key.lower(), _single_line(_repair(str(value))))
    else:
        for line in _unfold(text):
            key, colon, value = line.partition(":")
            if colon and key.strip():
                fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _unfold(text: str) -> Iterator[str]:
    current = ""
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and current:
            current += " " + line.strip()
            continue
        if current:
            yield current
        current = line
    if current:
        yield current


def _returned_message_id(part: Message, content_type: str) -> str | None:
    if content_type == "text/rfc822-headers":
        text = _decode_text(part)
        for line in _unfold(text):
            key, colon, value = line.partition(":")
            if colon and key.strip().lower() == "message-id":
                ids = _message_ids(value)
                return _storable_id(ids[0]) if ids else None
        return None
    inner = part.get_payload()
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        ids = _message_ids(_header(inner[0], "Message-ID"))
        return _storable_id(ids[0]) if ids else None
    return None


# HTML: sanitised for showing, and turned into text when a message has no plain part.


def _sanitise_html(html: str) -> str:
    """HTML safe to show an agent: nh3 (ammonia) drops scripts, handlers, styles and unsafe URLs."""
    return nh3.clean(html, url_schemes=_ALLOWED_HTML_SCHEMES, link_rel="noopener noreferrer nofollow")


_BLOCKS = frozenset(
    (
        *("address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "footer"),
        *("h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p"),
        *("pre", "section", "table", "tr", "ul"),
    )
)
_SKIP = frozenset(("script", "style", "head", "title", "template"))


class _TextExtractor(HTMLParser):
    """HTML to plain text: blocks become lines, blockquotes become `> ` quotes, scripts vanish."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.quote_depth = 0
        self.skip_depth = 0

    def _flush(self, *, line_break: bool = False) -> None:
        text = _single_line("".join(self.current))
        self.current = []
        if text or line_break:
            self.lines.append(("> " * self.quote_depth) + text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip_depth += 1
            return
        # Gmail's and Outlook's quote containers hold an attribution line ("On … wrote:", "From: …
        # Sent: …") that split_reply recognises; a blockquote becomes `> ` lines.
        if tag == "blockquote":
            self._flush()
            self.quote_depth += 1
        elif tag == "br":
            self._flush(line_break=True)
        elif tag in _BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if tag in _BLOCKS:
            self._flush()
        if tag == "blockquote":
            self.quote_depth = max(0, self.quote_depth - 1)

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.current.append(data)


def html_to_text(html: str) -> str:
    """The readable text of an HTML body; quoted history comes out as `> ` lines."""
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient; anything it still raises costs only the text
        return _single_line(nh3.clean(html, tags=set()))
    parser._flush()
    return "\n".join(parser.lines).strip()


def _normalise_newlines(text: str) -> str:
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


# Separating the new text from quoted history and the signature, line by line.

_ATTRIBUTION_START = re.compile(r"^\s*(on|am|le|el|il|op|em|den|dne|w dniu)\s", re.IGNORECASE)
_ATTRIBUTION_WORD = re.compile(
    r"\b(wrote|schrieb|a écrit|escribió|ha scritto|schreef|escreveu|skrev|napsal|napisał)\b", re.IGNORECASE
)
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*-{2,}\s*(original message|forwarded message|ursprüngliche nachricht|message d'origine|"
    r"mensaje original|messaggio originale|oorspronkelijk bericht|weitergeleitete nachricht)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_HEADER_FROM = re.compile(r"^\s*\*?(from|von|de|da|van|od|från)\s*:\*?\s", re.IGNORECASE)
_HEADER_SENT = re.compile(
    r"^\s*\*?(sent|date|gesendet|datum|envoyé|enviado|fecha|inviato|verzonden|skickat|odesláno|wysłano)\s*:",
    re.IGNORECASE,
)
_UNDERSCORES = re.compile(r"^\s*_{8,}\s*$")
_MOBILE_SIGNATURE = re.compile(
    r"^\s*(sent from my \w+|sent from (mail|outlook|yahoo mail) for \w+|get outlook for \w+|"
    r"von meinem \w+ gesendet|envoyé de mon \w+)",
    re.IGNORECASE,
)
_MAX_LINE = 400


def split_reply(text: str) -> tuple[str, str, str]:
    """(new text, quoted history, signature); the new text is the whole text when nothing is found."""
    if not text.strip():
        return "", "", ""
    head, tail = text[:MAX_SPLIT_CHARS], text[MAX_SPLIT_CHARS:]
    lines = head.split("\n")
    quote_at = _quote_start(lines)
    new_lines = lines[:quote_at]
    quoted = "\n".join(lines[quote_at:]).strip("\n") if quote_at < len(lines) else ""
    signature_at = _signature_start(new_lines)
    signature = "\n".join(new_lines[signature_at:]).strip("\n")
    new = "\n".join(new_lines[:signature_at]).strip()
    if tail:
        if quoted:
            quoted += tail
        else:
            new += tail
    if not new:
        # Nothing of its own (a bare forward, an all-quoted reply): keep everything as the text.
        return text.strip(), "", ""
    return new, quoted, signature


def _quote_start(lines: list[str]) -> int:
    n = len(lines)
    for i, full_line in enumerate(lines):
        line = full_line[:_MAX_LINE]
        if _ORIGINAL_MESSAGE.match(line):
            return i
        if _ATTRIBUTION_START.match(line):
            joined = line
            for j in range(i, min(i + 3, n)):
                if j > i:
                    joined += " " + lines[j][:_MAX_LINE]
                if joined.rstrip().endswith(":") and _ATTRIBUTION_WORD.search(joined):
                    return i
        if _HEADER_FROM.match(line) and any(
            _HEADER_SENT.match(lines[j][:_MAX_LINE]) for j in range(i + 1, min(i + 5, n))
        ):
            return i - 1 if i > 0 and _UNDERSCORES.match(lines[i - 1][:_MAX_LINE]) else i
    # A block of `>` lines running to the end (blank lines allowed) is the quoted history;
    # quotes interleaved with answers are kept whole.
    start = n
    for i in range(n - 1, -1, -1):
        stripped = lines[i].strip()
        if not stripped:
            continue
        if stripped.startswith(">"):
            start = i
        else:
            break
    return start


def _signature_start(lines: list[str]) -> int:
    for i, line in enumerate(lines):
        if line.rstrip() in ("--", "-- ") or line == "-- ":
            return i
        if _MOBILE_SIGNATURE.match(line[:_MAX_LINE]):
            return i
    return len(lines)
