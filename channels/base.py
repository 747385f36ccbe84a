"""The channel interface: normalised events in, outbound messages out, one small taxonomy of errors.

Every provider module implements `Channel`; raw provider payloads never leave `channels/`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Literal, Protocol, Self

from multidict import MultiDict, MultiDictProxy, MultiMapping

DeliveryState = Literal["queued", "sent", "delivered", "read", "failed"]
ConsentChange = Literal["opt_out", "opt_in"]


@dataclass(frozen=True, slots=True)
class Address:
    """Where a contact is reachable: `kind` is the identity kind (`phone`, `email`, …)."""

    kind: str
    value: str


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file on a message: `url` where it can be fetched, or the bytes in `data` until stored.

    Channels that receive files inline (email, chat uploads) set `data`; the gateway stores it in
    the media store (`inbox.media_fetch.store_inline_attachments`) and sets `url` before ingest.
    """

    url: str
    content_type: str | None = None
    filename: str | None = None
    size: int | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None

    def describe(self) -> str:
        """What a person reads for it: the place's name and address, else the coordinates."""
        place = ", ".join(part for part in (self.name, self.address) if part)
        return place or f"Location: {self.latitude}, {self.longitude}"


@dataclass(frozen=True, slots=True)
class SharedContact:
    """A contact card the customer shared (WhatsApp contacts, Telegram contact)."""

    name: str
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ButtonReply:
    """The customer pressed a button or picked a list row we sent: `id` is the payload we gave it."""

    id: str
    title: str


@dataclass(frozen=True, slots=True)
class CallEvent:
    """Something that happened on a phone call.

    `status` is the call's status (ringing, in-progress, completed, busy…); with `leg` set
    ("agent": ringing agents, "queue": waiting in a queue) it is what that attempt came to.
    """

    call_id: str
    status: str
    direction: str | None = None
    duration: int | None = None  # seconds, once the call (or leg) is over
    leg: str | None = None


@dataclass(frozen=True, slots=True)
class Recording:
    """A recording of a call (a voicemail): where to fetch it and how long it is."""

    recording_id: str
    url: str
    duration: int | None = None
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Voicemail:
    """A voicemail's transcription; `transcript` is None when transcribing failed."""

    transcription_id: str
    recording_id: str | None
    status: str
    transcript: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a customer sent, as every channel reports it.

    `text` is always set to something a person can read (a location's name, a button's title),
    so channels and screens that know nothing of the typed fields still show the message.
    """

    provider_message_id: str
    sender: Address
    recipient: Address | None
    text: str
    attachments: tuple[Attachment, ...] = ()
    sender_name: str | None = None
    # Set when the text is a carrier keyword (STOP, START…) that changes the contact's consent.
    consent_change: ConsentChange | None = None
    location: Location | None = None
    shared_contacts: tuple[SharedContact, ...] = ()
    button_reply: ButtonReply | None = None
    # Where the message belongs when a channel has threads (a Slack thread's root): one
    # conversation per thread instead of one per contact and inbox.
    thread_key: str | None = None
    # Provider message ids this message answers (email's In-Reply-To and References, nearest
    # first): it joins the conversation of the first one stored in the inbox, else `thread_key`'s.
    thread_refs: tuple[str, ...] = ()
    # A conversation the channel has proof this message belongs to (a signed reply-to address);
    # the pipeline still checks that it is in the inbox.
    conversation_id: int | None = None
    # Phone calls: an event of the call, its recording, the recording's transcription.
    call: CallEvent | None = None
    recording: Recording | None = None
    voicemail: Voicemail | None = None
    # The provider id of an earlier message this one belongs to (a call's later events belong to
    # the call): it joins that message's conversation whatever its status, without reopening it
    # or counting as the customer writing. Stored the usual way when that message is unknown.
    part_of: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """A provider's report on a message we sent."""

    provider_message_id: str
    status: DeliveryState
    error_code: str | None = None
    error_message: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


InboundEvent = InboundMessage | DeliveryStatus


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """What a provider sent, independent of the web framework.

    `url` is the URL as the provider called it (rebuilt from `PARLEY_PUBLIC_URL` behind a proxy);
    `route` is the suffix after `/webhooks/<inbox-id>` ("" for the main hook, "status" for
    delivery callbacks), so a channel can tell its callbacks apart.
    """

    method: str
    url: str
    route: str
    headers: Mapping[str, str]
    body: bytes
    form: MultiMapping[str] = field(default_factory=lambda: MultiDictProxy(MultiDict()))
    query: MultiMapping[str] = field(default_factory=lambda: MultiDictProxy(MultiDict()))


@dataclass(frozen=True, slots=True)
class WebhookReply:
    """The body a provider expects in the 2xx answer (Twilio wants TwiML, most want nothing)."""

    body: str = ""
    content_type: str = "text/plain"
    status: int = 200


