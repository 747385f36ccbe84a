"""Twilio Programmable Messaging (SMS/MMS), and Twilio-compatible providers through `api_base_url`.

`TwilioSms` is also the base of the other channels Twilio carries over the same Messages API
(`channels.twilio_whatsapp`): they share its signature check, settings, client and error
translation, and bring their own parsers (`_parsers`) and message parameters (`_message_params`).
"""

from __future__ import annotations

import base64
import contextvars
import hmac
import logging
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import phonenumbers
from multidict import MultiMapping
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels.base import (
    Address,
    Attachment,
    Capabilities,
    Channel,
    ChannelAuthError,
    ChannelError,
    ConfigurationError,
    ConsentChange,
    DeliveryState,
    DeliveryStatus,
    FetchedMedia,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    SendReceipt,
    SignatureError,
    TransientDeliveryError,
    WebhookReply,
    WebhookRequest,
)
from channels.common import download, header, optional_str, required_str, retry_after_seconds

logger = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://api.twilio.com"
DEFAULT_TIMEOUT = 10.0
# Twilio accepts inbound MMS up to 5 MB and WhatsApp media up to 16 MB (documents 100 MB).
MAX_MEDIA_BYTES = 100 * 1024 * 1024
SIGNATURE_HEADER = "X-Twilio-Signature"

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
# Only strings made of these are treated as phone numbers: phonenumbers would otherwise read
# alphanumeric sender IDs as vanity numbers (letters mapped to keypad digits).
_PHONE_CHARS = re.compile(r"\+?[0-9 ().\-]+")

# Twilio's default opt-out / opt-in keywords; Twilio matches the whole message, ignoring case and
# surrounding whitespace or punctuation. HELP/INFO do not change consent.
_OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
_OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})
_KEYWORD_STRIP = string.whitespace + string.punctuation

_STATUSES: Mapping[str, DeliveryState] = {
    "accepted": "queued",
    "scheduled": "queued",
    "queued": "queued",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}

_ERROR_MESSAGES: Mapping[str, str] = {
    "21211": "Invalid 'To' phone number",
    "21408": "Permission to send an SMS to this region has not been enabled",
    "21610": "Recipient has unsubscribed (replied STOP)",
    "21614": "'To' number is not a valid mobile number",
    "30001": "Queue overflow",
    "30002": "Account suspended",
    "30003": "Unreachable destination handset",
    "30004": "Message blocked",
    "30005": "Unknown destination handset",
    "30006": "Landline or unreachable carrier",
    "30007": "Message filtered (carrier violation)",
    "30008": "Unknown error",
}

# A webhook route's parser: the form and the inbox's default region in, one event out.
Parser = Callable[[MultiMapping[str], str], InboundEvent]

_EMPTY_TWIML = WebhookReply(
    body='<?xml version="1.0" encoding="UTF-8"?><Response></Response>', content_type="text/xml"
)

# Headers of the last Twilio API response seen in the current task: TwilioRestException does not
# carry them, and Retry-After lives there. A ContextVar keeps concurrent sends on one client apart.
_last_response_headers: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "twilio_last_response_headers", default=None
)


class _HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The SDK's aiohttp client, made to honour its timeout and to keep response headers.

    The stock client forwards the per-call `timeout` (always None from the generated resources) to
    aiohttp, where `timeout=None` means no timeout at all: the client-wide timeout is ignored.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout)

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        total = timeout if timeout is not None else self.timeout
        headers = dict(headers or {})
        if auth is not None:
            # Built by hand: aiohttp 3.14 deprecates `auth=BasicAuth(...)`, and encode_basic_auth()
            # does not exist before 3.14.
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {credentials}"
        async with self.session.request(
            method.upper(),
            url,
            params=params,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=total),
            allow_redirects=allow_redirects,
        ) as response:
            text = await response.text()
            _last_response_headers.set(response.headers)
            return Response(response.status, text, response.headers)


