"""Web chat: the embeddable widget (`gateway/static/widget.js`) talking to the gateway over a WebSocket.

There is no provider: visitors are identified by a session token we sign ourselves, or, for users
logged in on the host site, by Chatwoot-style identity verification (`identifier_hash` is
HMAC-SHA256 of the site's user id under the inbox's secret), so nobody can claim another user's
identity. Each visitor's chat is one conversation (its `thread_key` is the visitor's address),
so what one browser sees is only ever that visitor's own messages, whatever contact they are
linked to later. Frames from the widget are JSON objects, parsed here leaf by leaf; replies go
out through the realtime hub to the visitor's open sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from channels.base import (
    Address,
    Attachment,
    ButtonReply,
    Capabilities,
    Channel,
    ConfigurationError,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    OutboundMessage,
    SendReceipt,
    SignatureError,
    TransientDeliveryError,
    WebhookRequest,
)
from channels.common import optional_str
from parley.realtime import Hub, HubUnavailable

IDENTITY_KIND = "web_visitor"
MAX_TEXT_LENGTH = 5000
MAX_IDENTIFIER_LENGTH = 200
DEFAULT_SESSION_DAYS = 30
DEFAULT_OFFLINE_TEXT = "We're away right now. Leave your email and we'll reply there."
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Delivery receipts: the id we give a reply we pushed, so the widget's acks find it again.
RECEIPT_PREFIX = "webchat:"

_SESSION_SALT = "parley.webchat.session.v1"


def visitor_topic(address: str) -> str:
    """The hub topic a visitor's open sockets listen on."""
    return f"webchat.visitor:{address}"


def typing_topic(tenant_id: int) -> str:
    """The hub topic agents' screens listen on for `conversation.typing` (one per tenant)."""
    return f"tenant:{tenant_id}:conversation.typing"


def presence_topic(tenant_id: int) -> str:
    """The hub topic open widgets of a tenant listen on for whether an agent is online."""
    return f"tenant:{tenant_id}:webchat.presence"


def anonymous_address(inbox_id: int, visitor_id: str) -> str:
    return f"{inbox_id}:v:{visitor_id}"


def identified_address(inbox_id: int, identifier: str) -> str:
    """A host site's logged-in user: the same identity on every device, within this inbox."""
    return f"{inbox_id}:u:{identifier}"


def normalise_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lower case without a default port, or None if it is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return None
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


class SessionTokens:
    """Signed, timestamped visitor sessions: which inbox, which visitor address."""

    def __init__(self, secret_key: str, *, clock: Callable[[], float] = time.time) -> None:
        class _Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock())

        self._serializer = URLSafeTimedSerializer(secret_key, salt=_SESSION_SALT, signer=_Signer)

    def issue(self, inbox_id: int, address: str) -> str:
        return self._serializer.dumps({"i": inbox_id, "a": address})

    def verify(self, token: str, inbox_id: int, *, max_age: float) -> str:
        """The visitor address a token carries; `SignatureError` if forged, expired or another inbox's."""
        try:
            data = self._serializer.loads(token, max_age=int(max_age))
        except SignatureExpired:
            raise SignatureError("the session token has expired") from None
        except BadSignature:
            raise SignatureError("the session token is not valid") from None
        if not isinstance(data, dict) or data.get("i") != inbox_id or not isinstance(data.get("a"), str):
            raise SignatureError("the session token belongs to another inbox")
        return str(data["a"])


# Frames from the widget: one small dataclass per type, parsed from JSON leaf by leaf.


@dataclass(frozen=True, slots=True)
class Hello:
    token: str | None
    identifier: str | None
    identifier_hash: str | None
    since: int


@dataclass(frozen=True, slots=True)
class Say:
    id: str
    text: str
    button: ButtonReply | None


@dataclass(frozen=True, slots=True)
class Typing:
    typing: bool


@dataclass(frozen=True, slots=True)
class Ack:
    message_id: int
    status: Literal["delivered", "read"]


@dataclass(frozen=True, slots=True)
class ContactDetails:
    name: str | None
    email: str | None


@dataclass(frozen=True, slots=True)
class ConsentChoice:
    """The visitor's decision about marketing messages (the widget's "No marketing" link)."""

    purpose: Literal["marketing"]
    granted: bool


Frame = Hello | Say | Typing | Ack | ContactDetails | ConsentChoice


