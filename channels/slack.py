"""Slack through the Events API: signed events in, replies posted with slack_sdk's AsyncWebClient.

An inbox is one Slack app installed in one workspace. Slack posts the events the app subscribes to
(`message.channels`, `message.im`…) to the inbox's webhook URL, and button clicks to
`<webhook URL>/interactivity` (the app's Interactivity Request URL). A thread is a conversation: a
top-level message starts a thread rooted at its own `ts`, replies in it carry that `thread_ts`, and
Parley answers inside the thread.

Slack wants a 2xx within 3 seconds, else it retries (three times, with `X-Slack-Retry-Num`), and
it turns off the subscription of an app that keeps failing. So the gateway only verifies, parses
and stores the event in one short transaction before answering; replies and anything slow happen
later through the outbox. A retry carries the same `event_id`, which the pipeline stores once.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
from multidict import MultiMapping
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

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
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    SendReceipt,
    SignatureError,
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
)

logger = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://slack.com/api/"
DEFAULT_TIMEOUT = 10.0
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
SIGNATURE_HEADER = "X-Slack-Signature"
RETRY_NUM_HEADER = "X-Slack-Retry-Num"
RETRY_REASON_HEADER = "X-Slack-Retry-Reason"
# Slack's own advice: a signed request older (or newer) than this may be a replay.
MAX_REQUEST_AGE_SECONDS = 5 * 60
INTERACTIVITY_ROUTE = "interactivity"
# Our buttons' action ids; their `value` is the Button's id.
BUTTON_ACTION_PREFIX = "parley_"

# Slack's limits (chat.postMessage and Block Kit references).
MAX_TEXT_LENGTH = 40000
FILE_HOST = "files.slack.com"
MAX_FILE_BYTES = 100 * 1024 * 1024
MAX_SECTION_TEXT_LENGTH = 3000
MAX_BUTTONS_PER_BLOCK = 25
MAX_BUTTON_TEXT_LENGTH = 75
MAX_BUTTON_VALUE_LENGTH = 2000
MAX_BLOCKS = 50

_BOT_TOKEN = re.compile(r"xoxb-[A-Za-z0-9-]+")
# As Slack shows it under Basic Information > App Credentials.
_SIGNING_SECRET = re.compile(r"[0-9a-fA-F]{32}")
_TEAM_ID = re.compile(r"[TE][A-Z0-9]{2,39}")
# Team, user, channel and bot ids: they go into addresses, thread keys and API calls.
_SLACK_ID = re.compile(r"[A-Z0-9]{2,40}")
_TS = re.compile(r"[0-9]{1,16}\.[0-9]{1,16}")
_UNIX_TIME = re.compile(r"[0-9]{1,12}")

# Subtypes that are still a person writing: a file shared with the message, a thread reply also
# sent to the channel, a /me message. Every other subtype (edits, deletions, joins, topic
# changes…) is Slack reporting on the channel, not the customer writing.
_CUSTOMER_SUBTYPES = frozenset({"file_share", "thread_broadcast", "me_message"})
# Known events Parley deliberately leaves alone. An inbox subscribes to the `message.*` events, so
# an `app_mention` duplicates the `message` event Slack also sends for that message, under another
# event_id: storing both would show the message twice.
_DUPLICATE_EVENTS = frozenset({"app_mention"})

# Slack error codes (the `error` of an `"ok": false` answer) by what they mean for a retry.
_AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "not_allowed_token_type",
        "no_permission",
    }
)
_TRANSIENT_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})
_ERROR_REASONS: Mapping[str, str] = {
    "channel_not_found": "The Slack channel does not exist, or it is private and the app was not added to it",
    "not_in_channel": "The app is not a member of the Slack channel: add it to the channel (/invite)",
    "is_archived": "The Slack channel is archived",
    "msg_too_long": "The message is too long for Slack",
    "no_text": "The message has no text",
    "invalid_blocks": "Slack refused the message's blocks (buttons)",
    "restricted_action": "The workspace does not let the app post in this channel",
    "user_not_found": "The Slack user does not exist in the workspace",
    "user_disabled": "The Slack user's account is deactivated",
    "cannot_dm_bot": "The recipient is a bot user, which cannot be messaged directly",
}

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_EMPTY_REPLY = WebhookReply()


class Slack(Channel):
    """A Slack app in one workspace: Events API webhooks in, Web API (chat.postMessage) out."""

    name = "slack"
    identity_kind = "slack"
    consent_channel = "slack"
    fetches_media = True
    capabilities = Capabilities(media=False, buttons=True, max_text_length=MAX_TEXT_LENGTH)

    def __init__(
        self,
        *,
        bot_token: str,
        signing_secret: str,
        team_id: str | None = None,
        api_base_url: str = DEFAULT_API_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.team_id = team_id
        self.api_base_url = api_base_url
        self.timeout = timeout
        self._bot_token = bot_token
        self._verifier = SignatureVerifier(signing_secret)
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None

    @classmethod
    def validate_config(
        cls, settings: Mapping[str, Any], secrets: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Check and clean an inbox's workspace, Web API settings, bot token and signing secret."""
        cleaned: dict[str, Any] = {}
        team_id = optional_str(settings, "team_id")
        if team_id is not None:
            if not _TEAM_ID.fullmatch(team_id):
                raise ConfigurationError(f"team_id {team_id!r} must be a Slack workspace id like 'T061EG9R6'")
            cleaned["team_id"] = team_id

        api_base_url = optional_str(settings, "api_base_url") or DEFAULT_API_BASE_URL
        parts = urlsplit(api_base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigurationError(f"api_base_url {api_base_url!r} must be an http(s) URL without query")
        # The SDK appends method names to it: "https://slack.com/api/" + "chat.postMessage".
        cleaned["api_base_url"] = api_base_url.rstrip("/") + "/"

        timeout = settings.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
            raise ConfigurationError("timeout must be a number of seconds between 0 and 300")
        cleaned["timeout"] = float(timeout)

        bot_token = secrets.get("bot_token")
        if not isinstance(bot_token, str) or not bot_token.strip():
            raise ConfigurationError(
                "bot_token is required (the Bot User OAuth Token, xoxb-…, "
                "from the app's OAuth & Permissions page)"
            )
        bot_token = bot_token.strip()
        if not _BOT_TOKEN.fullmatch(bot_token):
            raise ConfigurationError(
                "bot_token must be a Bot User OAuth Token starting with 'xoxb-' "
                "(not a user or app-level token)"
            )

        signing_secret = secrets.get("signing_secret")
        if not isinstance(signing_secret, str) or not signing_secret.strip():
            raise ConfigurationError(
                "signing_secret is required (the Signing Secret from the app's Basic Information page)"
            )
        signing_secret = signing_secret.strip()
        if not _SIGNING_SECRET.fullmatch(signing_secret):
            raise ConfigurationError(
                "signing_secret must be the app's 32-hex-digit Signing Secret "
                "(not the deprecated verification token)"
            )
        return cleaned, {"bot_token": bot_token, "signing_secret": signing_secret}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> Self:
        """Build the adapter for one inbox."""
        cleaned, cleaned_secrets = cls.validate_config(settings, secrets)
        return cls(
            bot_token=cleaned_secrets["bot_token"],
            signing_secret=cleaned_secrets["signing_secret"],
            **cleaned,
        )

    def verify(self, request: WebhookRequest) -> None:
        """Check Slack's v0 signature, an HMAC-SHA256 of `v0:<timestamp>:<raw body>`, and its age."""
        timestamp = header(request.headers, TIMESTAMP_HEADER)
        signature = header(request.headers, SIGNATURE_HEADER)
        if not timestamp:
            raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
        if not signature:
            raise SignatureError(f"missing {SIGNATURE_HEADER} header")
        if not _UNIX_TIME.fullmatch(timestamp):
            raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix time")
        # Checked here as well as in the SDK (which only answers False) to say why it is refused.
        age = time.time() - int(timestamp)
        if abs(age) > MAX_REQUEST_AGE_SECONDS:
            raise SignatureError(
                f"stale request: {TIMESTAMP_HEADER} is {abs(age):.0f} s away from now, more than 5 minutes"
            )
        # hmac.compare_digest raises TypeError for non-ASCII strings; a real signature is hex.
        if not signature.isascii():
            raise SignatureError(f"{SIGNATURE_HEADER} does not match the body")
        try:
            valid = self._verifier.is_valid(request.body, timestamp, signature)
        except UnicodeDecodeError:
            valid = False  # the SDK signs the body as UTF-8 text, and Slack sends nothing else
        if not valid:
            raise SignatureError(f"{SIGNATURE_HEADER} does not match the body")

    def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """Turn an Events API callback or an interactivity payload into at most one message."""
        if request.route == "":
            message = self._parse_events(request.body, request.headers)
        elif request.route == INTERACTIVITY_ROUTE:
            message = self._parse_interaction(request.form)
        else:
            raise MalformedPayload(
                f"unknown Slack webhook route {request.route!r}: events go to the webhook URL, "
                f"button clicks to its /{INTERACTIVITY_ROUTE}"
            )
        return [message] if message is not None else []

    def acknowledge(self, request: WebhookRequest, events: Sequence[InboundEvent]) -> WebhookReply:
        """The challenge for Slack's check of a new Request URL; otherwise an empty 200."""
        # Slack counts an answer later than 3 seconds as a failure and retries: by now the event is
        # stored and everything else (replies, bots, routing) runs later from the outbox.
        challenge = _challenge(request.body) if request.route == "" else None
        if challenge is None:
            return _EMPTY_REPLY
        return WebhookReply(body=json.dumps({"challenge": challenge}), content_type="application/json")

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Post into the conversation's thread, or to the customer's DM; translate Slack's errors."""
        text = _with_links(message.text, message.attachments)
        if not text.strip():
            raise PermanentDeliveryError("nothing to send: the message has no text", code="no_text")
        if len(text) > MAX_TEXT_LENGTH:
            raise PermanentDeliveryError(
                f"Slack carries at most {MAX_TEXT_LENGTH} characters ({len(text)} given)", code="msg_too_long"
            )
        blocks = _blocks(text, message.buttons) if message.buttons else None
        thread_ts: str | None
        if message.thread_key is not None:
            channel, thread_ts = _thread(message.thread_key)
            dm_user = None
        else:
            # A conversation Parley started has no thread to reply in: it goes as a direct message.
            channel, thread_ts, dm_user = "", None, _user_id(message.recipient)
        client = self._get_client()
        try:
            if dm_user is not None:
                channel = await _open_dm(client, dm_user)
            answer = await client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, text=_escape(text), blocks=blocks
            )
        except SlackApiError as e:
            raise _translate(e) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            # asyncio.TimeoutError is TimeoutError since 3.11.
            raise TransientDeliveryError(f"Slack Web API unreachable: {e!r}") from e

        posted_in, ts = _answer_str(answer.data, "channel"), _answer_str(answer.data, "ts")
        if posted_in is None or ts is None:
            # It was probably posted: retrying could post it twice, so fail it visibly instead.
            raise PermanentDeliveryError("Slack answered ok without the message's channel and ts")
        return SendReceipt(
            provider_message_id=f"{posted_in}:{ts}",
            status="sent",  # Slack reports neither delivery nor reads to apps
            extra={"channel": posted_in, "ts": ts, "thread_key": f"{posted_in}:{thread_ts or ts}"},
        )

    async def close(self) -> None:
        """Close the HTTP session, if a send opened one."""
        if self._session is not None:
            session, self._session, self._client = self._session, None, None
            await session.close()

    async def fetch_attachment(self, attachment: Attachment) -> FetchedMedia:
        """A shared file by its `url_private`, which wants the bot token."""
        url = urlsplit(attachment.url)
        api = urlsplit(self.api_base_url)
        # The token goes to Slack's file host (or the configured API host) only, never to
        # whatever URL an event names.
        if not ((url.scheme, url.hostname) == ("https", FILE_HOST) or url.netloc == api.netloc):
            raise PermanentDeliveryError(f"{attachment.url!r} is not a Slack file URL", code="not_fetchable")
        self._get_client()
        assert self._session is not None
        fetched = await download(
            self._session,
            attachment.url,
            max_bytes=MAX_FILE_BYTES,
            what=f"Slack file {attachment.filename or attachment.url}",
            headers={"Authorization": f"Bearer {self._bot_token}"},
        )
        # Slack answers a request it does not accept with its sign-in page, status 200.
        if fetched.content_type == "text/html" and not (attachment.content_type or "").startswith(
            "text/html"
        ):
            raise ChannelAuthError("Slack answered the file download with its sign-in page: check files:read")
        return FetchedMedia(fetched.data, attachment.content_type or fetched.content_type)

    def _get_client(self) -> AsyncWebClient:
        # Without a session of its own, AsyncWebClient opens and closes one per call; ours keeps
        # connections alive, carries the timeout, and is what `close` closes. Opened on first use:
        # a ClientSession needs the running loop.
        if self._client is None or self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._client = AsyncWebClient(
                token=self._bot_token,
                base_url=self.api_base_url,
                timeout=math.ceil(self.timeout),
                session=self._session,
                # Retries are the outbox's: it honours Retry-After and counts attempts, and a
                # chat.postMessage retried blindly after a dropped connection may post twice.
                retry_handlers=[],
            )
        return self._client

    # --- inbound --------------------------------------------------------------------------------

    def _parse_events(self, body: bytes, headers: Mapping[str, str]) -> InboundMessage | None:
        envelope = _json_object(body, "the Events API body")
        kind = json_str(envelope, "type", "the envelope")
        if kind == "url_verification":
            json_str(envelope, "challenge", "url_verification")  # answered by `acknowledge`
            return None
        if kind == "app_rate_limited":
            logger.warning(
                "Slack dropped events for team %s: the app exceeded 30,000 events an hour",
                envelope.get("team_id"),
            )
            return None
        if kind != "event_callback":
            logger.info("Slack envelope type %r acknowledged and not handled", kind)
            return None

        context = _EventContext(
            team_id=_id(envelope, "team_id", "the envelope"),
            event_id=json_str(envelope, "event_id", "the envelope"),
            event_time=_int(envelope, "event_time", "the envelope"),
            app_id=_optional_str(envelope, "api_app_id", "the envelope"),
            bot_user_ids=_bot_user_ids(envelope),
            retry=_retry_extra(headers),
        )
        event = json_object(envelope.get("event"), "event")
        event_type = json_str(event, "type", "event")
        if self.team_id is not None and context.team_id != self.team_id:
            logger.info(
                "Slack event %s from team %s ignored by the inbox of team %s",
                context.event_id,
                context.team_id,
                self.team_id,
            )
            return None
        parser = _EVENT_PARSERS.get(event_type)
        if parser is None:
            if event_type not in _DUPLICATE_EVENTS:
                logger.info("Slack event %s (%s) acknowledged and not handled", context.event_id, event_type)
            return None
        return parser(context, event)

    def _parse_interaction(self, form: MultiMapping[str]) -> InboundMessage | None:
        raw = form.get("payload")
        if not raw:
            raise MalformedPayload("the interactivity body has no payload field")
        payload = _json_object(raw, "the interactivity payload")
        kind = json_str(payload, "type", "payload")
        parser = _INTERACTION_PARSERS.get(kind)
        if parser is None:
            logger.info("Slack interaction %r acknowledged and not handled", kind)
            return None
        team_id = _id(json_object(payload.get("team"), "payload.team"), "id", "payload.team")
        if self.team_id is not None and team_id != self.team_id:
            logger.info("Slack %s from team %s ignored by the inbox of team %s", kind, team_id, self.team_id)
            return None
        return parser(team_id, payload)


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _EventContext:
    """What the Events API envelope says about the event inside it."""

    team_id: str
    event_id: str
    event_time: int
    app_id: str | None
    # The app's own bot user, as the installation that received the event knows it.
    bot_user_ids: frozenset[str]
    retry: Mapping[str, Any]


