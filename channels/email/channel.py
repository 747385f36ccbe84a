"""The `email` channel: one inbox is one or more addresses; a conversation is a mail thread.

Inbound mail arrives by SMTP (`channels.email.smtp_server`), IMAP polling (`channels.email.imap`)
or a provider's webhook (`channels.email.providers`); every path goes through `parse_email` and
`Email.events`. Replies go out over SMTP (aiosmtplib) with the threading headers mail clients
use (In-Reply-To, References, "Re:" subject) and a Reply-To carrying a signed token of the
conversation, so a reply whose client dropped those headers still finds its thread.

Settings: `addresses` (the addresses the inbox receives for; the first is the From of replies
unless `from_address` says otherwise), `from_name`, `smtp` {host, port, security tls|starttls|none,
username, timeout} for sending, `imap` for polling. Secrets: `smtp_password`, `reply_token_key`
(generated when the inbox is created), `imap_password`, and the provider webhook secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any, Self

import aiohttp
import aiosmtplib
from email_validator import EmailNotValidError, validate_email

from channels.base import (
    Attachment,
    Capabilities,
    Channel,
    ChannelAuthError,
    ConfigurationError,
    InboundEvent,
    OutboundMessage,
    PermanentDeliveryError,
    SendReceipt,
    TransientDeliveryError,
    WebhookRequest,
)
from channels.common import optional_str, required_str
from channels.email import providers
from channels.email.imap import STATE_KEY, clean_imap_settings
from channels.email.mime import ParsedEmail, parse_email

logger = logging.getLogger(__name__)

SMTP_SECURITY_PORTS = {"tls": 465, "starttls": 587, "none": 25}
DEFAULT_TIMEOUT = 30.0
REPLY_TOKEN_SECRET = "reply_token_key"  # noqa: S105 - the secret's name, not a secret
SMTP_PASSWORD_SECRET = "smtp_password"  # noqa: S105
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
# `support+c12-3q4w5e6r7t8y9u0i@example.com`: conversation 12, and 80 bits of HMAC.
_TOKEN = re.compile(r"^[^@+]+\+c(\d{1,18})-([a-z2-7]{16})@", re.IGNORECASE)
_MIME_TYPE = re.compile(r"(application|audio|font|image|model|text|video)/[a-z0-9][a-z0-9.+-]{0,100}")
_RE_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|réf|ref|fw|fwd|wg|tr)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


class Email(Channel):
    """Email over SMTP out and SMTP/IMAP/provider webhooks in."""

    name = "email"
    identity_kind = "email"
    consent_channel = "email"
    capabilities = Capabilities(media=True, threads_by_reference=True, inline_attachments=True)
    max_webhook_bytes = providers.DEFAULT_MAX_WEBHOOK_BYTES

    def __init__(
        self,
        *,
        addresses: Sequence[str],
        from_address: str | None = None,
        from_name: str | None = None,
        smtp: Mapping[str, Any] | None = None,
        smtp_password: str | None = None,
        reply_token_key: str | None = None,
        settings: Mapping[str, Any] | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.addresses = tuple(a.lower() for a in addresses)
        self.from_address = (from_address or self.addresses[0]).lower()
        self.from_name = from_name
        self.smtp = dict(smtp) if smtp is not None else None
        self._smtp_password = smtp_password
        self._reply_key = reply_token_key.encode() if reply_token_key else None
        self._settings = dict(settings or {})
        self._secrets = dict(secrets or {})

    @classmethod
    def validate_config(
        cls, settings: Mapping[str, Any], secrets: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Check the addresses, SMTP and IMAP settings; make a reply-token key if there is none."""
        raw_addresses = settings.get("addresses")
        if isinstance(raw_addresses, str):
            raw_addresses = [raw_addresses]
        if not isinstance(raw_addresses, list) or not raw_addresses:
            raise ConfigurationError(
                "addresses must be a list of the email addresses this inbox receives for"
            )
        addresses = [_address(a, "addresses") for a in raw_addresses]
        if len(set(addresses)) != len(addresses):
            raise ConfigurationError("addresses must not repeat")
        cleaned: dict[str, Any] = {"addresses": addresses}
        from_address = optional_str(settings, "from_address")
        if from_address:
            cleaned["from_address"] = _address(from_address, "from_address")
        from_name = optional_str(settings, "from_name")
        if from_name:
            if any(c in from_name for c in "\r\n\0"):
                raise ConfigurationError("from_name must be one line")
            cleaned["from_name"] = from_name[:200]
        cleaned_secrets: dict[str, str] = {}
        smtp = settings.get("smtp")
        if smtp is not None:
            cleaned["smtp"] = _clean_smtp(smtp)
            password = secrets.get(SMTP_PASSWORD_SECRET)
            if cleaned["smtp"].get("username") and not password:
                raise ConfigurationError(f"{SMTP_PASSWORD_SECRET} is required when smtp.username is set")
            if password:
                cleaned_secrets[SMTP_PASSWORD_SECRET] = str(password)
        imap, imap_secrets = clean_imap_settings(settings, secrets)
        if imap is not None:
            cleaned["imap"] = imap
            cleaned_secrets.update(imap_secrets)
            if isinstance(settings.get(STATE_KEY), Mapping):
                cleaned[STATE_KEY] = dict(settings[STATE_KEY])  # the poller's bookmark survives edits
        cleaned_secrets.update(providers.clean_provider_secrets(secrets))
        key = secrets.get(REPLY_TOKEN_SECRET)
        if key is not None and (not isinstance(key, str) or len(key) < 16):
            raise ConfigurationError(f"{REPLY_TOKEN_SECRET} must be a string of at least 16 characters")
        cleaned_secrets[REPLY_TOKEN_SECRET] = key or secrets_token()
        return cleaned, cleaned_secrets

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> Self:
        """Build the adapter for one inbox."""
        cleaned, cleaned_secrets = cls.validate_config(settings, secrets)
        # A key generated just now (an inbox stored without one) would change on every build:
        # such an inbox signs no reply tokens rather than ones that stop verifying.
        return cls(
            addresses=cleaned["addresses"],
            from_address=cleaned.get("from_address"),
            from_name=cleaned.get("from_name"),
            smtp=cleaned.get("smtp"),
            smtp_password=cleaned_secrets.get(SMTP_PASSWORD_SECRET),
            reply_token_key=secrets.get(REPLY_TOKEN_SECRET) or None,
            settings=cleaned,
            secrets=cleaned_secrets,
        )

    # Inbound.

    def verify(self, request: WebhookRequest) -> None:
        """A provider's inbound webhook: SendGrid's URL secret or Mailgun's signature."""
        providers.verify_webhook(request, self._settings, self._secrets)

    def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """The raw message a provider posted, as the events every transport produces."""
        raw = providers.raw_mime(request)
        parsed = parse_email(raw, envelope_recipients=providers.envelope_recipients(request))
        return self.events(parsed)

    def events(self, parsed: ParsedEmail) -> list[InboundEvent]:
        """What a parsed email means for this inbox: a message, a bounce, or nothing."""
        if parsed.from_address in self.addresses or parsed.from_address == self.from_address:
            # Our own mail come back (a forwarding loop, a copy to ourselves): never a conversation.
            logger.info("email %s is from the inbox's own address, ignored", parsed.message_id)
            return []
        return parsed.to_events(
            recipient=self.receiving_address(parsed), conversation_id=self.token_of(parsed)
        )

    def receiving_address(self, parsed: ParsedEmail) -> str:
        """Which of the inbox's addresses the mail was for (the first one if none is named)."""
        for address in parsed.recipients:
            if base_address(address) in self.addresses:
                return base_address(address)
        return self.addresses[0]

    def reply_address(self, conversation_id: int) -> str | None:
        """`local+c<id>-<signature>@domain`: replies to it reach the conversation whatever the client.

        Built on the first address the inbox receives for, which `from_address` need not be.
        """
        if self._reply_key is None:
            return None
        local, _, domain = self.addresses[0].partition("@")
        return f"{local.split('+', 1)[0]}+c{conversation_id}-{self._signature(conversation_id)}@{domain}"

    def token_of(self, parsed: ParsedEmail) -> int | None:
        """The conversation a verified reply token among the recipients names, else None."""
        if self._reply_key is None:
            return None
        for address in parsed.recipients:
            match = _TOKEN.match(address)
            if match is None or base_address(address) not in self.addresses:
                continue
            conversation_id = int(match.group(1))
            if hmac.compare_digest(self._signature(conversation_id), match.group(2).lower()):
                return conversation_id
            logger.warning(
                "email %s: reply token for conversation %s does not verify",
                parsed.message_id,
                conversation_id,
            )
        return None

    def _signature(self, conversation_id: int) -> str:
        assert self._reply_key is not None
        digest = hmac.new(
            self._reply_key, f"conversation:{conversation_id}".encode(), hashlib.sha256
        ).digest()
        return base64.b32encode(digest[:10]).decode("ascii").lower()

    # Outbound.

    def message_id_for(self, message_id: int) -> str:
        """Our Message-ID for an outbound message: the same on every retry of it."""
        secret = self._reply_key or self.from_address.encode()
        tag = hmac.new(secret, f"message:{message_id}".encode(), hashlib.sha256).hexdigest()[:16]
        return f"<parley.{message_id}.{tag}@{self.from_address.partition('@')[2]}>"

    def build(
        self, message: OutboundMessage, attachments: Sequence[tuple[Attachment, bytes]] = ()
    ) -> EmailMessage:
        """The MIME message for an agent's reply: plain text and escaped HTML, threaded."""
        mail = EmailMessage()
        mail["From"] = (
            formataddr((self.from_name, self.from_address)) if self.from_name else self.from_address
        )
        mail["To"] = message.recipient.value
        mail["Subject"] = reply_subject(message.subject)
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = self.message_id_for(message.message_id)
        if message.in_reply_to:
            mail["In-Reply-To"] = message.in_reply_to
        references = [r for r in message.references if r != message.in_reply_to]
        if message.in_reply_to:
            references.append(message.in_reply_to)
        if references:
            # The first (the thread's root) and the latest ones, as RFC 5322 3.6.4 suggests trimming.
            kept = references if len(references) <= 20 else [references[0], *references[-19:]]
            mail["References"] = " ".join(kept)
        reply_to = self.reply_address(message.conversation_id) if message.conversation_id else None
        if reply_to is not None:
            mail["Reply-To"] = formataddr((self.from_name, reply_to)) if self.from_name else reply_to
        if message.unsubscribe_url:
            # RFC 8058: a mail client may POST `List-Unsubscribe=One-Click` to the https URL itself.
            mailto = f"mailto:{self.from_address}?subject=unsubscribe"
            mail["List-Unsubscribe"] = f"<{message.unsubscribe_url}>, <{mailto}>"
            mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        mail.set_content(message.text)
        mail.add_alternative(_html_body(message.text), subtype="html")
        for attachment, data in attachments:
            content_type = (attachment.content_type or "").split(";", 1)[0].strip().lower()
            if not _MIME_TYPE.fullmatch(content_type):
                content_type = "application/octet-stream"
            maintype, _, subtype = content_type.partition("/")
            filename = " ".join((attachment.filename or "attachment").split()) or "attachment"
            mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
        return mail

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Send over the inbox's SMTP server: 4xx is retried, 5xx fails, a refused login is an auth error."""
        if self.smtp is None:
            raise PermanentDeliveryError(
                "the inbox has no outgoing SMTP server (settings.smtp)", code="no_smtp"
            )
        try:
            mail = self.build(message, await _fetch_attachments(message.attachments))
        except ValueError as e:  # a header the email library refuses: retrying cannot help
            raise PermanentDeliveryError(f"the email cannot be built: {e}", code="invalid_email") from e
        security = self.smtp["security"]
        try:
            errors, _ = await aiosmtplib.send(
                mail,
                sender=self.from_address,
                recipients=[message.recipient.value],
                hostname=self.smtp["host"],
                port=self.smtp["port"],
                username=self.smtp.get("username"),
                password=self._smtp_password if self.smtp.get("username") else None,
                use_tls=security == "tls",
                start_tls=True if security == "starttls" else False if security == "none" else None,
                timeout=self.smtp["timeout"],
            )
        except aiosmtplib.SMTPAuthenticationError as e:
            raise ChannelAuthError(f"the SMTP server refused the login ({e.code}): {e.message}") from e
        except aiosmtplib.SMTPRecipientsRefused as e:
            raise _refusal(e.recipients[0] if e.recipients else None, "recipient refused") from e
        except aiosmtplib.SMTPResponseException as e:
            raise _refusal(e, "SMTP server refused the message") from e
        except (aiosmtplib.SMTPException, OSError) as e:
            raise TransientDeliveryError(f"SMTP server unreachable: {e!r}") from e
        if errors:
            refused = next(iter(errors.values()))
            raise _refusal(
                aiosmtplib.SMTPRecipientRefused(refused.code, refused.message, ""), "recipient refused"
            )
        return SendReceipt(provider_message_id=str(mail["Message-ID"]), status="sent")