@dataclass(frozen=True, slots=True)
class Button:
    id: str
    title: str


@dataclass(frozen=True, slots=True)
class Template:
    """A pre-approved message (WhatsApp): Twilio's Content SID or the Cloud API's template name."""

    name: str
    language: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    message_id: int
    recipient: Address
    text: str
    attachments: tuple[Attachment, ...] = ()
    status_callback_url: str | None = None
    # Rich content: a channel without `capabilities.buttons` renders them as a numbered list.
    buttons: tuple[Button, ...] = ()
    template: Template | None = None
    # The conversation's thread (as the channel reported it inbound), to reply inside it.
    thread_key: str | None = None
    # For channels that thread by reference (`Capabilities.threads_by_reference`, email): the
    # conversation, its subject, the customer's last message id and the ids before it, oldest first.
    conversation_id: int | None = None
    subject: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    # Email: the RFC 8058 one-click unsubscribe URL for the List-Unsubscribe headers.
    unsubscribe_url: str | None = None


@dataclass(frozen=True, slots=True)
class SendReceipt:
    provider_message_id: str
    status: DeliveryState = "sent"
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a channel can carry; richer content degrades to what is declared here."""

    media: bool = False
    buttons: bool = False
    max_text_length: int | None = None
    # Hard limits of the channel's buttons, checked by the API before anything is queued.
    max_text_with_buttons: int | None = None
    max_button_id_bytes: int | None = None
    templates: bool = False
    # WhatsApp's customer-service window: free-form replies only this long after the customer's
    # last message; outside it, only templates.
    reply_window: timedelta | None = None
    # Replies name the messages they answer (email): delivery fills in the outbound message's
    # subject, in_reply_to and references.
    threads_by_reference: bool = False
    # The channel sends files' bytes itself (email attaches them): delivery reads attachments
    # kept in the media store into `Attachment.data` instead of leaving the channel a URL.
    inline_attachments: bool = False
    # False for channels nothing can be sent on (a phone line): the API refuses replies up front.
    replies: bool = True


class ChannelError(Exception):
    """Base of every error a channel raises."""


class ConfigurationError(ChannelError):
    """An inbox's settings or secrets are missing or invalid for its channel."""


class SignatureError(ChannelError):
    """The webhook is unsigned, wrongly signed or stale: answer 403 and store nothing."""


class MalformedPayload(ChannelError):
    """The webhook is signed but cannot be understood: answer 400 and store nothing."""


class ChannelAuthError(ChannelError):
    """The provider refused our credentials: the inbox needs new ones."""


class TransientDeliveryError(ChannelError):
    """Try again later (429, 5xx, timeouts); `retry_after` is the provider's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(ChannelError):
    """The provider will never accept this message: mark it failed with `code` and the reason."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    """An inbound attachment's bytes, downloaded with the inbox's credentials."""

    data: bytes
    content_type: str | None = None
    filename: str | None = None


class WebhookContext(Protocol):
    """What the gateway offers a channel whose webhook answer depends on more than the request."""

    @property
    def stored_message_ids(self) -> Sequence[int]:
        """The messages this webhook stored (empty for duplicates and event-less requests)."""
        ...

    async def agents_available(self) -> bool:
        """Whether an agent of the inbox's tenant is online now."""
        ...