def _parse_message(context: _EventContext, event: Mapping[str, Any]) -> InboundMessage | None:
    """A `message` event: a person writing, or Slack reporting on the channel (ignored)."""
    subtype = _optional_str(event, "subtype", "event")
    # Bots include Parley itself: its own replies come back as events and would otherwise loop.
    if event.get("bot_id") is not None or subtype == "bot_message":
        logger.debug("Slack event %s: a bot's message, ignored", context.event_id)
        return None
    # `hidden` marks Slack's reports on other messages; `message_replied` comes without its
    # subtype over the Events API (a known Slack bug), but hidden.
    if event.get("hidden") is True or (subtype is not None and subtype not in _CUSTOMER_SUBTYPES):
        logger.debug("Slack event %s: message subtype %s ignored", context.event_id, subtype)
        return None
    user = _id(event, "user", "event")
    if user in context.bot_user_ids or (context.app_id is not None and event.get("app_id") == context.app_id):
        logger.debug("Slack event %s: the app's own message, ignored", context.event_id)
        return None
    channel = _id(event, "channel", "event")
    ts = _ts(event, "ts", "event")
    thread_ts = _optional_ts(event, "thread_ts", "event")

    text = _unescape(_optional_str(event, "text", "event") or "")
    attachments, files_extra = _files(event)
    if not text.strip() and attachments:
        text = ", ".join(a.filename or "file" for a in attachments)
    if not text.strip() and not attachments:
        logger.info("Slack event %s: message with nothing Parley shows, ignored", context.event_id)
        return None

    extra: dict[str, Any] = {
        "channel": channel,
        "ts": ts,
        "thread_ts": thread_ts,
        "team": context.team_id,
        "event_time": context.event_time,
    }
    channel_type = _optional_str(event, "channel_type", "event")
    if channel_type is not None:
        extra["channel_type"] = channel_type
    if subtype is not None:
        extra["subtype"] = subtype
    if files_extra:
        extra["files"] = files_extra
    extra.update(context.retry)
    return InboundMessage(
        provider_message_id=context.event_id,
        sender=Address("slack", f"{context.team_id}:{user}"),
        recipient=None,
        text=text,
        attachments=attachments,
        sender_name=_profile_name(event),
        thread_key=_message_thread(channel, ts, thread_ts, channel_type),
        extra=extra,
    )