def _refusal(e: aiosmtplib.SMTPResponseException | None, what: str) -> Exception:
    if e is None:
        return PermanentDeliveryError(what, code="smtp")
    reason = f"{what} ({e.code}): {e.message}"
    if 400 <= e.code < 500:
        return TransientDeliveryError(reason)
    if e.code in (530, 534, 535):
        return ChannelAuthError(reason)
    return PermanentDeliveryError(reason, code=f"smtp_{e.code}")


async def _fetch_attachments(attachments: Sequence[Attachment]) -> list[tuple[Attachment, bytes]]:
    """The bytes of each attachment: read from the media store by delivery, else fetched from its URL."""
    if not attachments:
        return []
    fetched: list[tuple[Attachment, bytes]] = []
    if all(a.data is not None for a in attachments):
        return [(a, a.data) for a in attachments if a.data is not None]
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attachment in attachments:
            if attachment.data is not None:
                fetched.append((attachment, attachment.data))
                continue
            try:
                async with session.get(attachment.url) as response:
                    if response.status >= 500:
                        raise TransientDeliveryError(
                            f"attachment {attachment.url} answered {response.status}"
                        )
                    if response.status != 200:
                        raise PermanentDeliveryError(
                            f"attachment {attachment.url} answered {response.status}", code="attachment"
                        )
                    data = await response.content.read(MAX_ATTACHMENT_BYTES + 1)
                    if len(data) > MAX_ATTACHMENT_BYTES:
                        raise PermanentDeliveryError("attachment too large for email", code="attachment")
                    content_type = attachment.content_type or response.content_type
            except (aiohttp.ClientError, TimeoutError) as e:
                raise TransientDeliveryError(f"attachment {attachment.url} unreachable: {e!r}") from e
            filename = attachment.filename or attachment.url.rstrip("/").rsplit("/", 1)[-1]
            fetched.append((Attachment(attachment.url, content_type, filename, len(data)), data))
    return fetched


