"""Telegram bots through the Bot API: updates parsed and messages sent with python-telegram-bot."""

from __future__ import annotations

import hmac
import json
import logging
import math
import mimetypes
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any, Self, TypeGuard
from urllib.parse import urlsplit

from telegram import (
    Bot,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
    User,
)
from telegram import Location as TelegramLocation
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

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
    TransientDeliveryError,
    WebhookReply,
    WebhookRequest,
)
from channels.common import header, optional_str

logger = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://api.telegram.org"
DEFAULT_TIMEOUT = 10.0
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name, not a secret
# Inbound files are kept as this scheme plus the Bot API file_id: the Bot API hands out download
# paths only through getFile, and those expire after an hour.
FILE_URL_PREFIX = "tg-file:"
MAX_CALLBACK_DATA_BYTES = 64
MAX_CAPTION_LENGTH = 1024

_BOT_TOKEN = re.compile(r"[0-9]+:[A-Za-z0-9_-]+")
# What setWebhook accepts as secret_token.
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
_FILE_ID = re.compile(r"[A-Za-z0-9_-]+")
_CHAT_ID = re.compile(r"-?[0-9]{1,20}")
_TOKEN_IN_URL = re.compile(r"(/(?:file/)?bot)[0-9]+:[A-Za-z0-9_-]+")
_VCARD_EMAIL = re.compile(r"^EMAIL[^:\r\n]*:(.+?)\r?$", re.MULTILINE | re.IGNORECASE)

_EMPTY_REPLY = WebhookReply()