def _message_thread(channel: str, ts: str, thread_ts: str | None, channel_type: str | None) -> str | None:
    """The conversation a message belongs to, as a thread key; None for one conversation per contact.

    In a channel a top-level message is the root of its own thread, and replies thread under it.
    A direct message is a one-to-one chat, like SMS: unthreaded DMs share the contact's
    conversation (and the answer to a conversation Parley started lands in it); a thread a customer
    opens inside the DM is still its own conversation.
    """
    if channel_type == "im" and thread_ts is None:
        return None
    return f"{channel}:{thread_ts or ts}"


EventParser = Callable[[_EventContext, Mapping[str, Any]], InboundMessage | None]

_EVENT_PARSERS: Mapping[str, EventParser] = {"message": _parse_message}


def _parse_block_actions(team_id: str, payload: Mapping[str, Any]) -> InboundMessage | None:
    """A click on a button Parley sent: a button reply in the thread of the message it was on."""
    user = json_object(payload.get("user"), "payload.user")
    user_id = _id(user, "id", "payload.user")
    actions = json_objects(payload, "actions", "payload")
    button = next((a for a in actions if a.get("type") == "button"), None)
    if button is None:
        logger.info("Slack block_actions without a button (a menu or picker), ignored")
        return None
    action_id = json_str(button, "action_id", "payload.actions[]")
    reply_id = _optional_str(button, "value", "payload.actions[]") or action_id
    title = _plain_text(button.get("text")) or reply_id

    trigger_id = _optional_str(payload, "trigger_id", "payload")
    action_ts = _optional_ts(button, "action_ts", "payload.actions[]")
    if trigger_id is None and action_ts is None:
        raise MalformedPayload("Slack block_actions without a trigger_id or action_ts")

    container = json_optional_object(payload, "container", "payload") or {}
    message = json_optional_object(payload, "message", "payload") or {}
    channel = _optional_id(container, "channel_id", "payload.container")
    if channel is None:
        channel_object = json_optional_object(payload, "channel", "payload") or {}
        channel = _optional_id(channel_object, "id", "payload.channel")
    ts = _optional_ts(message, "ts", "payload.message") or _optional_ts(
        container, "message_ts", "payload.container"
    )
    thread_ts = _optional_ts(message, "thread_ts", "payload.message") or _optional_ts(
        container, "thread_ts", "payload.container"
    )
    # The message the button was on: Parley's reply inside the conversation's thread.
    thread_key = f"{channel}:{thread_ts or ts}" if channel is not None and ts is not None else None

    extra: dict[str, Any] = {"team": team_id, "action_id": action_id}
    for key, value in (("channel", channel), ("message_ts", ts), ("thread_ts", thread_ts)):
        if value is not None:
            extra[key] = value
    if action_ts is not None:
        extra["action_ts"] = action_ts
    return InboundMessage(
        provider_message_id=f"action:{trigger_id or action_ts}",
        sender=Address("slack", f"{team_id}:{user_id}"),
        recipient=None,
        text=title,
        sender_name=_optional_str(user, "name", "payload.user")
        or _optional_str(user, "username", "payload.user"),
        button_reply=ButtonReply(id=reply_id, title=title),
        thread_key=thread_key,
        extra=extra,
    )