class Channel(ABC):
    """A provider adapter, built per inbox from its settings and decrypted secrets."""

    name: ClassVar[str]
    identity_kind: ClassVar[str]
    # What consent (opt-in/opt-out) is recorded against: "sms", "whatsapp", "email"…
    consent_channel: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    # The largest webhook body the channel takes, if more than the gateway's default (email
    # providers post whole messages with their attachments).
    max_webhook_bytes: ClassVar[int | None] = None
    # Inbound attachment URLs only the inbox's credentials can read, or that the provider deletes
    # after a while: the gateway copies them into the media store (`fetch_attachment`).
    fetches_media: ClassVar[bool] = False
    # The language of a configured template that names none (WhatsApp Cloud: en_US).
    default_template_language: ClassVar[str | None] = None

    @classmethod
    @abstractmethod
    def validate_config(
        cls, settings: Mapping[str, Any], secrets: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Check and clean an inbox's settings and secrets; raise `ConfigurationError` if unusable."""

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> Self:
        """Build the adapter for one inbox."""

    @abstractmethod
    def verify(self, request: WebhookRequest) -> None:
        """Raise `SignatureError` unless the request provably comes from the provider."""

    @abstractmethod
    def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """Turn a verified request into normalised events; raise `MalformedPayload` if it can't."""

    def acknowledge(self, request: WebhookRequest, events: Sequence[InboundEvent]) -> WebhookReply:
        """The 2xx answer once the events are stored."""
        return WebhookReply()

    async def respond(
        self, request: WebhookRequest, events: Sequence[InboundEvent], context: WebhookContext
    ) -> WebhookReply:
        """The 2xx answer once the events are stored; `acknowledge` unless the answer depends on state."""
        # A phone call, for one, is put through to an agent only if one is online.
        return self.acknowledge(request, events)

    def handshake(self, request: WebhookRequest) -> WebhookReply | None:
        """Answer a provider's GET verification of the webhook URL (Meta's `hub.challenge`).

        None means the channel has no such handshake (the gateway answers 405); raise
        `SignatureError` when the request does not prove it knows the inbox's verify token.
        """
        return None

    @abstractmethod
    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Send one message; translate provider failures into the error taxonomy above."""

    def other_recipients(self, request: WebhookRequest) -> frozenset[str]:
        """Sibling inboxes (by `sibling_key`) a verified request also carries events for.

        Meta posts every phone number of an app to the app's one callback URL: the gateway hands
        those events to the inbox of the number they concern, if the tenant has one.
        """
        return frozenset()

    @classmethod
    def sibling_key(cls, settings: Mapping[str, Any]) -> str | None:
        """What `other_recipients` calls an inbox with these settings (WhatsApp's phone_number_id)."""
        return None

    async def fetch_attachment(self, attachment: Attachment) -> FetchedMedia:
        """Download an inbound attachment this channel reported (only if `fetches_media`).

        Raise `TransientDeliveryError` to be retried later and `PermanentDeliveryError` when the
        file is gone or refused (too large, unknown).
        """
        raise PermanentDeliveryError(f"{self.name} does not fetch attachments", code="not_fetchable")

    async def close(self) -> None:  # noqa: B027 - optional hook, most adapters hold nothing
        """Release connections held by the adapter."""

    @classmethod
    def template_name_problem(cls, name: str) -> str | None:
        """Why `name` cannot name one of this channel's templates, or None if it can."""
        return None

    @classmethod
    def validate_templates(cls, value: Any) -> list[dict[str, Any]]:
        """Check an inbox's `templates` setting: the approved templates agents are offered.

        Each is `{name, language, variables: [placeholder names], body: preview}`; the list is
        what the composer shows when the reply window is closed. `ConfigurationError` if unusable.
        """
        if not cls.capabilities.templates:
            raise ConfigurationError(f"templates: {cls.name} has no message templates")
        return parse_templates(
            value, cls.template_name_problem, default_language=cls.default_template_language
        )


MAX_TEMPLATES = 200
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*")


def parse_templates(
    value: Any, name_problem: Callable[[str], str | None], *, default_language: str | None
) -> list[dict[str, Any]]:
    """An inbox's `templates` setting, checked leaf by leaf (see `Channel.validate_templates`)."""
    if not isinstance(value, list):
        raise ConfigurationError("templates must be a list of {name, language, variables, body}")
    if len(value) > MAX_TEMPLATES:
        raise ConfigurationError(f"templates: at most {MAX_TEMPLATES}")
    cleaned: list[dict[str, Any]] = []
    seen: set[tuple[str, str | None]] = set()
    for i, item in enumerate(value):
        where = f"templates.{i}"
        if not isinstance(item, Mapping):
            raise ConfigurationError(f"{where} must be an object")
        unknown = set(item) - {"name", "language", "variables", "body"}
        if unknown:
            raise ConfigurationError(f"{where}: unknown keys {sorted(unknown)}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 512:
            raise ConfigurationError(f"{where}.name is required (a string of at most 512 characters)")
        name = name.strip()
        problem = name_problem(name)
        if problem:
            raise ConfigurationError(f"{where}.name: {problem}")
        language = item.get("language", default_language)
        if language is not None and (not isinstance(language, str) or not _LANGUAGE.fullmatch(language)):
            raise ConfigurationError(f"{where}.language must be a language code such as en_US")
        variables = item.get("variables", [])
        if not isinstance(variables, list) or not all(
            isinstance(v, str) and 0 < len(v) <= 20 for v in variables
        ):
            raise ConfigurationError(
                f"{where}.variables must be a list of placeholder names, e.g. ['1', '2']"
            )
        if len(set(variables)) != len(variables) or len(variables) > 50:
            raise ConfigurationError(f"{where}.variables must be at most 50 distinct names")
        body = item.get("body", "")
        if not isinstance(body, str) or len(body) > 1024:
            raise ConfigurationError(f"{where}.body must be the template's text, at most 1024 characters")
        if (name, language) in seen:
            raise ConfigurationError(f"{where}: template {name!r} ({language}) is listed twice")
        seen.add((name, language))
        cleaned.append({"name": name, "language": language, "variables": list(variables), "body": body})
    return cleaned
