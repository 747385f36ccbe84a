"""Inbound email posted by a provider: SendGrid Inbound Parse and Mailgun routes, as raw MIME.

Both providers receive the mail on their MX and POST it to `/webhooks/<inbox-id>/<route>`:

- `sendgrid`: SendGrid Inbound Parse with "POST the raw, full MIME message" checked; the message is
  the form field `email`. SendGrid does not sign Inbound Parse posts, so the URL carries the proof:
  the inbox secret `sendgrid_webhook_token`, given either as `?token=<secret>` or as the password of
  HTTP basic auth (`https://parley:<secret>@host/webhooks/<id>/sendgrid`; the user name is ignored).
  Anyone who learns that URL can post mail into the inbox: keep it secret, serve it over HTTPS only.
- `mailgun-mime` (or `mailgun`): a Mailgun route whose action is `forward("https://host/webhooks/
  <id>/mailgun-mime")`; Mailgun posts the raw message as `body-mime` only to URLs ending in "mime".
  Every post carries `timestamp`, `token` and `signature` = hex HMAC-SHA256(signing key, timestamp +
  token), checked against the inbox secret `mailgun_signing_key`. Posts older than `MAX_AGE` seconds
  are refused. Mailgun's signature does not cover the body, so a token is bound to the first body
  seen with it: a token replayed with another body is refused, while Mailgun's own retry of the same
  post passes (and the message is then a duplicate by Message-ID). The record of seen tokens is
  per process; with several gateway processes a replay within `MAX_AGE` could reach another one,
  where it is still only a duplicate if the body is the same.

Bodies are multipart/form-data (or url-encoded), parsed here from the raw bytes with `multipart`,
since a message is bytes and may not be UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import multipart

from channels.base import ConfigurationError, MalformedPayload, SignatureError, WebhookRequest
from channels.common import header

SENDGRID_ROUTE = "sendgrid"
MAILGUN_ROUTES = ("mailgun-mime", "mailgun")
SENDGRID_TOKEN_SECRET = "sendgrid_webhook_token"  # noqa: S105 - the secret's name, not a secret
MAILGUN_KEY_SECRET = "mailgun_signing_key"  # noqa: S105
ROUTES = (SENDGRID_ROUTE, *MAILGUN_ROUTES)
# How old a Mailgun post may be, in seconds, either way (clocks drift).
MAX_AGE = 300
# The webhook body limit for email routes: SendGrid takes messages up to 30 MB, Mailgun 25 MB, and
# the form around them adds a little. The gateway's default for other channels is 5 MiB.
DEFAULT_MAX_WEBHOOK_BYTES = 32 * 1024 * 1024
_MAX_FORM_PARTS = 200


def clean_provider_secrets(secrets: Mapping[str, str]) -> dict[str, str]:
    """The webhook secrets an email inbox has (for the channel's `validate_config`), checked."""
    cleaned: dict[str, str] = {}
    for name, minimum in ((SENDGRID_TOKEN_SECRET, 16), (MAILGUN_KEY_SECRET, 8)):
        value = secrets.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value.strip()) < minimum:
            raise ConfigurationError(f"{name} must be a string of at least {minimum} characters")
        cleaned[name] = value.strip()
    return cleaned


def verify_webhook(request: WebhookRequest, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
    """Raise `SignatureError` unless the post provably comes from the provider its route names."""
    if request.route == SENDGRID_ROUTE:
        _verify_sendgrid(request, secrets)
    elif request.route in MAILGUN_ROUTES:
        _verify_mailgun(request, secrets)
    else:
        raise SignatureError(f"no email webhook at route {request.route!r} (use one of {', '.join(ROUTES)})")


def raw_mime(request: WebhookRequest) -> bytes:
    """The message a verified provider post carries, as the bytes the provider received."""
    form = form_fields(request)
    if request.route == SENDGRID_ROUTE:
        field, hint = "email", "check 'POST the raw, full MIME message' in the Inbound Parse settings"
    elif request.route in MAILGUN_ROUTES:
        field, hint = "body-mime", "forward the route to a URL ending in 'mime' (…/mailgun-mime)"
    else:
        raise MalformedPayload(f"no email webhook at route {request.route!r}")
    raw = form.get(field)
    if not raw or not raw.strip():
        raise MalformedPayload(f"the post has no {field!r} field with the raw message: {hint}")
    return raw


def envelope_recipients(request: WebhookRequest) -> tuple[str, ...]:
    """The SMTP envelope's recipients as reported: SendGrid's `envelope`, Mailgun's `recipient`."""
    form = form_fields(request)
    if request.route == SENDGRID_ROUTE:
        envelope = form.get("envelope")
        if not envelope:
            return ()
        try:
            to = json.loads(envelope).get("to")
        except (ValueError, AttributeError):
            raise MalformedPayload("SendGrid's envelope field is not a JSON object") from None
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list) or not all(isinstance(a, str) for a in to):
            raise MalformedPayload("SendGrid's envelope.to is not a list of addresses")
        return tuple(a.strip() for a in to if a.strip())
    recipient = form.get("recipient")
    if not recipient:
        return ()
    return tuple(a.strip() for a in recipient.decode("utf-8", "replace").split(",") if a.strip())