InteractionParser = Callable[[str, Mapping[str, Any]], InboundMessage | None]

_INTERACTION_PARSERS: Mapping[str, InteractionParser] = {"block_actions": _parse_block_actions}


def _bot_user_ids(envelope: Mapping[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    authorizations = envelope.get("authorizations")
    for authorization in authorizations if isinstance(authorizations, list) else ():
        if isinstance(authorization, dict) and authorization.get("is_bot") is True:
            user_id = authorization.get("user_id")
            if isinstance(user_id, str):
                found.add(user_id)
    return frozenset(found)


def _retry_extra(headers: Mapping[str, str]) -> dict[str, Any]:
    """Slack's retry headers: how many times, and why, it sent this event before."""
    extra: dict[str, Any] = {}
    number = header(headers, RETRY_NUM_HEADER)
    if number is not None and number.isascii() and number.isdigit() and len(number) <= 4:
        extra["retry_num"] = int(number)
    reason = header(headers, RETRY_REASON_HEADER)
    if reason:
        extra["retry_reason"] = reason[:100]
    return extra


def _files(event: Mapping[str, Any]) -> tuple[tuple[Attachment, ...], list[dict[str, str]]]:
    """Shared files as attachments (their `url_private` needs the bot token) and their permalinks."""
    attachments: list[Attachment] = []
    described: list[dict[str, str]] = []
    for i, file in enumerate(json_objects(event, "files", "event")):
        where = f"event.files[{i}]"
        url = _optional_str(file, "url_private", where)
        name = _optional_str(file, "name", where) or _optional_str(file, "title", where)
        if url is None or urlsplit(url).scheme not in ("https", "http"):
            # Hidden by the workspace's plan, or a Slack Connect file Slack shows only on request.
            logger.info("Slack file %s has no private URL, not attached", file.get("id"))
            continue
        size = file.get("size")
        attachments.append(
            Attachment(
                url=url,
                content_type=_optional_str(file, "mimetype", where),
                filename=name,
                size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
            )
        )
        permalink = _optional_str(file, "permalink", where)
        entry = {
            "id": _optional_str(file, "id", where),
            "name": name,
            "permalink": permalink if permalink and urlsplit(permalink).scheme == "https" else None,
        }
        described.append({k: v for k, v in entry.items() if v is not None})
    return tuple(attachments), described


def _profile_name(event: Mapping[str, Any]) -> str | None:
    """The sender's name, when Slack includes their profile in the event (it does not always)."""
    profile = event.get("user_profile")
    if not isinstance(profile, dict):
        return None
    for key in ("display_name", "real_name", "name"):
        value = profile.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _plain_text(value: Any) -> str | None:
    """The text of a Block Kit text object (`{"type": "plain_text", "text": …}`)."""
    text = value.get("text") if isinstance(value, dict) else None
    return text if isinstance(text, str) and text else None


def _challenge(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("type") != "url_verification":
        return None
    challenge = data.get("challenge")
    return challenge if isinstance(challenge, str) and challenge else None


def _unescape(text: str) -> str:
    # Slack escapes these three in message text, and only these.
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# --- outbound -----------------------------------------------------------------------------------


def _thread(thread_key: str) -> tuple[str, str]:
    """The channel and root ts of a thread key as `parse` made it (`<channel>:<ts>`)."""
    channel, _, ts = thread_key.partition(":")
    if not _SLACK_ID.fullmatch(channel) or not _TS.fullmatch(ts):
        raise PermanentDeliveryError(
            f"{thread_key!r} is not a Slack thread ('<channel id>:<ts>')", code="invalid_thread"
        )
    return channel, ts


def _user_id(recipient: Address) -> str:
    team, _, user = recipient.value.partition(":")
    if recipient.kind != "slack" or not _SLACK_ID.fullmatch(team) or not _SLACK_ID.fullmatch(user):
        raise PermanentDeliveryError(
            f"{recipient.kind} address {recipient.value!r} is not a Slack user ('<team id>:<user id>')",
            code="invalid_recipient",
        )
    return user


async def _open_dm(client: AsyncWebClient, user_id: str) -> str:
    """The id of the app's direct-message channel with the user (opened if need be)."""
    answer = await client.conversations_open(users=user_id)
    channel = answer.data.get("channel") if isinstance(answer.data, dict) else None
    channel_id = _answer_str(channel, "id")
    if channel_id is None or not _SLACK_ID.fullmatch(channel_id):
        raise TransientDeliveryError("Slack conversations.open answered without a channel id")
    return channel_id


def _with_links(text: str, attachments: Sequence[Attachment]) -> str:
    """Files go as links after the text: Parley does not upload files to Slack."""
    links = "\n".join(a.url for a in attachments)
    if not links:
        return text
    return f"{text}\n\n{links}" if text.strip() else links


def _escape(text: str) -> str:
    # Parley's text is plain: escaped, `<!channel>` or `<@U…>` typed by an agent stays text.
    return "".join(_ESCAPES.get(char, char) for char in text)


def _blocks(text: str, buttons: Sequence[Button]) -> list[dict[str, Any]]:
    """The text as section blocks, then the buttons in actions blocks (Block Kit)."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": piece}} for piece in _sections(text)
    ]
    for start in range(0, len(buttons), MAX_BUTTONS_PER_BLOCK):
        chunk = buttons[start : start + MAX_BUTTONS_PER_BLOCK]
        blocks.append(
            {
                "type": "actions",
                "block_id": f"parley_buttons_{start // MAX_BUTTONS_PER_BLOCK}",
                "elements": [_button(index, button) for index, button in enumerate(chunk, start)],
            }
        )
    if len(blocks) > MAX_BLOCKS:
        raise PermanentDeliveryError(
            f"the message needs {len(blocks)} Slack blocks, more than the {MAX_BLOCKS} Slack allows",
            code="too_many_blocks",
        )
    return blocks


def _button(index: int, button: Button) -> dict[str, Any]:
    if not button.id or len(button.id) > MAX_BUTTON_VALUE_LENGTH:
        raise PermanentDeliveryError(
            f"Slack button values are 1 to {MAX_BUTTON_VALUE_LENGTH} characters ({len(button.id)} given)",
            code="button_id_too_long" if button.id else "empty_button_id",
        )
    title = button.title.strip() or button.id
    if len(title) > MAX_BUTTON_TEXT_LENGTH:
        title = title[: MAX_BUTTON_TEXT_LENGTH - 1] + "…"
    return {
        "type": "button",
        "action_id": f"{BUTTON_ACTION_PREFIX}{index}",
        "text": {"type": "plain_text", "text": title, "emoji": True},
        "value": button.id,
    }


def _sections(text: str) -> list[str]:
    """The escaped text in pieces a section block takes (3000 characters), no entity cut in two."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for char in text:
        escaped = _ESCAPES.get(char, char)
        if size + len(escaped) > MAX_SECTION_TEXT_LENGTH:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(escaped)
        size += len(escaped)
    pieces.append("".join(current))
    return [piece for piece in pieces if piece.strip()]


def _answer_str(data: Any, key: str) -> str | None:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def _translate(e: SlackApiError) -> ChannelError:
    """A failed Web API call as one of the channel errors."""
    response = e.response
    # An AsyncSlackResponse, or aiohttp's response when the body was not even JSON.
    status = getattr(response, "status_code", None) or getattr(response, "status", None)
    error = _answer_str(getattr(response, "data", None), "error")
    headers = getattr(response, "headers", None)
    if error == "ratelimited" or status == 429:
        retry_after = retry_after_seconds(header(headers, "Retry-After")) if headers is not None else None
        return TransientDeliveryError("Slack rate limit: try again later", retry_after=retry_after)
    if error in _AUTH_ERRORS:
        return ChannelAuthError(f"Slack refused the bot token: {error}")
    if error in _TRANSIENT_ERRORS or (isinstance(status, int) and status >= 500):
        return TransientDeliveryError(f"Slack Web API failed (HTTP {status}, {error or 'no error code'})")
    if error is not None:
        return PermanentDeliveryError(
            _ERROR_REASONS.get(error, f"Slack refused the message: {error}"), code=error
        )
    return PermanentDeliveryError(
        f"Slack Web API answered HTTP {status} without an error code", code=f"http_{status}"
    )


# --- reading untrusted JSON ---------------------------------------------------------------------


def _json_object(data: str | bytes, what: str) -> Mapping[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedPayload(f"{what} is not JSON: {e}") from None
    return json_object(value, what)


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPayload(f"{where}.{key} is not a string")
    return value or None


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedPayload(f"{where}.{key} is missing or not an integer")
    return value


def _id(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = json_str(obj, key, where)
    if not _SLACK_ID.fullmatch(value):
        raise MalformedPayload(f"{where}.{key} is not a Slack id: {value[:50]!r}")
    return value


def _optional_id(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    return None if obj.get(key) is None else _id(obj, key, where)


def _ts(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = json_str(obj, key, where)
    if not _TS.fullmatch(value):
        raise MalformedPayload(f"{where}.{key} is not a Slack timestamp: {value[:50]!r}")
    return value


def _optional_ts(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    return None if obj.get(key) is None else _ts(obj, key, where)
