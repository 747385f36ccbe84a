"""WhatsApp Business Platform Cloud API (Meta): signed JSON webhooks in, Graph API sends out.

Meta posts every change of a WhatsApp Business Account to one callback URL: messages and delivery
statuses arrive as `field: "messages"` changes, tagged with the business phone number they concern.
An inbox is one business phone number (`phone_number_id`); changes for the app's other numbers are
handed to the tenant's inbox for that number, if there is one (`other_recipients`), else ignored.

Meta's signature (`X-Hub-Signature-256`) carries no timestamp, and Meta itself redelivers for days,
so there is no staleness window to enforce: a replayed message is a duplicate of its `wamid`, which
the pipeline stores once, and a replayed status never moves a message backwards.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import mimetypes
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import aiohttp
import phonenumbers

from channels.base import (
    Address,
    Attachment,
    Button,
    ButtonReply,
    Capabilities,
    Channel,
    ChannelAuthError,
    ChannelError,
    ConfigurationError,
    DeliveryState,
    DeliveryStatus,
    FetchedMedia,
    InboundEvent,
    InboundMessage,
    Location,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    SendReceipt,
    SharedContact,
    SignatureError,
    Template,
    TransientDeliveryError,
    WebhookReply,
    WebhookRequest,
)
from channels.common import (
    download,
    header,
    json_object,
    json_objects,
    json_optional_object,
    json_str,
    optional_str,
    retry_after_seconds,
    too_large,
)

logger = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://graph.facebook.com"
# The newest Graph API version in Meta's changelog (released 2026-07-29).
DEFAULT_API_VERSION = "v26.0"
DEFAULT_TIMEOUT = 10.0
DEFAULT_TEMPLATE_LANGUAGE = "en_US"
_TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
SIGNATURE_HEADER = "X-Hub-Signature-256"
# Audio and video top out at 16 MB on WhatsApp; Parley keeps every download under that.
MAX_MEDIA_BYTES = 16 * 1024 * 1024
# For a user who hides their number behind a username, Meta gives only a business-scoped user id.
BSUID_KIND = "whatsapp_user_id"

# Meta's limits on what a message may carry (Messages API reference).
MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_INTERACTIVE_BODY_LENGTH = 1024
MAX_REPLY_BUTTONS = 3
MAX_BUTTON_TITLE_LENGTH = 20
MAX_LIST_ROWS = 10
MAX_ROW_TITLE_LENGTH = 24
MAX_ROW_DESCRIPTION_LENGTH = 72
MAX_ROW_ID_LENGTH = 200
LIST_BUTTON_LABEL = "Choose an option"

_VERSION = re.compile(r"v\d{1,3}\.\d{1,3}")
_GRAPH_ID = re.compile(r"\d{1,32}")
# Media ids go into a URL path: nothing that could step out of it.
_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

_STATUSES: Mapping[str, DeliveryState] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    # A voice message was played: it was certainly read.
    "played": "read",
    "failed": "failed",
}

# Graph error codes, from Meta's "Error codes" page of the WhatsApp Business Platform docs.
_RATE_LIMIT_CODES = frozenset({4, 80007, 130429, 131048, 131056})
# "Temporary due to downtime or due to being overloaded", "Something went wrong", "Service unavailable".
_TEMPORARY_CODES = frozenset({1, 2, 131000, 131016})
# AuthException, API method capability, permission denied, access token expired or invalid.
_AUTH_CODES = frozenset({0, 3, 10, 190})

_ERROR_REASONS: Mapping[str, str] = {
    "131047": "More than 24 hours have passed since the customer last wrote, so WhatsApp delivers "
    "only approved templates: send a template instead",
    "131026": "Message undeliverable: the number may not be on WhatsApp, may have blocked the business, "
    "or may run an outdated WhatsApp",
    "131049": "Meta held back this marketing message to protect the customer's engagement",
    "131050": "The customer stopped marketing messages from this business",
    "131051": "WhatsApp does not support this message type",
    "131053": "The media could not be fetched or its type is not supported",
    "131056": "Too many messages to this customer in a short time",
    "130429": "The phone number's message throughput limit was reached",
    "131048": "Sending is limited because earlier messages were blocked or flagged as spam",
    "130472": "The customer is part of a Meta experiment that withholds marketing messages",
    "132000": "The template's parameters do not match its placeholders",
    "132001": "The template does not exist in this language",
    "132015": "The template is paused because of low quality",
    "132016": "The template is disabled because of low quality",
    "190": "The access token has expired or is invalid",
}

# Keys of an inbound message's `extra` that the pipeline fills with typed content.
_RESERVED_EXTRA_KEYS = frozenset({"location", "shared_contacts", "button_reply", "buttons", "template"})


class WhatsAppCloud(Channel):
    """One WhatsApp business phone number on Meta's Cloud API."""

    name = "whatsapp_cloud"
    identity_kind = "phone"
    consent_channel = "whatsapp"
    fetches_media = True
    capabilities = Capabilities(
        media=True,
        buttons=True,
        templates=True,
        reply_window=timedelta(hours=24),
        max_text_length=MAX_TEXT_LENGTH,
        max_text_with_buttons=MAX_INTERACTIVE_BODY_LENGTH,
    )

    def __init__(
        self,
        *,
        phone_number_id: str,
        access_token: str,
        app_secret: str,
        verify_token: str,
        waba_id: str | None = None,
        api_base_url: str = DEFAULT_API_BASE_URL,
        api_version: str = DEFAULT_API_VERSION,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.phone_number_id = phone_number_id
        self.waba_id = waba_id
        self.api_base_url = api_base_url
        self.api_version = api_version
        self.timeout = timeout
        self._access_token = access_token
        self._app_secret = app_secret.encode()
        self._verify_token = verify_token.encode()
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def validate_config(
        cls, settings: Mapping[str, Any], secrets: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Check and clean an inbox's Cloud API settings, access token, app secret and verify token."""
        cleaned: dict[str, Any] = {"phone_number_id": _graph_id(settings, "phone_number_id", required=True)}
        waba_id = _graph_id(settings, "waba_id", required=False)
        if waba_id is not None:
            cleaned["waba_id"] = waba_id

        api_base_url = optional_str(settings, "api_base_url") or DEFAULT_API_BASE_URL
        parts = urlsplit(api_base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigurationError(f"api_base_url {api_base_url!r} must be an http(s) URL without query")
        cleaned["api_base_url"] = api_base_url.rstrip("/")

        api_version = optional_str(settings, "api_version") or DEFAULT_API_VERSION
        if not _VERSION.fullmatch(api_version):
            raise ConfigurationError(f"api_version {api_version!r} must look like 'v26.0'")
        cleaned["api_version"] = api_version

        timeout = settings.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
            raise ConfigurationError("timeout must be a number of seconds between 0 and 300")
        cleaned["timeout"] = float(timeout)

        cleaned_secrets: dict[str, str] = {}
        for key, what in (
            ("access_token", "the system user's access token, for sending"),
            ("app_secret", "the Meta app's secret, to check X-Hub-Signature-256"),
            ("verify_token", "the verify token entered in Meta's webhook settings"),
        ):
            value = secrets.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigurationError(f"{key} is required ({what})")
            cleaned_secrets[key] = value.strip()
        return cleaned, cleaned_secrets

    default_template_language = DEFAULT_TEMPLATE_LANGUAGE

    @classmethod
    def template_name_problem(cls, name: str) -> str | None:
        """Meta's template names are lower-case letters, digits and underscores."""
        if not _TEMPLATE_NAME.fullmatch(name):
            return "a WhatsApp template name is lower-case letters, digits and underscores"
        return None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> Self:
        """Build the adapter for one inbox."""
        cleaned, cleaned_secrets = cls.validate_config(settings, secrets)
        return cls(
            access_token=cleaned_secrets["access_token"],
            app_secret=cleaned_secrets["app_secret"],
            verify_token=cleaned_secrets["verify_token"],
            **cleaned,
        )

    def handshake(self, request: WebhookRequest) -> WebhookReply:
        """Answer Meta's subscription check with `hub.challenge` once it proves it knows the verify token."""
        if request.query.get("hub.mode") != "subscribe":
            raise SignatureError("hub.mode must be 'subscribe'")
        token = request.query.get("hub.verify_token") or ""
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self._verify_token):
            raise SignatureError("hub.verify_token does not match the inbox's verify token")
        challenge = request.query.get("hub.challenge")
        if not challenge:
            raise SignatureError("hub.challenge is missing")
        return WebhookReply(body=challenge, content_type="text/plain")

    def verify(self, request: WebhookRequest) -> None:
        """Check `X-Hub-Signature-256`: an HMAC-SHA256 of the raw body keyed with the app secret."""
        signature = header(request.headers, SIGNATURE_HEADER)
        if not signature:
            raise SignatureError("missing X-Hub-Signature-256 header")
        scheme, separator, given = signature.strip().partition("=")
        if scheme.lower() != "sha256" or not separator:
            raise SignatureError("X-Hub-Signature-256 must be 'sha256=<hex digest>'")
        expected = hmac.new(self._app_secret, request.body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, given.strip().lower().encode("utf-8", "replace")):
            raise SignatureError("X-Hub-Signature-256 does not match the body")

    def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """Turn a webhook into the messages and statuses it carries for this inbox's phone number."""
        if request.route not in ("", "status"):
            raise MalformedPayload(f"unknown WhatsApp webhook route {request.route!r}")
        try:
            payload = json.loads(request.body)
        except (UnicodeDecodeError, ValueError) as e:
            raise MalformedPayload(f"the body is not JSON: {e}") from None
        payload = json_object(payload, "the body")
        if payload.get("object") != "whatsapp_business_account":
            raise MalformedPayload(
                f"object is {payload.get('object')!r}, not a WhatsApp Business Account webhook"
            )
        events: list[InboundEvent] = []
        for i, entry in enumerate(json_objects(payload, "entry", "the body", required=True)):
            for j, change in enumerate(json_objects(entry, "changes", f"entry[{i}]", required=True)):
                where = f"entry[{i}].changes[{j}]"
                kind = json_str(change, "field", where)
                parser = _CHANGE_PARSERS.get(kind)
                if parser is None:
                    logger.info("WhatsApp webhook field %r acknowledged and not handled", kind)
                    continue
                value = json_object(change.get("value"), f"{where}.value")
                metadata = json_object(value.get("metadata"), f"{where}.value.metadata")
                phone_number_id = json_str(metadata, "phone_number_id", f"{where}.value.metadata")
                if phone_number_id != self.phone_number_id:
                    logger.debug(
                        "WhatsApp webhook for phone number %s ignored by the inbox of %s",
                        phone_number_id,
                        self.phone_number_id,
                    )
                    continue
                events.extend(parser(value, f"{where}.value", self._media_url))
        return events

    def other_recipients(self, request: WebhookRequest) -> frozenset[str]:
        """The app's other phone numbers this body has changes for (one callback URL per app)."""
        try:
            payload = json.loads(request.body)
            changes = [c for e in payload["entry"] for c in e["changes"] if c.get("field") in _CHANGE_PARSERS]
            numbers = {str(c["value"]["metadata"]["phone_number_id"]) for c in changes}
        except (ValueError, KeyError, TypeError, AttributeError):
            return frozenset()  # parse() has judged (and refused) such a body already
        return frozenset(numbers - {self.phone_number_id})

    @classmethod
    def sibling_key(cls, settings: Mapping[str, Any]) -> str | None:
        value = settings.get("phone_number_id")
        return value if isinstance(value, str) else None

    def acknowledge(self, request: WebhookRequest, events: Sequence[InboundEvent]) -> WebhookReply:
        """An empty 200: Meta wants nothing back, and retries anything else."""
        return WebhookReply()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """POST one message to `/{phone_number_id}/messages`; translate Graph errors into channel errors."""
        url = f"{self.api_base_url}/{self.api_version}/{self.phone_number_id}/messages"
        answer = _object_or_none(await self._request("POST", url, _message_payload(message))) or {}
        sent, contact = _first(answer, "messages"), _first(answer, "contacts")
        wamid = sent.get("id")
        if not isinstance(wamid, str) or not wamid:
            # Retrying could send it twice; better to fail it visibly.
            raise PermanentDeliveryError("the WhatsApp Cloud API answered without a message id")
        extra: dict[str, Any] = {}
        if isinstance(sent.get("message_status"), str):
            extra["message_status"] = sent["message_status"]  # accepted, held_for_quality_assessment…
        if isinstance(contact.get("wa_id"), str):
            extra["wa_id"] = contact["wa_id"]
        return SendReceipt(provider_message_id=wamid, status="sent", extra=extra)

    async def download_media(self, media_id: str) -> tuple[bytes, str]:
        """The bytes and MIME type of a media file a customer sent, at most `MAX_MEDIA_BYTES`."""
        if not _MEDIA_ID.fullmatch(media_id):
            raise PermanentDeliveryError(f"{media_id!r} is not a WhatsApp media id", code="invalid_media_id")
        info = _object_or_none(await self._request("GET", self._media_url(media_id)))
        url = info.get("url") if info is not None else None
        if info is None or not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise PermanentDeliveryError(f"the WhatsApp Cloud API gave no download URL for media {media_id}")
        mime_type = info.get("mime_type") if isinstance(info.get("mime_type"), str) else None
        declared = _int_or_none(info.get("file_size"))
        if declared is not None and declared > MAX_MEDIA_BYTES:
            raise _too_large(media_id, declared)

        # The URL is short-lived and, like the Graph API, wants the access token.
        fetched = await download(
            self._get_session(),
            url,
            max_bytes=MAX_MEDIA_BYTES,
            what=f"media {media_id}",
            headers=self._auth_headers(),
            translate=_translate,
        )
        return fetched.data, mime_type or fetched.content_type or "application/octet-stream"

    async def fetch_attachment(self, attachment: Attachment) -> FetchedMedia:
        """An inbound image, document, voice note… by the media id in its Graph URL."""
        media_id = attachment.url.rsplit("/", 1)[-1]
        if attachment.url != self._media_url(media_id):
            raise PermanentDeliveryError(
                f"{attachment.url!r} is not this inbox's media", code="not_fetchable"
            )
        data, content_type = await self.download_media(media_id)
        return FetchedMedia(data, content_type)

    async def close(self) -> None:
        """Close the HTTP session, if a send opened one."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _media_url(self, media_id: str) -> str:
        return f"{self.api_base_url}/{self.api_version}/{media_id}"

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._access_token}"}

    def _get_session(self) -> aiohttp.ClientSession:
        # Opened on first use: a ClientSession needs the running loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def _request(self, method: str, url: str, payload: dict[str, Any] | None = None) -> Any:
        """A Graph API call: the decoded JSON of a 2xx answer, or the translated error."""
        try:
            async with self._get_session().request(
                method, url, json=payload, headers=self._auth_headers(), allow_redirects=False
            ) as response:
                body = await response.read()
                if not 200 <= response.status < 300:
                    raise _translate(response.status, body, response.headers)
        except (aiohttp.ClientError, TimeoutError) as e:
            # asyncio.TimeoutError is TimeoutError since 3.11.
            raise TransientDeliveryError(f"WhatsApp Cloud API unreachable: {e!r}") from e
        try:
            return json.loads(body)
        except ValueError:
            raise PermanentDeliveryError(
                f"the WhatsApp Cloud API answered {response.status} with a body that is not JSON"
            ) from None


# --- inbound ------------------------------------------------------------------------------------

MediaUrl = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class _Content:
    """What one message type contributes to an `InboundMessage`."""

    text: str
    attachments: tuple[Attachment, ...] = ()
    location: Location | None = None
    shared_contacts: tuple[SharedContact, ...] = ()
    button_reply: ButtonReply | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_messages_change(value: Mapping[str, Any], where: str, media_url: MediaUrl) -> list[InboundEvent]:
    """A `messages` change: customers' messages and statuses of ours, in the order Meta lists them."""
    metadata = json_object(value.get("metadata"), f"{where}.metadata")
    display_number = _optional_str(metadata, "display_phone_number", f"{where}.metadata")
    business = (
        Address("phone", phone_from_wa_id(display_number))
        if display_number and display_number.isascii() and display_number.isdigit()
        else None
    )
    names: dict[str, str] = {}
    profiles = json_objects(value, "contacts", where)
    for i, contact in enumerate(profiles):
        profile = json_optional_object(contact, "profile", f"{where}.contacts[{i}]") or {}
        name = _optional_str(profile, "name", f"{where}.contacts[{i}].profile")
        for key in ("wa_id", "user_id"):
            identifier = _optional_str(contact, key, f"{where}.contacts[{i}]")
            if identifier and name:
                names[identifier] = name

    events: list[InboundEvent] = []
    for i, message in enumerate(json_objects(value, "messages", where)):
        events.append(_parse_message(message, f"{where}.messages[{i}]", business, names, profiles, media_url))
    for i, status in enumerate(json_objects(value, "statuses", where)):
        parsed = _parse_status(status, f"{where}.statuses[{i}]")
        if parsed is not None:
            events.append(parsed)
    for error in json_objects(value, "errors", where):
        logger.warning("WhatsApp reported an error for the phone number: %s", _describe_error(error))
    return events


def _parse_message(
    message: Mapping[str, Any],
    where: str,
    business: Address | None,
    names: Mapping[str, str],
    profiles: Sequence[Mapping[str, Any]],
    media_url: MediaUrl,
) -> InboundMessage:
    wamid = json_str(message, "id", where)
    sender, sender_key = _sender(message, where, profiles)
    kind = json_str(message, "type", where)
    parser = _CONTENT_PARSERS.get(kind, _unsupported)
    content = parser(message, kind, where, media_url)

    # An unsupported type's own object stays in `extra`, as Meta sent it.
    consumed = {"from", "from_user_id", "id", "type"} | ({kind} if kind in _CONTENT_PARSERS else set())
    extra: dict[str, Any] = {"type": kind}
    for key, value in message.items():
        if key not in consumed:
            extra[f"whatsapp_{key}" if key in _RESERVED_EXTRA_KEYS else key] = value
    extra.update(content.extra)
    return InboundMessage(
        provider_message_id=wamid,
        sender=sender,
        recipient=business,
        text=content.text,
        attachments=content.attachments,
        sender_name=names.get(sender_key),
        location=content.location,
        shared_contacts=content.shared_contacts,
        button_reply=content.button_reply,
        extra=extra,
    )


def _sender(
    message: Mapping[str, Any], where: str, profiles: Sequence[Mapping[str, Any]]
) -> tuple[Address, str]:
    """The customer's address and the key their profile name is filed under."""
    wa_id = _optional_str(message, "from", where)
    if wa_id is not None:
        if not (wa_id.isascii() and wa_id.isdigit()):
            raise MalformedPayload(f"{where}.from is not a WhatsApp phone number: {wa_id!r}")
        return Address("phone", phone_from_wa_id(wa_id)), wa_id
    # A customer who hides their number behind a username is known only by a business-scoped id.
    user_id = _optional_str(message, "from_user_id", where)
    if user_id is None and len(profiles) == 1:
        user_id = _optional_str(profiles[0], "user_id", f"{where} (contacts[0])")
    if user_id is None:
        raise MalformedPayload(f"{where} has neither from nor from_user_id")
    return Address(BSUID_KIND, user_id), user_id


def phone_from_wa_id(wa_id: str) -> str:
    """E.164 for a WhatsApp id, as SMS would write the same number, so both reach one contact."""
    digits = wa_id
    # WhatsApp ids keep two numbering plans that have since changed: Mexican mobiles still carry
    # the "1" after +52 that Mexico dropped in 2019, and Brazilian accounts older than the ninth
    # mobile digit keep their eight-digit number (mobiles start 6-9; landlines 2-5 never gained it).
    if len(digits) == 13 and digits.startswith("521"):
        digits = "52" + digits[3:]
    elif len(digits) == 12 and digits.startswith("55") and digits[4] in "6789":
        digits = digits[:4] + "9" + digits[4:]
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return "+" + wa_id
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return "+" + wa_id
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _text_content(message: Mapping[str, Any], kind: str, where: str, media_url: MediaUrl) -> _Content:
    text = json_object(message.get("text"), f"{where}.text")
    body = text.get("body")
    if not isinstance(body, str):
        raise MalformedPayload(f"{where}.text.body is not a string")
    return _Content(text=body)


def _media_content(message: Mapping[str, Any], kind: str, where: str, media_url: MediaUrl) -> _Content:
    """Image, video, audio, document or sticker: the attachment points at its Graph media endpoint."""
    media = json_object(message.get(kind), f"{where}.{kind}")
    media_id = json_str(media, "id", f"{where}.{kind}")
    if not _MEDIA_ID.fullmatch(media_id):
        raise MalformedPayload(f"{where}.{kind}.id is not a media id: {media_id!r}")
    caption = _optional_str(media, "caption", f"{where}.{kind}")
    attachment = Attachment(
        url=media_url(media_id),
        content_type=_optional_str(media, "mime_type", f"{where}.{kind}"),
        filename=_optional_str(media, "filename", f"{where}.{kind}"),
    )
    extra: dict[str, Any] = {"media_id": media_id}
    for key in ("sha256", "voice", "animated"):
        if key in media:
            extra[key] = media[key]
    return _Content(text=caption or "", attachments=(attachment,), extra=extra)


def _location_content(message: Mapping[str, Any], kind: str, where: str, media_url: MediaUrl) -> _Content:
    raw = json_object(message.get("location"), f"{where}.location")
    latitude = _coordinate(raw, "latitude", f"{where}.location", 90)
    longitude = _coordinate(raw, "longitude", f"{where}.location", 180)
    name = _optional_str(raw, "name", f"{where}.location")
    address = _optional_str(raw, "address", f"{where}.location")
    label = ", ".join(part for part in (name, address) if part)
    place = f"{label} ({latitude:g}, {longitude:g})" if label else f"{latitude:g}, {longitude:g}"
    extra = {"location_url": raw["url"]} if isinstance(raw.get("url"), str) else {}
    return _Content(
        text=f"Location: {place}",
        location=Location(latitude, longitude, name, address),
        extra=extra,
    )


def _contacts_content(message: Mapping[str, Any], kind: str, where: str, media_url: MediaUrl) -> _Content:
    shared: list[SharedContact] = []
    for i, card in enumerate(json_objects(message, "contacts", where, required=True)):
        here = f"{where}.contacts[{i}]"
        name_object = json_optional_object(card, "name", here) or {}
        name = _optional_str(name_object, "formatted_name", f"{here}.name") or " ".join(
            part
            for part in (
                _optional_str(name_object, "first_name", f"{here}.name"),
                _optional_str(name_object, "last_name", f"{here}.name"),
            )
            if part
        )
        phones: list[str] = []
        for j, phone in enumerate(json_objects(card, "phones", here)):
            wa_id = _optional_str(phone, "wa_id", f"{here}.phones[{j}]")
            number = _optional_str(phone, "phone", f"{here}.phones[{j}]")
            if wa_id and wa_id.isascii() and wa_id.isdigit():
                phones.append(phone_from_wa_id(wa_id))
            elif number:
                phones.append(number)
        emails = tuple(
            address
            for j, item in enumerate(json_objects(card, "emails", here))
            if (address := _optional_str(item, "email", f"{here}.emails[{j}]"))
        )
        name = name or (phones[0] if phones else "Unnamed contact")
        shared.append(SharedContact(name=name, phones=tuple(phones), emails=emails))
    described = "; ".join(_contact_label(c) for c in shared)
    return _Content(text=f"Shared contact: {described}", shared_contacts=tuple(shared))


def _contact_label(contact: SharedContact) -> str:
    numbers = [p for p in contact.phones if p != contact.name]
    return f"{contact.name} ({', '.join(numbers)})" if numbers else contact.name


def _interactive_content(message: Mapping[str, Any], kind: str, where: str, media_url: MediaUrl) -> _Content:
    """The customer pressed a reply button or picked a list row from a message we sent."""
    interactive = json_object(message.get("interactive"), f"{where}.interactive")
    reply_kind = json_str(interactive, "type", f"{where}.interactive")
    if reply_kind not in ("button_reply", "list_reply"):
        return _Content(
            text=f"[unsupported interactive reply: {reply_kind}]",
            extra={"interactive_type": reply_kind, "interactive": dict(interactive)},
        )
    reply = json_object(interactive.get(reply_kind), f"{where}.interactive.{reply_kind}")
    button = ButtonReply(
        id=json_str(reply, "id", f"{where}.interactive.{reply_kind}"),
        title=json_str(reply, "title", f"{where}.interactive.{reply_kind}"),
    )
    extra: dict[str, Any] = {"interactive_type": reply_kind}
    description = _optional_str(reply, "description", f"{where}.interactive.{reply_kind}")
    if description:
        extra["description"] = description
    return _Content(text=button.title, button_reply=button, extra=extra)


def _button_content(message: Mapping[str, Any], kind: str, where: str, media_url: MediaUrl) -> _Content:
    """A quick-reply button of a template we sent: its payload is what the template defined."""
    raw = json_object(message.get("button"), f"{where}.button")
    title = json_str(raw, "text", f"{where}.button")
    payload = _optional_str(raw, "payload", f"{where}.button") or title
    return _Content(text=title, button_reply=ButtonReply(id=payload, title=title))


def _reaction_content(message: Mapping[str, Any], kind: str, where: str, media_url: MediaUrl) -> _Content:
    raw = json_object(message.get("reaction"), f"{where}.reaction")
    emoji = _optional_str(raw, "emoji", f"{where}.reaction")
    reacted_to = _optional_str(raw, "message_id", f"{where}.reaction")
    return _Content(
        text=f"Reacted {emoji} to a message" if emoji else "Removed a reaction",
        extra={"reaction": {"message_id": reacted_to, "emoji": emoji}},
    )


def _system_content(message: Mapping[str, Any], kind: str, where: str, media_url: MediaUrl) -> _Content:
    """WhatsApp's own notice, e.g. that the customer changed their number."""
    raw = json_object(message.get("system"), f"{where}.system")
    body = _optional_str(raw, "body", f"{where}.system")
    return _Content(text=body or "[WhatsApp system message]", extra={"system": dict(raw)})


def _unsupported(message: Mapping[str, Any], kind: str, where: str, media_url: MediaUrl) -> _Content:
    """Anything else (orders, polls, types Meta adds later): kept readable, never a crash."""
    shown = kind
    inner = message.get("unsupported")
    if kind == "unsupported" and isinstance(inner, dict) and isinstance(inner.get("type"), str):
        shown = inner["type"]
    return _Content(text=f"[unsupported message type: {shown}]")


ContentParser = Callable[[Mapping[str, Any], str, str, MediaUrl], _Content]

_CONTENT_PARSERS: Mapping[str, ContentParser] = {
    "text": _text_content,
    "image": _media_content,
    "video": _media_content,
    "audio": _media_content,
    "document": _media_content,
    "sticker": _media_content,
    "location": _location_content,
    "contacts": _contacts_content,
    "interactive": _interactive_content,
    "button": _button_content,
    "reaction": _reaction_content,
    "system": _system_content,
}
HANDLED_MESSAGE_TYPES = frozenset(_CONTENT_PARSERS)


def _parse_status(status: Mapping[str, Any], where: str) -> DeliveryStatus | None:
    wamid = json_str(status, "id", where)
    raw = json_str(status, "status", where)
    state = _STATUSES.get(raw)
    if state is None:
        # "deleted", "warning" and whatever Meta adds: nothing a sent message's status can become.
        logger.info("WhatsApp status %r for %s acknowledged and not handled", raw, wamid)
        return None
    error_code = error_message = None
    errors = json_objects(status, "errors", where)
    if errors:
        error_code, error_message = _error_fields(errors[0], f"{where}.errors[0]")
    elif state == "failed":
        error_message = "WhatsApp reported the message as failed without a reason"
    extra = {key: value for key, value in status.items() if key not in ("id", "status", "errors")}
    if len(errors) > 1:
        extra["errors"] = errors[1:]
    return DeliveryStatus(
        provider_message_id=wamid,
        status=state,
        error_code=error_code,
        error_message=error_message,
        extra=extra,
    )


ChangeParser = Callable[[Mapping[str, Any], str, MediaUrl], list[InboundEvent]]

_CHANGE_PARSERS: Mapping[str, ChangeParser] = {"messages": _parse_messages_change}
HANDLED_FIELDS = frozenset(_CHANGE_PARSERS)


def _error_fields(error: Mapping[str, Any], where: str) -> tuple[str, str]:
    code = error.get("code")
    if isinstance(code, bool) or not isinstance(code, int | str) or not str(code).isdigit():
        raise MalformedPayload(f"{where}.code is not an error code: {code!r}")
    return str(code), _describe_error(error)


def _describe_error(error: Mapping[str, Any]) -> str:
    """Parley's reason for a Meta error code, else Meta's title, with Meta's details after it."""
    code = str(error.get("code", ""))
    title = error.get("title") if isinstance(error.get("title"), str) else error.get("message")
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    reason = _ERROR_REASONS.get(code) or (
        title if isinstance(title, str) and title else f"WhatsApp error {code}"
    )
    if isinstance(details, str) and details and details not in reason:
        return f"{reason} ({details})"
    return reason


# --- outbound -----------------------------------------------------------------------------------


def _message_payload(message: OutboundMessage) -> dict[str, Any]:
    """The Messages API body: a template, buttons or a list, media with a caption, or text."""
    if message.recipient.kind != "phone":
        raise PermanentDeliveryError(
            f"the customer is known to WhatsApp only by a business-scoped user id "
            f"({message.recipient.value}); Parley can reply to phone numbers only",
            code="no_phone_number",
        )
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.recipient.value,
    }
    if message.template is not None:
        payload |= {"type": "template", "template": _template(message.template, message.attachments)}
    elif message.buttons:
        payload |= {"type": "interactive", "interactive": _interactive(message)}
    elif message.attachments:
        payload |= _media(message.text, message.attachments)
    elif message.text:
        payload |= _text(message.text)
    else:
        raise PermanentDeliveryError("the message has no text, attachment or template", code="empty_message")
    return payload


def _text(text: str) -> dict[str, Any]:
    if len(text) > MAX_TEXT_LENGTH:
        raise PermanentDeliveryError(
            f"WhatsApp carries at most {MAX_TEXT_LENGTH} characters of text ({len(text)} given)",
            code="message_too_long",
        )
    return {"type": "text", "text": {"preview_url": False, "body": text}}


def _media_kind(attachment: Attachment) -> str:
    """The Messages API type for a file: what WhatsApp cannot show inline goes as a document."""
    content_type = attachment.content_type or mimetypes.guess_type(urlsplit(attachment.url).path)[0] or ""
    content_type = content_type.split(";")[0].strip().lower()
    if content_type in ("image/jpeg", "image/png"):
        return "image"
    if content_type in ("video/mp4", "video/3gpp"):
        return "video"
    if content_type.startswith("audio/"):
        return "audio"
    return "document"


def _with_links(text: str, attachments: Sequence[Attachment]) -> str:
    """Attachments a message cannot carry as media become links after the text."""
    links = "\n".join(a.url for a in attachments)
    return f"{text}\n\n{links}" if text else links


def _media(text: str, attachments: Sequence[Attachment]) -> dict[str, Any]:
    """The first attachment as media, captioned with the text and links to any others."""
    first, rest = attachments[0], attachments[1:]
    kind = _media_kind(first)
    caption = _with_links(text, rest) if rest else text
    if (caption and kind == "audio") or len(caption) > MAX_CAPTION_LENGTH:
        # Audio has no caption, and a caption has a quarter of a text's length: send it all as text.
        return _text(_with_links(text, attachments))
    media: dict[str, Any] = {"link": first.url}
    if caption:
        media["caption"] = caption
    if kind == "document":
        filename = unquote(urlsplit(first.url).path.rsplit("/", 1)[-1])
        if filename:
            media["filename"] = filename
    return {"type": kind, kind: media}


def _interactive(message: OutboundMessage) -> dict[str, Any]:
    """Up to three short buttons as reply buttons, anything more as a list (at most ten rows)."""
    buttons = message.buttons
    as_buttons = len(buttons) <= MAX_REPLY_BUTTONS and all(
        len(b.title) <= MAX_BUTTON_TITLE_LENGTH for b in buttons
    )
    attachments = message.attachments
    header: dict[str, Any] | None = None
    if as_buttons and attachments and _media_kind(attachments[0]) != "audio":
        kind = _media_kind(attachments[0])
        header = {"type": kind, kind: {"link": attachments[0].url}}
        attachments = attachments[1:]
    body = _with_links(message.text, attachments) if attachments else message.text
    if len(body) > MAX_INTERACTIVE_BODY_LENGTH:
        raise PermanentDeliveryError(
            f"WhatsApp carries at most {MAX_INTERACTIVE_BODY_LENGTH} characters of text with buttons "
            f"({len(body)} given)",
            code="message_too_long",
        )
    interactive: dict[str, Any] = {"body": {"text": body}}
    if as_buttons:
        interactive["type"] = "button"
        interactive["action"] = {
            "buttons": [{"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in buttons]
        }
        if header is not None:
            interactive["header"] = header
        return interactive
    if len(buttons) > MAX_LIST_ROWS:
        raise PermanentDeliveryError(
            f"WhatsApp lists carry at most {MAX_LIST_ROWS} options ({len(buttons)} given)",
            code="too_many_buttons",
        )
    interactive["type"] = "list"
    interactive["action"] = {"button": LIST_BUTTON_LABEL, "sections": [{"rows": [_row(b) for b in buttons]}]}
    return interactive


def _row(button: Button) -> dict[str, str]:
    if len(button.id) > MAX_ROW_ID_LENGTH:
        raise PermanentDeliveryError(
            f"WhatsApp list options have ids of at most {MAX_ROW_ID_LENGTH} characters",
            code="button_id_too_long",
        )
    if len(button.title) <= MAX_ROW_TITLE_LENGTH:
        return {"id": button.id, "title": button.title}
    # Titles are cut short in the list; the whole title goes underneath as the row's description.
    return {
        "id": button.id,
        "title": button.title[: MAX_ROW_TITLE_LENGTH - 1] + "…",
        "description": _shorten(button.title, MAX_ROW_DESCRIPTION_LENGTH),
    }


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _template(template: Template, attachments: Sequence[Attachment]) -> dict[str, Any]:
    """A template message: variables "1", "2"… fill the body's placeholders in order, others by name."""
    result: dict[str, Any] = {
        "name": template.name,
        "language": {"code": template.language or DEFAULT_TEMPLATE_LANGUAGE},
    }
    components: list[dict[str, Any]] = []
    if attachments:
        kind = _media_kind(attachments[0])
        kind = "document" if kind == "audio" else kind
        components.append(
            {"type": "header", "parameters": [{"type": kind, kind: {"link": attachments[0].url}}]}
        )
    if template.variables:
        ordered = sorted(
            template.variables.items(), key=lambda kv: (int(kv[0]) if kv[0].isdigit() else math.inf, kv[0])
        )
        components.append(
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": value}
                    if key.isdigit()
                    else {"type": "text", "parameter_name": key, "text": value}
                    for key, value in ordered
                ],
            }
        )
    if components:
        result["components"] = components
    return result


# --- errors -------------------------------------------------------------------------------------


def _translate(status: int, body: bytes, headers: Mapping[str, str]) -> ChannelError:
    """A Graph API error answer as one of the channel errors."""
    error: Mapping[str, Any] = {}
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
        error = decoded["error"]
    raw_code = error.get("code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    reason = _describe_error(error) if error else f"HTTP {status}"
    if code in _RATE_LIMIT_CODES or code in _TEMPORARY_CODES or status == 429 or status >= 500:
        return TransientDeliveryError(
            f"WhatsApp Cloud API answered {status}: {reason}",
            retry_after=retry_after_seconds(header(headers, "Retry-After")),
        )
    if status in (401, 403) or code in _AUTH_CODES or (code is not None and 200 <= code <= 299):
        return ChannelAuthError(f"WhatsApp Cloud API refused the access token ({status}): {reason}")
    return PermanentDeliveryError(reason, code=str(code) if code is not None else str(status))


def _too_large(media_id: str, size: int) -> PermanentDeliveryError:
    return too_large(f"media {media_id}", size, MAX_MEDIA_BYTES)


# --- reading untrusted JSON ---------------------------------------------------------------------


def _object_or_none(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None


def _first(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The first object of a list in a Graph answer, or an empty one."""
    value = obj.get(key)
    return value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPayload(f"{where}.{key} is not a string")
    return value.strip() or None


def _coordinate(obj: Mapping[str, Any], key: str, where: str, limit: float) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not -limit <= value <= limit:
        raise MalformedPayload(f"{where}.{key} is not a {key}: {value!r}")
    return float(value)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _graph_id(settings: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    value = settings.get(key)
    if value is None or value == "":
        if required:
            raise ConfigurationError(f"{key} is required (the numeric id Meta shows in WhatsApp Manager)")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _GRAPH_ID.fullmatch(value.strip()):
        raise ConfigurationError(f"{key} must be a numeric Graph API id")
    return value.strip()