def reply_subject(subject: str | None) -> str:
    """`Re: <the thread's subject>`, never `Re: Re: Re:` (nor `Re: AW: Fwd:`)."""
    base = _RE_PREFIX.sub("", " ".join((subject or "").split())).strip()
    return f"Re: {base}" if base else "Re: your message"


def base_address(address: str) -> str:
    """The address without its `+tag`: where `support+anything@example.com` is delivered."""
    local, at, domain = address.lower().rpartition("@")
    return f"{local.split('+', 1)[0]}{at}{domain}" if at else address.lower()


def _html_body(text: str) -> str:
    """The agent's text as HTML: escaped, so nothing an agent pastes runs in the customer's client."""
    paragraphs = html.escape(text).replace("\r\n", "\n").split("\n\n")
    body = "".join(f"<p>{p.replace(chr(10), '<br>')}</p>" for p in paragraphs)
    return f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{body}</body></html>'


def _address(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{where} must hold email addresses")
    try:
        normalised = validate_email(
            value.strip(), check_deliverability=False, test_environment=True
        ).normalized
    except EmailNotValidError as e:
        raise ConfigurationError(f"{where}: {value!r} is not an email address: {e}") from None
    if "+" in normalised.partition("@")[0]:
        raise ConfigurationError(f"{where}: {value!r} has a +tag; Parley adds its own for reply tokens")
    return normalised.lower()


def _clean_smtp(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigurationError("smtp must be an object")
    cleaned: dict[str, Any] = {"host": required_str(raw, "host")}
    security = optional_str(raw, "security") or "starttls"
    if security not in SMTP_SECURITY_PORTS:
        raise ConfigurationError("smtp.security must be one of tls, starttls, none")
    cleaned["security"] = security
    port = raw.get("port", SMTP_SECURITY_PORTS[security])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError("smtp.port must be a port number")
    cleaned["port"] = port
    username = optional_str(raw, "username")
    if username:
        cleaned["username"] = username
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise ConfigurationError("smtp.timeout must be a number of seconds between 0 and 300")
    cleaned["timeout"] = float(timeout)
    return cleaned


def secrets_token() -> str:
    return secrets.token_urlsafe(32)