class _RedactBotToken(logging.Filter):
    """httpx logs every request URL at INFO, and Bot API URLs carry the bot token."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN_IN_URL.sub(r"\1<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class Telegram(Channel):
    """A Telegram bot: updates arrive by webhook with a secret token header; replies go by Bot API."""

    name = "telegram"
    identity_kind = "telegram"
    consent_channel = "telegram"
    fetches_media = True
    capabilities = Capabilities(
        media=True, buttons=True, max_text_length=4096, max_button_id_bytes=MAX_CALLBACK_DATA_BYTES
    )

    def __init__(
        self,
        *,
        bot_token: str,
        webhook_secret: str,
        api_base_url: str = DEFAULT_API_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.api_base_url = api_base_url
        self.timeout = timeout
        self._bot_token = bot_token
        self._webhook_secret = webhook_secret.encode()
        self._request: HTTPXRequest | None = None
        self._bot: Bot | None = None

    @classmethod
    def validate_config(
        cls, settings: Mapping[str, Any], secrets: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Check and clean an inbox's Bot API settings, bot token and webhook secret."""
        api_base_url = optional_str(settings, "api_base_url") or DEFAULT_API_BASE_URL
        parts = urlsplit(api_base_url)
        # Braces would be taken by PTB as a place for the token ("{token}").
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
            or "{" in api_base_url
            or "}" in api_base_url
        ):
            raise ConfigurationError(f"api_base_url {api_base_url!r} must be an http(s) URL without query")

        timeout = settings.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
            raise ConfigurationError("timeout must be a number of seconds between 0 and 300")

        bot_token = secrets.get("bot_token")
        if not isinstance(bot_token, str) or not bot_token.strip():
            raise ConfigurationError("bot_token is required (the token @BotFather gave the bot)")
        bot_token = bot_token.strip()
        if not _BOT_TOKEN.fullmatch(bot_token):
            raise ConfigurationError("bot_token must look like '<bot id>:<secret>', as @BotFather gives it")

        webhook_secret = secrets.get("webhook_secret")
        if not isinstance(webhook_secret, str) or not webhook_secret.strip():
            raise ConfigurationError("webhook_secret is required (give it to setWebhook as secret_token)")
        webhook_secret = webhook_secret.strip()
        if not _WEBHOOK_SECRET.fullmatch(webhook_secret):
            raise ConfigurationError(
                "webhook_secret must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's secret_token)"
            )

        return (
            {"api_base_url": api_base_url.rstrip("/"), "timeout": float(timeout)},
            {"bot_token": bot_token, "webhook_secret": webhook_secret},
        )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> Self:
        """Build the adapter for one inbox."""
        cleaned, cleaned_secrets = cls.validate_config(settings, secrets)
        return cls(
            bot_token=cleaned_secrets["bot_token"],
            webhook_secret=cleaned_secrets["webhook_secret"],
            api_base_url=cleaned["api_base_url"],
            timeout=cleaned["timeout"],
        )

    def verify(self, request: WebhookRequest) -> None:
        """Check the `X-Telegram-Bot-Api-Secret-Token` header against the inbox's webhook secret."""
        given = header(request.headers, SECRET_HEADER)
        if not given:
            raise SignatureError(f"missing {SECRET_HEADER} header")
        # "replace" keeps a non-ASCII header from raising: the secret is ASCII, so it cannot match.
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self._webhook_secret):
            raise SignatureError(f"{SECRET_HEADER} does not match the inbox's webhook secret")

    def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """Turn one Update into at most one message; update types Parley does not handle give none."""
        data = _update_object(request.body)
        try:
            # No bot: the PTB objects stay in this module, so their shortcut methods are never used.
            update = Update.de_json(data, None)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError, OSError) as e:
            raise MalformedPayload(f"not a Telegram Update: {e}") from e

        kind = next((k for k in Update.ALL_TYPES if getattr(update, k, None) is not None), None)
        parser = _PARSERS.get(kind) if kind is not None else None
        if parser is None:
            logger.info(
                "telegram update %s (%s) acknowledged and ignored", data["update_id"], kind or "unknown"
            )
            return []
        event = parser(update)
        return [event] if event is not None else []

    def acknowledge(self, request: WebhookRequest, events: Sequence[InboundEvent]) -> WebhookReply:
        """Answer a button press in the webhook reply itself, so its spinner stops without another call."""
        query_id = _callback_query_id(request.body)
        if query_id is None:
            return _EMPTY_REPLY
        # The Bot API runs a method given in the webhook response body; its result is not reported.
        body = json.dumps({"method": "answerCallbackQuery", "callback_query_id": query_id})
        return WebhookReply(body=body, content_type="application/json")

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Send text (with an inline keyboard) and attachments; translate Bot API errors."""
        chat_id = _chat_id(message.recipient)
        markup = _keyboard(message.buttons)
        media = [_file_input(a) for a in message.attachments]
        text = message.text
        if not text.strip() and not media:
            raise PermanentDeliveryError("nothing to send: the message has neither text nor attachments")

        bot = self._get_bot()
        # Telegram has one message per file: the text rides as the last file's caption when it fits,
        # else it follows on its own; the buttons go on whatever is sent last.
        caption = text if text.strip() and len(text) <= MAX_CAPTION_LENGTH else None
        separate_text = bool(text.strip()) and caption is None
        sent: list[Message] = []
        try:
            for i, (file_input, is_image) in enumerate(media):
                last = i == len(media) - 1
                kwargs: dict[str, Any] = {}
                if last:
                    kwargs["caption"] = caption
                    kwargs["reply_markup"] = None if separate_text else markup
                if is_image:
                    sent.append(await bot.send_photo(chat_id, file_input, **kwargs))
                else:
                    sent.append(await bot.send_document(chat_id, file_input, **kwargs))
            if not media or separate_text:
                sent.append(await bot.send_message(chat_id, text, reply_markup=markup))
        except TelegramError as e:
            if sent:
                # A retry sends the earlier parts again: the Bot API has no idempotency key.
                logger.warning(
                    "telegram send to %s failed after %s of its messages were sent", chat_id, len(sent)
                )
            raise _translate(e) from e

        message_ids = [m.message_id for m in sent]
        return SendReceipt(
            provider_message_id=f"{chat_id}:{message_ids[-1]}",
            status="sent",  # the Bot API reports neither delivery nor reads to bots
            extra={"chat_id": chat_id, "message_ids": message_ids},
        )

    async def fetch_attachment(self, attachment: Attachment) -> FetchedMedia:
        """A file a customer sent: getFile for a fresh download path, then the download (≤ 20 MB)."""
        file_id = attachment.url.removeprefix(FILE_URL_PREFIX)
        if not attachment.url.startswith(FILE_URL_PREFIX) or not _FILE_ID.fullmatch(file_id):
            raise PermanentDeliveryError(f"{attachment.url!r} is not a Telegram file", code="not_fetchable")
        try:
            file = await self._get_bot().get_file(file_id)
            data = await file.download_as_bytearray()
        except TelegramError as e:
            raise _translate(e) from e
        name = PurePosixPath(file.file_path or "").name or None
        return FetchedMedia(bytes(data), attachment.content_type or mimetypes.guess_type(name or "")[0], name)

    async def close(self) -> None:
        """Close the HTTP client, if a send opened one."""
        if self._request is not None:
            request, self._request, self._bot = self._request, None, None
            # Bot.shutdown() only shuts requests down after Bot.initialize(), which we skip (it calls
            # getMe), so the request is closed directly.
            await request.shutdown()

    def _get_bot(self) -> Bot:
        if self._bot is None:
            _redact_tokens_in_httpx_logs()
            t = self.timeout
            self._request = HTTPXRequest(
                read_timeout=t, write_timeout=t, connect_timeout=t, pool_timeout=t, media_write_timeout=t
            )
            # No initialize(): it only fetches getMe for `bot.bot`/`bot.username`, which sending
            # does not need. The same request serves getUpdates, which a webhook bot never calls.
            self._bot = Bot(
                self._bot_token,
                base_url=f"{self.api_base_url}/bot",
                base_file_url=f"{self.api_base_url}/file/bot",
                request=self._request,
                get_updates_request=self._request,
            )
        return self._bot


# --- inbound ------------------------------------------------------------------------------------


def _parse_message(update: Update) -> InboundMessage | None:
    message = update.message
    assert message is not None
    sender, sender_name, extra = _sender(message.from_user)
    extra.update(_chat_extra(message))
    reply_to = message.reply_to_message
    if reply_to is not None and _is_int(reply_to.message_id):
        extra["reply_to_message_id"] = reply_to.message_id
    if isinstance(message.media_group_id, str):
        extra["media_group_id"] = message.media_group_id
    if message.api_kwargs:
        extra["unparsed"] = dict(message.api_kwargs)  # fields newer than this PTB

    text = _optional_text(message.text, "text") or _optional_text(message.caption, "caption") or ""
    attachments = _attachments(message)
    if not text and message.sticker is not None:
        text = _optional_text(message.sticker.emoji, "sticker.emoji") or ""
    location = _location(message)
    contacts = _shared_contacts(message)
    if location is not None and not text:
        text = location.describe()
    if contacts and not text:
        text = "; ".join(_contact_text(c) for c in contacts)
    if not text and not attachments:
        logger.info("telegram update %s: message with no content Parley shows, ignored", update.update_id)
        return None

    return InboundMessage(
        provider_message_id=str(update.update_id),
        sender=sender,
        recipient=None,
        text=text,
        attachments=attachments,
        sender_name=sender_name,
        location=location,
        shared_contacts=contacts,
        extra=extra,
    )


def _parse_callback_query(update: Update) -> InboundMessage | None:
    query = update.callback_query
    assert query is not None
    sender, sender_name, extra = _sender(query.from_user)
    if not isinstance(query.id, str) or not query.id:
        raise MalformedPayload("Telegram callback_query without an id")
    extra["callback_query_id"] = query.id
    if isinstance(query.message, Message):
        extra.update(_chat_extra(query.message))
    elif query.message is not None:
        # Too old to be shown to the bot (InaccessibleMessage): only its ids are given.
        chat, message_id = query.message.chat, query.message.message_id
        if chat is not None and _is_int(chat.id) and _is_int(message_id):
            extra.update(chat_id=chat.id, message_id=message_id)
    data = query.data
    if data is None:
        logger.info("telegram update %s: callback query without data (a game), ignored", update.update_id)
        return None
    if not isinstance(data, str):
        raise MalformedPayload("Telegram callback_query data is not a string")
    title = _pressed_button_title(query, data) or data
    return InboundMessage(
        provider_message_id=str(update.update_id),
        sender=sender,
        recipient=None,
        text=title,
        sender_name=sender_name,
        button_reply=ButtonReply(id=data, title=title),
        extra=extra,
    )


_PARSERS: Mapping[str, Callable[[Update], InboundMessage | None]] = {
    "message": _parse_message,
    "callback_query": _parse_callback_query,
}


def _update_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedPayload(f"Telegram update is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise MalformedPayload("Telegram update is not a JSON object")
    if not _is_int(data.get("update_id")):
        raise MalformedPayload("Telegram update without an integer update_id")
    return data


def _callback_query_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    query = data.get("callback_query") if isinstance(data, dict) else None
    query_id = query.get("id") if isinstance(query, dict) else None
    return query_id if isinstance(query_id, str) and query_id else None


def _sender(user: User | None) -> tuple[Address, str | None, dict[str, Any]]:
    if user is None or not _is_int(user.id):
        raise MalformedPayload("Telegram update without a sender with an integer id ('from')")
    first = _optional_text(user.first_name, "first_name")
    last = _optional_text(user.last_name, "last_name")
    username = _optional_text(user.username, "username")
    name = " ".join(part for part in (first, last) if part) or username
    extra: dict[str, Any] = {}
    if username:
        extra["username"] = username
    return Address("telegram", str(user.id)), name, extra


def _chat_extra(message: Message) -> dict[str, Any]:
    # PTB fills in None for missing fields the Bot API calls required.
    chat = message.chat
    if chat is None or not _is_int(chat.id) or not _is_int(message.message_id):
        raise MalformedPayload("Telegram message without an integer chat id and message id")
    extra: dict[str, Any] = {
        "chat_id": chat.id,
        "chat_type": str(chat.type),
        "message_id": message.message_id,
    }
    title = _optional_text(chat.title, "chat.title")
    if title:
        extra["chat_title"] = title
    if _is_int(message.message_thread_id):
        extra["message_thread_id"] = message.message_thread_id
    return extra


def _attachments(message: Message) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    if message.photo:
        # One photo comes in several sizes; keep the largest. Telegram stores photos as JPEG.
        largest = max(message.photo, key=lambda p: _dimension(p.width) * _dimension(p.height))
        found.append(_attachment(largest.file_id, "image/jpeg", None, largest.file_size))
    # An animation also fills `document`, for clients that predate animations.
    files = (
        message.animation,
        message.document if message.animation is None else None,
        message.video,
        message.audio,
        message.voice,
        message.video_note,
    )
    for file in files:
        if file is not None:
            found.append(
                _attachment(
                    file.file_id,
                    getattr(file, "mime_type", None),
                    getattr(file, "file_name", None),
                    file.file_size,
                )
            )
    sticker = message.sticker
    if sticker is not None:
        # The formats of Telegram's three kinds of stickers.
        kind = (
            "video/webm"
            if sticker.is_video
            else "application/x-tgsticker"
            if sticker.is_animated
            else "image/webp"
        )
        found.append(_attachment(sticker.file_id, kind, None, sticker.file_size))
    return tuple(found)


def _attachment(file_id: object, content_type: object, filename: object, size: object) -> Attachment:
    if not isinstance(file_id, str) or not _FILE_ID.fullmatch(file_id):
        raise MalformedPayload(f"Telegram file_id is not a file id: {file_id!r}")
    return Attachment(
        url=f"{FILE_URL_PREFIX}{file_id}",
        content_type=_optional_text(content_type, "mime_type"),
        filename=_optional_text(filename, "file_name"),
        size=size if _is_int(size) else None,
    )


def _location(message: Message) -> Location | None:
    venue = message.venue
    if venue is not None:
        latitude, longitude = _coordinates(venue.location)
        return Location(
            latitude,
            longitude,
            name=_optional_text(venue.title, "venue.title"),
            address=_optional_text(venue.address, "venue.address"),
        )
    if message.location is not None:
        return Location(*_coordinates(message.location))
    return None


def _coordinates(location: TelegramLocation | None) -> tuple[float, float]:
    if location is None:
        raise MalformedPayload("Telegram venue without a location")
    latitude, longitude = location.latitude, location.longitude
    for value, limit in ((latitude, 90), (longitude, 180)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise MalformedPayload("Telegram location coordinates are not numbers")
        if not -limit <= value <= limit:
            raise MalformedPayload("Telegram location coordinates are out of range")
    return float(latitude), float(longitude)


def _shared_contacts(message: Message) -> tuple[SharedContact, ...]:
    contact = message.contact
    if contact is None:
        return ()
    first = _optional_text(contact.first_name, "contact.first_name")
    last = _optional_text(contact.last_name, "contact.last_name")
    phone = _optional_text(contact.phone_number, "contact.phone_number")
    vcard = _optional_text(contact.vcard, "contact.vcard") or ""
    name = " ".join(part for part in (first, last) if part) or phone or "Contact"
    emails = tuple(email.strip() for email in _VCARD_EMAIL.findall(vcard) if email.strip())
    return (SharedContact(name=name, phones=(phone,) if phone else (), emails=emails),)


def _contact_text(contact: SharedContact) -> str:
    details = ", ".join((*contact.phones, *contact.emails))
    return f"Contact: {contact.name} ({details})" if details else f"Contact: {contact.name}"


def _pressed_button_title(query: CallbackQuery, data: str) -> str | None:
    message = query.message
    if not isinstance(message, Message) or not isinstance(message.reply_markup, InlineKeyboardMarkup):
        return None
    for row in message.reply_markup.inline_keyboard:
        for button in row:
            if button.callback_data == data and isinstance(button.text, str) and button.text:
                return button.text
    return None


def _optional_text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPayload(f"Telegram {what} is not a string")
    return value or None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _dimension(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- outbound -----------------------------------------------------------------------------------


def _chat_id(recipient: Address) -> int:
    if recipient.kind != "telegram" or not _CHAT_ID.fullmatch(recipient.value):
        raise PermanentDeliveryError(
            f"{recipient.kind} address {recipient.value!r} is not a Telegram chat id",
            code="invalid_recipient",
        )
    return int(recipient.value)


def _keyboard(buttons: Sequence[Button]) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    for button in buttons:
        if len(button.id.encode()) > MAX_CALLBACK_DATA_BYTES:
            raise PermanentDeliveryError(
                f"button id {button.id!r} is longer than the {MAX_CALLBACK_DATA_BYTES} bytes "
                "Telegram allows as callback data",
                code="button_id_too_long",
            )
    # One button a row: titles stay readable on a phone.
    return InlineKeyboardMarkup([[InlineKeyboardButton(b.title, callback_data=b.id)] for b in buttons])


def _file_input(attachment: Attachment) -> tuple[str, bool]:
    """What PTB sends as the file (a file_id or an http(s) URL) and whether it is an image.

    Only these two shapes get through: given any string naming a local file, PTB would read it
    from disk and upload it.
    """
    url = attachment.url
    content_type = attachment.content_type
    if url.startswith(FILE_URL_PREFIX):
        file_input = url.removeprefix(FILE_URL_PREFIX)
        if not _FILE_ID.fullmatch(file_input):
            raise PermanentDeliveryError(f"{url!r} is not a Telegram file id", code="invalid_attachment")
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentDeliveryError(
                f"attachment {url!r} is neither an http(s) URL nor a Telegram file", code="invalid_attachment"
            )
        file_input = url
        if content_type is None:
            content_type, _ = mimetypes.guess_type(parts.path)
    return file_input, (content_type or "").lower().startswith("image/")


def _translate(e: TelegramError) -> ChannelError:
    # Order matters: BadRequest and TimedOut are NetworkErrors too.
    if isinstance(e, RetryAfter):
        return TransientDeliveryError(f"Telegram flood control: {e}", retry_after=_retry_after_seconds(e))
    if isinstance(e, InvalidToken):
        return ChannelAuthError(f"Telegram refused the bot token: {e}")
    if isinstance(e, Forbidden):
        if "blocked" in e.message.lower():
            return PermanentDeliveryError(
                f"The customer blocked the bot on Telegram; nothing reaches them until they unblock it ({e})",
                code="blocked",
            )
        return PermanentDeliveryError(
            f"Telegram does not let the bot write to this chat: {e}", code="forbidden"
        )
    if isinstance(e, ChatMigrated):
        return PermanentDeliveryError(
            f"The group became a supergroup with chat id {e.new_chat_id}", code="chat_migrated"
        )
    if isinstance(e, BadRequest):
        return PermanentDeliveryError(e.message, code="bad_request")
    if isinstance(e, NetworkError):  # TimedOut, connection errors, 5xx
        return TransientDeliveryError(f"Telegram Bot API unreachable or failing: {e}")
    return TransientDeliveryError(f"Telegram Bot API error: {e}")


def _retry_after_seconds(e: RetryAfter) -> float:
    # PTB warns on reading `retry_after` unless PTB_TIMEDELTA is set, and then returns a timedelta.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = e.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _redact_tokens_in_httpx_logs() -> None:
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactBotToken) for f in httpx_logger.filters):
        httpx_logger.addFilter(_RedactBotToken())


# --- helpers ------------------------------------------------------------------------------------