def form_fields(request: WebhookRequest) -> dict[str, bytes]:
    """The first value of each field of a multipart or url-encoded body, as bytes."""
    content_type = header(request.headers, "Content-Type") or ""
    mime, options = multipart.parse_options_header(content_type)
    body = request.body
    if mime == "application/x-www-form-urlencoded":
        # Latin-1 both ways maps each percent-escaped byte to itself: the message's bytes survive.
        try:
            pairs = parse_qsl(
                body.decode("latin-1"),
                keep_blank_values=True,
                encoding="latin-1",
                max_num_fields=_MAX_FORM_PARTS,
            )
        except ValueError as e:
            raise MalformedPayload(f"the form cannot be read: {e}") from None
        fields: dict[str, bytes] = {}
        for key, value in pairs:
            fields.setdefault(key, value.encode("latin-1"))
        return fields
    if mime != "multipart/form-data":
        raise MalformedPayload(f"expected a multipart/form-data post, got {mime or 'no content type'!r}")
    boundary = options.get("boundary")
    if not boundary:
        raise MalformedPayload("multipart/form-data without a boundary")
    fields = {}
    try:
        parser = multipart.MultipartParser(
            io.BytesIO(body),
            boundary,
            content_length=len(body),
            part_limit=_MAX_FORM_PARTS,
            # The whole body is already in memory; keep the parts there too.
            memory_limit=len(body) + 1024,
            memfile_limit=len(body) + 1024,
            spool_limit=len(body) + 1024,
        )
        for part in parser:
            if part.name is not None and part.name not in fields:
                fields[part.name] = part.raw
    except multipart.MultipartError as e:
        raise MalformedPayload(f"the multipart form cannot be read: {e}") from None
    return fields


def _verify_sendgrid(request: WebhookRequest, secrets: Mapping[str, str]) -> None:
    expected = secrets.get(SENDGRID_TOKEN_SECRET)
    if not expected:
        raise SignatureError(f"SendGrid posts are not accepted: the inbox has no {SENDGRID_TOKEN_SECRET}")
    offered = request.query.get("token") or _basic_auth_password(header(request.headers, "Authorization"))
    if not offered:
        raise SignatureError("missing webhook token (?token= or basic auth)")
    if not hmac.compare_digest(offered.encode(), expected.encode()):
        raise SignatureError("webhook token does not match")


def _basic_auth_password(value: str | None) -> str | None:
    if not value or value[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


def _verify_mailgun(request: WebhookRequest, secrets: Mapping[str, str]) -> None:
    key = secrets.get(MAILGUN_KEY_SECRET)
    if not key:
        raise SignatureError(f"Mailgun posts are not accepted: the inbox has no {MAILGUN_KEY_SECRET}")
    try:
        form = form_fields(request)
    except MalformedPayload as e:
        raise SignatureError(f"unsigned post: {e}") from None
    timestamp = form.get("timestamp", b"").decode("ascii", "replace")
    token = form.get("token", b"").decode("ascii", "replace")
    signature = form.get("signature", b"").decode("ascii", "replace")
    if not timestamp or not token or not signature:
        raise SignatureError("missing Mailgun timestamp, token or signature")
    expected = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
        raise SignatureError("Mailgun signature does not match")
    try:
        age = abs(time.time() - float(timestamp))
    except ValueError:
        raise SignatureError(f"Mailgun timestamp {timestamp!r} is not a number") from None
    if age > MAX_AGE:
        raise SignatureError(f"Mailgun timestamp is {age:.0f}s away from now (limit {MAX_AGE}s)")
    if not _SEEN_TOKENS.claim(token, hashlib.sha256(request.body).digest()):
        raise SignatureError("Mailgun token was already used for another post (replay)")


class _SeenTokens:
    """Mailgun tokens of the last `MAX_AGE` seconds, each with the digest of the body it came with."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._tokens: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, token: str, body_digest: bytes) -> bool:
        """True for a new token, or the same token with the same body again (a provider retry)."""
        now = time.monotonic()
        with self._lock:
            while self._tokens:
                oldest_token, (seen_at, _) = next(iter(self._tokens.items()))
                if now - seen_at <= 2 * MAX_AGE and len(self._tokens) < self.max_entries:
                    break
                del self._tokens[oldest_token]
            seen = self._tokens.get(token)
            if seen is not None:
                return hmac.compare_digest(seen[1], body_digest)
            self._tokens[token] = (now, body_digest)
            return True


_SEEN_TOKENS = _SeenTokens()