def _opt_str(obj: Mapping[str, Any], key: str, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPayload(f"{key} must be a string")
    value = value.strip()
    if len(value) > limit:
        raise MalformedPayload(f"{key} is longer than {limit} characters")
    return value or None


def _int(obj: Mapping[str, Any], key: str, *, default: int | None = None) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise MalformedPayload(f"{key} must be a non-negative integer")
    return value


def client_message_id(value: Any) -> str:
    """The widget's id for a message (a UUID), the dedupe key when it resends after a drop."""
    if not isinstance(value, str):
        raise MalformedPayload("id must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise MalformedPayload("id must be a UUID") from None


def _parse_hello(obj: Mapping[str, Any]) -> Hello:
    return Hello(
        token=_opt_str(obj, "token", 1000),
        identifier=_opt_str(obj, "identifier", MAX_IDENTIFIER_LENGTH),
        identifier_hash=_opt_str(obj, "identifier_hash", 200),
        since=_int(obj, "since", default=0),
    )


def _parse_say(obj: Mapping[str, Any]) -> Say:
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise MalformedPayload("text must be a non-empty string")
    if len(text) > MAX_TEXT_LENGTH:
        raise MalformedPayload(f"text is longer than {MAX_TEXT_LENGTH} characters")
    button = None
    if obj.get("button_id") is not None:
        button_id = _opt_str(obj, "button_id", 256)
        if button_id is None:
            raise MalformedPayload("button_id must not be empty")
        button = ButtonReply(id=button_id, title=text.strip()[:100])
    return Say(id=client_message_id(obj.get("id")), text=text, button=button)


def _parse_typing(obj: Mapping[str, Any]) -> Typing:
    typing = obj.get("typing")
    if not isinstance(typing, bool):
        raise MalformedPayload("typing must be true or false")
    return Typing(typing)


def _parse_ack(obj: Mapping[str, Any]) -> Ack:
    status = obj.get("status")
    if status not in ("delivered", "read"):
        raise MalformedPayload("status must be 'delivered' or 'read'")
    return Ack(message_id=_int(obj, "message_id"), status=status)


def _parse_contact(obj: Mapping[str, Any]) -> ContactDetails:
    details = ContactDetails(name=_opt_str(obj, "name", 200), email=_opt_str(obj, "email", 320))
    if details.name is None and details.email is None:
        raise MalformedPayload("give a name or an email")
    return details


def _parse_consent(obj: Mapping[str, Any]) -> ConsentChoice:
    if obj.get("purpose") != "marketing":
        raise MalformedPayload("purpose must be 'marketing'")
    granted = obj.get("granted")
    if not isinstance(granted, bool):
        raise MalformedPayload("granted must be true or false")
    return ConsentChoice(purpose="marketing", granted=granted)


_PARSERS: Mapping[str, Callable[[Mapping[str, Any]], Frame]] = {
    "hello": _parse_hello,
    "message": _parse_say,
    "typing": _parse_typing,
    "ack": _parse_ack,
    "contact": _parse_contact,
    "consent": _parse_consent,
}
FRAME_TYPES = tuple(_PARSERS)


def parse_frame(raw: str) -> Frame:
    """One frame from the widget; `MalformedPayload` names what is wrong with it."""
    try:
        obj = json.loads(raw)
    except ValueError:
        raise MalformedPayload("frame is not JSON") from None
    if not isinstance(obj, dict):
        raise MalformedPayload("frame is not a JSON object")
    parser = _PARSERS.get(obj.get("type"))  # type: ignore[arg-type]
    if parser is None:
        raise MalformedPayload(f"unknown frame type {obj.get('type')!r}; expected one of {list(FRAME_TYPES)}")
    return parser(obj)


class WebChat(Channel):
    """The chat widget on the tenant's own web pages."""

    name = "webchat"
    identity_kind = IDENTITY_KIND
    consent_channel = "webchat"
    capabilities = Capabilities(media=True, buttons=True, max_text_length=MAX_TEXT_LENGTH)

    def __init__(
        self,
        *,
        allowed_origins: Sequence[str],
        greeting: str | None = None,
        offline_text: str = DEFAULT_OFFLINE_TEXT,
        pre_chat_form: bool = False,
        session_days: int = DEFAULT_SESSION_DAYS,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        identity_secret: str | None = None,
    ) -> None:
        self.allowed_origins = frozenset(allowed_origins)
        self.greeting = greeting
        self.offline_text = offline_text
        self.pre_chat_form = pre_chat_form
        self.session_days = session_days
        self.max_upload_bytes = max_upload_bytes
        self._identity_secret = identity_secret
        self._hub: Hub | None = None

    @classmethod
    def validate_config(
        cls, settings: Mapping[str, Any], secrets: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Check the allowed origins and texts; the identity secret is optional."""
        origins = settings.get("allowed_origins")
        if not isinstance(origins, list) or not origins:
            raise ConfigurationError(
                "allowed_origins must be a non-empty list of origins (https://example.com)"
            )
        cleaned_origins = []
        for origin in origins:
            normalised = normalise_origin(origin) if isinstance(origin, str) else None
            if normalised is None:
                raise ConfigurationError(f"allowed_origins: {origin!r} is not an http(s) origin")
            cleaned_origins.append(normalised)
        cleaned: dict[str, Any] = {"allowed_origins": sorted(set(cleaned_origins))}
        greeting = optional_str(settings, "greeting")
        if greeting:
            cleaned["greeting"] = greeting
        cleaned["offline_text"] = optional_str(settings, "offline_text") or DEFAULT_OFFLINE_TEXT
        pre_chat_form = settings.get("pre_chat_form", False)
        if not isinstance(pre_chat_form, bool):
            raise ConfigurationError("pre_chat_form must be true or false")
        cleaned["pre_chat_form"] = pre_chat_form
        for key, default, top in (
            ("session_days", DEFAULT_SESSION_DAYS, 366),
            ("max_upload_bytes", DEFAULT_MAX_UPLOAD_BYTES, 100 * 1024 * 1024),
        ):
            value = settings.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= top:
                raise ConfigurationError(f"{key} must be an integer between 1 and {top}")
            cleaned[key] = value
        cleaned_secrets: dict[str, str] = {}
        identity_secret = secrets.get("identity_secret")
        if identity_secret is not None:
            if not isinstance(identity_secret, str) or len(identity_secret.strip()) < 16:
                raise ConfigurationError("identity_secret must be at least 16 characters")
            cleaned_secrets["identity_secret"] = identity_secret.strip()
        return cleaned, cleaned_secrets

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> Self:
        """Build the adapter for one inbox."""
        cleaned, cleaned_secrets = cls.validate_config(settings, secrets)
        return cls(identity_secret=cleaned_secrets.get("identity_secret"), **cleaned)

    def attach_hub(self, hub: Hub) -> None:
        """The process's realtime hub, which `send` publishes replies on."""
        self._hub = hub

    @property
    def session_max_age(self) -> float:
        return self.session_days * 86400.0

    def origin_allowed(self, origin: str | None) -> bool:
        """True if a browser's Origin header names one of the inbox's sites."""
        normalised = normalise_origin(origin) if origin else None
        return normalised is not None and normalised in self.allowed_origins

    @property
    def verifies_identity(self) -> bool:
        return self._identity_secret is not None

    def identity_hash_valid(self, identifier: str, identifier_hash: str) -> bool:
        """Check `identifier_hash` = hex HMAC-SHA256(identity secret, identifier), in constant time."""
        if self._identity_secret is None:
            return False
        expected = hmac.new(self._identity_secret.encode(), identifier.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, identifier_hash.lower())

    def verify(self, request: WebhookRequest) -> None:
        """Web chat has no webhook: visitors connect over the WebSocket."""
        raise SignatureError("web chat visitors connect over the WebSocket at /webchat/<inbox id>/ws")

    def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        raise MalformedPayload("web chat has no webhook")

    def inbound(self, address: str, say: Say) -> InboundMessage:
        """A visitor's message as the pipeline stores it: one conversation per visitor."""
        return InboundMessage(
            provider_message_id=say.id,
            sender=Address(IDENTITY_KIND, address),
            recipient=None,
            text=say.text,
            button_reply=say.button,
            thread_key=address,
        )

    def inbound_upload(
        self,
        address: str,
        message_id: str,
        text: str,
        *,
        filename: str | None,
        content_type: str | None,
        data: bytes,
    ) -> InboundMessage:
        """A file the visitor uploaded, with an optional caption; the bytes are stored before ingest."""
        if len(text) > MAX_TEXT_LENGTH:
            raise MalformedPayload(f"text is longer than {MAX_TEXT_LENGTH} characters")
        return InboundMessage(
            provider_message_id=client_message_id(message_id),
            sender=Address(IDENTITY_KIND, address),
            recipient=None,
            text=text,
            attachments=(Attachment(url="", content_type=content_type, filename=filename, data=data),),
            thread_key=address,
        )

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Push the reply to the visitor's open sockets; offline visitors get it from history later."""
        if self._hub is None:
            raise TransientDeliveryError("web chat has no realtime hub in this process")
        frame = {
            "type": "message",
            "message": {
                "id": message.message_id,
                "direction": "outbound",
                "text": message.text,
                "attachments": [
                    {"url": a.url, "content_type": a.content_type, "filename": a.filename}
                    for a in message.attachments
                ],
                "buttons": [{"id": b.id, "title": b.title} for b in message.buttons],
            },
        }
        try:
            await self._hub.publish(visitor_topic(message.recipient.value), frame)
        except HubUnavailable as e:
            raise TransientDeliveryError(str(e)) from e
        # Delivered and read come back from the widget as acks with this id.
        return SendReceipt(provider_message_id=f"{RECEIPT_PREFIX}{message.message_id}", status="sent")