class TwilioSms(Channel):
    """SMS and MMS through Twilio's Messages API; inbound and status callbacks signed with the auth token."""

    name = "twilio_sms"
    identity_kind = "phone"
    consent_channel = "sms"
    capabilities = Capabilities(media=True, max_text_length=1600)
    # Twilio deletes media on request or with the message, and can require auth to read it.
    fetches_media = True

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        phone_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_base_url: str = DEFAULT_API_BASE_URL,
        default_region: str = "US",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.account_sid = account_sid
        self.phone_number = phone_number
        self.messaging_service_sid = messaging_service_sid
        self.api_base_url = api_base_url
        self.default_region = default_region
        self.timeout = timeout
        self._auth_token = auth_token
        self._validator = RequestValidator(auth_token)
        self._http: _HttpClient | None = None
        self._client: Any = None

    @classmethod
    def validate_config(
        cls, settings: Mapping[str, Any], secrets: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Check and clean an inbox's Twilio settings and auth token."""
        account_sid = required_str(settings, "account_sid")
        if not _ACCOUNT_SID.fullmatch(account_sid):
            raise ConfigurationError("account_sid must be 'AC' followed by 32 hex digits")

        default_region = optional_str(settings, "default_region") or "US"
        default_region = default_region.upper()
        if default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigurationError(f"default_region {default_region!r} is not a known ISO country code")

        cleaned: dict[str, Any] = {"account_sid": account_sid, "default_region": default_region}

        phone_number = optional_str(settings, "phone_number")
        if phone_number:
            e164 = normalise_phone(phone_number, default_region)
            if e164 is None:
                raise ConfigurationError(f"phone_number {phone_number!r} is not a valid phone number")
            cleaned["phone_number"] = e164
        messaging_service_sid = optional_str(settings, "messaging_service_sid")
        if messaging_service_sid:
            if not _MESSAGING_SERVICE_SID.fullmatch(messaging_service_sid):
                raise ConfigurationError("messaging_service_sid must be 'MG' followed by 32 hex digits")
            cleaned["messaging_service_sid"] = messaging_service_sid
        if not phone_number and not messaging_service_sid:
            raise ConfigurationError("one of phone_number or messaging_service_sid is required")

        cleaned["api_base_url"] = api_base_url_setting(settings)

        timeout = settings.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
            raise ConfigurationError("timeout must be a number of seconds between 0 and 300")
        cleaned["timeout"] = float(timeout)

        auth_token = secrets.get("auth_token")
        if not isinstance(auth_token, str) or not auth_token.strip():
            raise ConfigurationError("auth_token is required")
        return cleaned, {"auth_token": auth_token.strip()}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> Self:
        """Build the adapter for one inbox."""
        cleaned, cleaned_secrets = cls.validate_config(settings, secrets)
        return cls(auth_token=cleaned_secrets["auth_token"], **cleaned)

    def verify(self, request: WebhookRequest) -> None:
        """Check `X-Twilio-Signature` over the public URL and the form parameters."""
        verify_signature(self._validator, request)

    def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """Turn an incoming-message webhook or a status callback into one normalised event."""
        parser = self._parsers().get(request.route)
        if parser is None:
            raise MalformedPayload(f"unknown Twilio webhook route {request.route!r}")
        return [parser(request.form, self.default_region)]

    def acknowledge(self, request: WebhookRequest, events: Sequence[InboundEvent]) -> WebhookReply:
        """Empty TwiML: store the message, send no automatic reply."""
        return _EMPTY_TWIML

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Create a Message resource; translate Twilio and network failures into the channel errors."""
        params = self._message_params(message)
        client = self._get_client()
        token = _last_response_headers.set(None)
        try:
            resource = await client.messages.create_async(**params)
        except (TwilioRestException, TwilioServiceException) as e:
            raise self._delivery_error(e, _last_response_headers.get()) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            # asyncio.TimeoutError is TimeoutError since 3.11.
            raise TransientDeliveryError(f"Twilio API unreachable: {e!r}") from e
        finally:
            _last_response_headers.reset(token)

        if not resource.sid:
            # Retrying could send it twice; better to fail it visibly.
            raise PermanentDeliveryError("Twilio answered without a message sid")
        twilio_status = resource.status or ""
        extra = {"twilio_status": twilio_status}
        if resource.num_segments is not None:
            extra["num_segments"] = resource.num_segments
        return SendReceipt(
            provider_message_id=resource.sid,
            status=_STATUSES.get(twilio_status, "sent"),
            extra=extra,
        )

    def _parsers(self) -> Mapping[str, Parser]:
        """The webhook parsers by route."""
        return _PARSERS

    def _message_params(self, message: OutboundMessage) -> dict[str, Any]:
        """The keyword arguments of `messages.create` for `message`."""
        params: dict[str, Any] = {"to": message.recipient.value}
        if self.phone_number:
            params["from_"] = self.phone_number
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        if message.text:
            params["body"] = message.text
        if message.attachments:
            params["media_url"] = [a.url for a in message.attachments]
        if message.status_callback_url:
            params["status_callback"] = message.status_callback_url
        return params

    def _delivery_error(
        self, e: TwilioRestException | TwilioServiceException, headers: Mapping[str, str] | None
    ) -> ChannelError:
        """The channel error for a failed create call."""
        return translate_error(e, headers)

    async def fetch_attachment(self, attachment: Attachment) -> FetchedMedia:
        """An MMS/WhatsApp media file by its MediaUrl, read with the account's credentials."""
        return await fetch_media(
            attachment,
            api_base_url=self.api_base_url,
            account_sid=self.account_sid,
            auth_token=self._auth_token,
            timeout=self.timeout * 6,
        )

    async def close(self) -> None:
        """Close the HTTP session, if a send opened one."""
        if self._http is not None:
            http, self._http, self._client = self._http, None, None
            await http.close()

    def _get_client(self) -> Any:
        # Built on first send: the SDK's async client opens an aiohttp ClientSession, which needs
        # the running loop.
        if self._client is None:
            self._http = _HttpClient(timeout=self.timeout)
            client = Client(self.account_sid, self._auth_token, http_client=self._http)
            # Client reads TWILIO_REGION / TWILIO_EDGE from the environment and would then rewrite
            # the host of every URL (api.<edge>.<region>.twilio.com); the base URL must stay as set.
            client.region = None
            client.edge = None
            client.api.base_url = self.api_base_url
            self._client = client
        return self._client


def _parse_message(form: MultiMapping[str], default_region: str) -> InboundMessage:
    sender = form.get("From", "").strip()
    if not sender:
        raise MalformedPayload("Twilio message without From")
    sid = message_sid(form)
    consumed = {"From", "To", "Body", "MessageSid", "SmsMessageSid", "SmsSid", "NumMedia"}
    attachments = media_attachments(form, consumed)

    recipient = form.get("To", "").strip()
    text = form.get("Body", "")
    return InboundMessage(
        provider_message_id=sid,
        sender=Address("phone", normalise_phone(sender, default_region) or sender),
        recipient=Address("phone", normalise_phone(recipient, default_region) or recipient)
        if recipient
        else None,
        text=text,
        attachments=attachments,
        consent_change=_consent_change(text),
        extra=leftovers(form, consumed),
    )


def _parse_status(form: MultiMapping[str], default_region: str) -> DeliveryStatus:
    return delivery_status(form, _ERROR_MESSAGES)


_PARSERS: Mapping[str, Parser] = {
    "": _parse_message,
    "status": _parse_status,
}


def verify_signature(validator: RequestValidator, request: WebhookRequest) -> None:
    """Raise `SignatureError` unless `X-Twilio-Signature` signs the public URL and the form."""
    signature = header(request.headers, SIGNATURE_HEADER)
    if not signature:
        raise SignatureError("missing X-Twilio-Signature header")
    # The MultiDict goes in as is: the validator reads repeated keys with getall(), and is
    # about twice as slow when handed a plain dict. The URL exactly as called is tried first
    # (one HMAC); `validate` then tries it with and without the default port, which Twilio
    # may have signed instead (two more).
    expected = validator.compute_signature(request.url, request.form)
    if hmac.compare_digest(expected.encode(), signature.encode()):
        return
    if not validator.validate(request.url, request.form, signature):
        raise SignatureError("X-Twilio-Signature does not match")


def message_sid(form: MultiMapping[str]) -> str:
    """The id of an incoming message, from whichever of Twilio's names for it is present."""
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid")
    if not sid:
        raise MalformedPayload("Twilio message without MessageSid")
    return sid


def media_attachments(form: MultiMapping[str], consumed: set[str]) -> tuple[Attachment, ...]:
    """The `NumMedia` attachments of an incoming message, in order; adds their keys to `consumed`."""
    try:
        num_media = int(form.get("NumMedia", "0") or "0")
    except ValueError:
        raise MalformedPayload(f"NumMedia is not an integer: {form.get('NumMedia')!r}") from None
    if num_media < 0:
        raise MalformedPayload(f"NumMedia is negative: {num_media}")
    attachments = []
    for i in range(num_media):
        url = form.get(f"MediaUrl{i}")
        if not url:
            raise MalformedPayload(f"NumMedia is {num_media} but MediaUrl{i} is missing")
        attachments.append(Attachment(url=url, content_type=form.get(f"MediaContentType{i}") or None))
        consumed.update((f"MediaUrl{i}", f"MediaContentType{i}"))
    return tuple(attachments)


def api_base_url_setting(settings: Mapping[str, Any]) -> str:
    """The Twilio API's origin: Twilio's own, or a compatible provider's (or a test fake)."""
    api_base_url = optional_str(settings, "api_base_url") or DEFAULT_API_BASE_URL
    parts = urlsplit(api_base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(f"api_base_url {api_base_url!r} must be an http(s) URL without query")
    return api_base_url.rstrip("/")


async def fetch_media(
    attachment: Attachment, *, api_base_url: str, account_sid: str, auth_token: str, timeout: float
) -> FetchedMedia:
    """A media file or recording on the account's API, read with its credentials.

    Credentials go to the Twilio API only; its redirect to storage goes without them.
    """
    url, api = urlsplit(attachment.url), urlsplit(api_base_url)
    ours = (url.scheme, url.netloc) == (api.scheme, api.netloc)
    if not ours or f"/Accounts/{account_sid}/" not in url.path:
        raise PermanentDeliveryError(f"{attachment.url!r} is not this account's media", code="not_fetchable")
    credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        fetched = await download(
            session,
            attachment.url,
            max_bytes=MAX_MEDIA_BYTES,
            what=f"Twilio media {url.path.rsplit('/', 1)[-1]}",
            headers={"Authorization": f"Basic {credentials}"},
        )
    return FetchedMedia(fetched.data, attachment.content_type or fetched.content_type)


def delivery_status(form: MultiMapping[str], error_messages: Mapping[str, str]) -> DeliveryStatus:
    """A status callback; `error_messages` gives the reason for the channel's known error codes."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    if not sid:
        raise MalformedPayload("Twilio status callback without MessageSid")
    twilio_status = form.get("MessageStatus") or form.get("SmsStatus")
    if not twilio_status:
        raise MalformedPayload("Twilio status callback without MessageStatus")
    status = _STATUSES.get(twilio_status.strip().lower())
    if status is None:
        raise MalformedPayload(f"unknown Twilio message status {twilio_status!r}")

    error_code = (form.get("ErrorCode") or "").strip() or None
    error_message = None
    if error_code is not None:
        error_message = (
            error_messages.get(error_code) or form.get("ErrorMessage") or f"Twilio error {error_code}"
        )
    consumed = {"MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "ErrorCode", "ErrorMessage"}
    return DeliveryStatus(
        provider_message_id=sid,
        status=status,
        error_code=error_code,
        error_message=error_message,
        extra=leftovers(form, consumed),
    )


def _consent_change(text: str) -> ConsentChange | None:
    keyword = text.strip(_KEYWORD_STRIP).upper()
    if keyword in _OPT_OUT_KEYWORDS:
        return "opt_out"
    if keyword in _OPT_IN_KEYWORDS:
        return "opt_in"
    return None


def leftovers(form: MultiMapping[str], consumed: set[str]) -> dict[str, str]:
    """The form's fields not in `consumed` (the first of repeated keys), for `extra`."""
    extra: dict[str, str] = {}
    for key, value in form.items():
        if key not in consumed and key not in extra:
            extra[key] = value
    return extra


def normalise_phone(value: str, default_region: str) -> str | None:
    """E.164 for anything that is a possible phone number; None for short codes, alphanumerics…"""
    value = value.strip()
    if not _PHONE_CHARS.fullmatch(value):
        return None
    try:
        number = phonenumbers.parse(value, None if value.startswith("+") else default_region)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def translate_error(
    e: TwilioRestException | TwilioServiceException, headers: Mapping[str, str] | None
) -> ChannelError:
    """Twilio's refusal as a channel error: 429/5xx transient, 401/403 auth, anything else permanent."""
    status = int(e.status)
    code = str(e.code) if e.code is not None else None
    reason = e.msg if isinstance(e, TwilioRestException) else (e.detail or e.title)
    if status == 429 or status >= 500:
        retry_after = retry_after_seconds(headers.get("Retry-After") if headers is not None else None)
        return TransientDeliveryError(f"Twilio answered {status}: {reason}", retry_after=retry_after)
    if status in (401, 403) or code == "20003":
        return ChannelAuthError(f"Twilio refused the credentials ({status}): {reason}")
    return PermanentDeliveryError(str(reason), code=code)
