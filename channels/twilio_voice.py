"""Phone calls through Twilio Programmable Voice: TwiML answers, call events and voicemail in the timeline.

An incoming call is greeted with a `<Gather input="speech dtmf">`; what the caller says (or keys)
becomes a message in their conversation. Then the call goes to a human when one is online (`<Dial>`
the inbox's agents, or `<Enqueue>` into a Twilio queue whose wait music `<Leave>`s after a maximum
wait), and to voicemail (`<Record>`, transcribed) when nobody is online or nobody answers.

Routes (suffixes of `/webhooks/<inbox-id>`), all POSTed and signed like SMS webhooks:
  ""              the phone number's "A call comes in" webhook
  "status"        the number's call status callback (ringing, in-progress, completed…)
  "gather"        <Gather action>: the caller's speech or keys
  "connect"       after a <Gather> without input: to an agent or voicemail
  "dial"          <Dial action>: whether an agent answered
  "queue"         <Enqueue action>: how the wait in the queue ended
  "wait"          <Enqueue waitUrl>: hold message and music, <Leave> after `max_queue_wait`
  "recorded"      <Record action>: goodbye
  "recording"     <Record recordingStatusCallback>: the voicemail's URL and duration
  "transcription" <Record transcribeCallback>: the voicemail's transcript

Which events count as the customer writing: the incoming call (it opens a conversation, or joins
the caller's open one) and what the caller says to the <Gather>. Everything the call reports later
(status callbacks, agent and queue outcomes, the recording and its transcript) is `part_of` the
call: it lands in the conversation the call opened, even if that was resolved in the meantime,
without reopening it, opening another, or moving `last_inbound_at`.

Nothing the caller controls (their caller name, their words) is ever put into TwiML: the answers
are built with the SDK's `VoiceResponse` from the inbox's settings and our own URLs only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self
from urllib.parse import urlencode, urlsplit, urlunsplit

import phonenumbers
from multidict import MultiMapping
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from channels.base import (
    Address,
    Attachment,
    CallEvent,
    Capabilities,
    Channel,
    ConfigurationError,
    FetchedMedia,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    Recording,
    SendReceipt,
    Voicemail,
    WebhookContext,
    WebhookReply,
    WebhookRequest,
)
from channels.common import optional_str, required_str
from channels.twilio_sms import (
    DEFAULT_API_BASE_URL,
    api_base_url_setting,
    fetch_media,
    leftovers,
    normalise_phone,
    verify_signature,
)

logger = logging.getLogger(__name__)

REPLIES_UNSUPPORTED = "replies_unsupported"

DEFAULT_GREETING = "Thank you for calling. Please tell us briefly how we can help you."
DEFAULT_HOLD_MESSAGE = "All our agents are busy. Please stay on the line."
DEFAULT_VOICEMAIL_PROMPT = "Nobody can take your call right now. Please leave a message after the beep."
DEFAULT_GOODBYE = "Thank you. Goodbye."

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
# Twilio's <Dial> nouns: a phone number, a Voice SDK client identity, a SIP URI.
_CLIENT = "client:"
_SIP = re.compile(r"sips?:[^\s<>\"]+", re.IGNORECASE)
_CLIENT_IDENTITY = re.compile(r"[A-Za-z0-9_.@\-]{1,121}")
_SID = re.compile(r"[A-Za-z]{2}[0-9a-fA-F]{32}")
# Twilio queue names: at most 64 characters.
_QUEUE_NAME = re.compile(r"[^\s<>&\"'][^<>&\"']{0,63}")

_CALL_STATUSES: Mapping[str, str] = {
    "queued": "Call queued",
    "initiated": "Call initiated",
    "ringing": "Incoming call",
    "in-progress": "Call answered",
    "completed": "Call completed",
    "busy": "Call busy",
    "no-answer": "Call not answered",
    "failed": "Call failed",
    "canceled": "Caller hung up before the call was answered",
}
_AGENT_ANSWERED = frozenset({"completed", "answered"})
_DIAL_STATUSES: Mapping[str, str] = {
    "completed": "Answered by an agent",
    "answered": "Answered by an agent",
    "busy": "No agent answered (busy)",
    "no-answer": "No agent answered",
    "failed": "Could not reach an agent (failed)",
    "canceled": "Caller hung up while agents were ringing",
}
_QUEUE_RESULTS: Mapping[str, str] = {
    "bridged": "Answered from the queue",
    "bridging-in-process": "Being connected from the queue",
    "hangup": "Caller hung up in the queue",
    "leave": "Nobody answered in the queue",
    "redirected": "Redirected out of the queue",
    "queue-full": "The queue was full",
    "error": "Queue error",
    "system-error": "Queue error (Twilio)",
}
# How a wait in the queue can end without a human: then the caller gets voicemail.
_QUEUE_TO_VOICEMAIL = frozenset({"leave", "queue-full", "error", "system-error"})
_RECORDING_STATUSES = frozenset({"completed", "absent", "failed"})
_TRANSCRIPTION_STATUSES = frozenset({"completed", "failed"})

# Form fields every voice request carries: kept out of `extra` where a typed field has them.
_CALL_FIELDS = {"CallSid", "From", "To", "CallStatus", "Direction", "CallerName", "CallDuration"}

Parser = Callable[[MultiMapping[str], MultiMapping[str], str], list[InboundEvent]]


class TwilioVoice(Channel):
    """Incoming phone calls on a Twilio number: greeting, speech capture, agents or queue, voicemail."""

    name = "twilio_voice"
    # The caller's number, E.164 as on SMS and WhatsApp: the same person on all three is one contact.
    identity_kind = "phone"
    consent_channel = "voice"
    # A call cannot carry a typed reply: the API refuses one before anything is queued.
    capabilities = Capabilities(replies=False)
    # Voicemail recordings: Twilio can require auth to play them, and deletes them on request.
    fetches_media = True

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        phone_number: str | None = None,
        default_region: str = "US",
        greeting: str = DEFAULT_GREETING,
        language: str | None = None,
        voice: str | None = None,
        agents: Sequence[str] = (),
        queue: str | None = None,
        ring_timeout: int = 20,
        max_queue_wait: int = 120,
        hold_message: str = DEFAULT_HOLD_MESSAGE,
        hold_music_url: str | None = None,
        voicemail_prompt: str = DEFAULT_VOICEMAIL_PROMPT,
        voicemail_max_length: int = 120,
        transcribe: bool = True,
        goodbye: str = DEFAULT_GOODBYE,
        api_base_url: str = DEFAULT_API_BASE_URL,
    ) -> None:
        self.account_sid = account_sid
        self.api_base_url = api_base_url
        self._auth_token = auth_token
        self.phone_number = phone_number
        self.default_region = default_region
        self.greeting = greeting
        self.language = language
        self.voice = voice
        self.agents = tuple(agents)
        self.queue = queue
        self.ring_timeout = ring_timeout
        self.max_queue_wait = max_queue_wait
        self.hold_message = hold_message
        self.hold_music_url = hold_music_url
        self.voicemail_prompt = voicemail_prompt
        self.voicemail_max_length = voicemail_max_length
        self.transcribe = transcribe
        self.goodbye = goodbye
        self._validator = RequestValidator(auth_token)

    @classmethod
    def validate_config(
        cls, settings: Mapping[str, Any], secrets: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Check and clean a voice inbox's settings: Twilio account, prompts, agents or queue, voicemail."""
        account_sid = required_str(settings, "account_sid")
        if not _ACCOUNT_SID.fullmatch(account_sid):
            raise ConfigurationError("account_sid must be 'AC' followed by 32 hex digits")
        default_region = (optional_str(settings, "default_region") or "US").upper()
        if default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigurationError(f"default_region {default_region!r} is not a known ISO country code")
        cleaned: dict[str, Any] = {
            "account_sid": account_sid,
            "default_region": default_region,
            "api_base_url": api_base_url_setting(settings),
        }
        phone_number = optional_str(settings, "phone_number")
        if phone_number:
            e164 = normalise_phone(phone_number, default_region)
            if e164 is None:
                raise ConfigurationError(f"phone_number {phone_number!r} is not a valid phone number")
            cleaned["phone_number"] = e164

        for key, default in (
            ("greeting", DEFAULT_GREETING),
            ("hold_message", DEFAULT_HOLD_MESSAGE),
            ("voicemail_prompt", DEFAULT_VOICEMAIL_PROMPT),
            ("goodbye", DEFAULT_GOODBYE),
        ):
            text = optional_str(settings, key) or default
            if len(text) > 4096:
                raise ConfigurationError(f"{key} is longer than 4096 characters")
            cleaned[key] = text
        for key in ("language", "voice"):
            value = optional_str(settings, key)
            if value is not None:
                if not re.fullmatch(r"[A-Za-z0-9._\-]{1,64}", value):
                    raise ConfigurationError(f"{key} {value!r} is not a Twilio {key} name")
                cleaned[key] = value

        cleaned["agents"] = _agents(settings.get("agents"), default_region)
        queue = optional_str(settings, "queue")
        if queue is not None:
            if not _QUEUE_NAME.fullmatch(queue):
                raise ConfigurationError("queue must be a Twilio queue name of at most 64 characters")
            cleaned["queue"] = queue
        cleaned["ring_timeout"] = _seconds(settings, "ring_timeout", 20, 5, 600)
        cleaned["max_queue_wait"] = _seconds(settings, "max_queue_wait", 120, 10, 3600)
        # Twilio transcribes recordings of at most two minutes; longer ones are recorded only.
        cleaned["voicemail_max_length"] = _seconds(settings, "voicemail_max_length", 120, 1, 3600)
        hold_music_url = optional_str(settings, "hold_music_url")
        if hold_music_url is not None:
            parts = urlsplit(hold_music_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError("hold_music_url must be an http(s) URL")
            cleaned["hold_music_url"] = hold_music_url
        transcribe = settings.get("transcribe", True)
        if not isinstance(transcribe, bool):
            raise ConfigurationError("transcribe must be true or false")
        cleaned["transcribe"] = transcribe

        auth_token = secrets.get("auth_token")
        if not isinstance(auth_token, str) or not auth_token.strip():
            raise ConfigurationError("auth_token is required")
        return cleaned, {"auth_token": auth_token.strip()}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> Self:
        """Build the adapter for one voice inbox."""
        cleaned, cleaned_secrets = cls.validate_config(settings, secrets)
        return cls(auth_token=cleaned_secrets["auth_token"], **cleaned)

    def verify(self, request: WebhookRequest) -> None:
        """Check `X-Twilio-Signature` over the public URL (with our query string) and the form."""
        verify_signature(self._validator, request)

    def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """The call events, caller's words, recording or transcript a voice webhook reports."""
        parser = _PARSERS.get(request.route)
        if parser is None:
            raise MalformedPayload(f"unknown Twilio Voice webhook route {request.route!r}")
        # Every voice request names its call and its customer; the TwiML answers rely on both.
        _call_sid(request.form)
        _caller(request.form, request.query, self.default_region)
        return parser(request.form, request.query, self.default_region)

    def acknowledge(self, request: WebhookRequest, events: Sequence[InboundEvent]) -> WebhookReply:
        """Empty TwiML, for callbacks whose answer Twilio ignores."""
        return _twiml(VoiceResponse())

    async def respond(
        self, request: WebhookRequest, events: Sequence[InboundEvent], context: WebhookContext
    ) -> WebhookReply:
        """The TwiML that carries the call on from this webhook."""
        form, route = request.form, request.route
        urls = _Urls(request, _caller(form, request.query, self.default_region))
        if route == "":
            return _twiml(self._greeting(urls))
        if route in ("gather", "connect"):
            return _twiml(await self._connect(urls, context))
        if route == "dial":
            if form.get("DialCallStatus", "").strip().lower() in _AGENT_ANSWERED:
                return _twiml(_hangup(VoiceResponse()))
            # The agents did not answer: the queue if there is one, else voicemail.
            return _twiml(self._enqueue(urls) if self.queue else self._voicemail(urls))
        if route == "queue":
            if form.get("QueueResult", "").strip().lower() in _QUEUE_TO_VOICEMAIL:
                return _twiml(self._voicemail(urls))
            return _twiml(_hangup(VoiceResponse()))
        if route == "wait":
            return _twiml(self._hold(form))
        if route == "recorded":
            response = VoiceResponse()
            self._say(response, self.goodbye)
            return _twiml(_hangup(response))
        return self.acknowledge(request, events)

    async def fetch_attachment(self, attachment: Attachment) -> FetchedMedia:
        """A voicemail recording, read with the account's credentials."""
        return await fetch_media(
            attachment,
            api_base_url=self.api_base_url,
            account_sid=self.account_sid,
            auth_token=self._auth_token,
            timeout=60.0,
        )

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Refuse: a phone line carries no written reply (the API refuses these before queuing)."""
        raise PermanentDeliveryError(
            "A phone call cannot carry a written reply; answer on SMS or WhatsApp, or call back",
            code=REPLIES_UNSUPPORTED,
        )

    # TwiML, built with the SDK from settings and our own URLs only.

    def _say(self, response: Any, text: str) -> None:
        attributes = {k: v for k, v in (("voice", self.voice), ("language", self.language)) if v}
        response.say(text, **attributes)

    def _greeting(self, urls: _Urls) -> VoiceResponse:
        response = VoiceResponse()
        gather = response.gather(
            input="speech dtmf",
            action=urls.route("gather"),
            method="POST",
            speech_timeout="auto",
            timeout=5,
            **({"language": self.language} if self.language else {}),
        )
        self._say(gather, self.greeting)
        # Twilio goes on to the next verb when the caller says and keys nothing.
        response.redirect(urls.route("connect"), method="POST")
        return response

    async def _connect(self, urls: _Urls, context: WebhookContext) -> VoiceResponse:
        if not (self.agents or self.queue) or not await context.agents_available():
            return self._voicemail(urls)
        if not self.agents:
            return self._enqueue(urls)
        response = VoiceResponse()
        dial = response.dial(action=urls.route("dial"), method="POST", timeout=self.ring_timeout)
        for agent in self.agents:
            if agent.startswith(_CLIENT):
                dial.client(agent[len(_CLIENT) :])
            elif _SIP.fullmatch(agent):
                dial.sip(agent)
            else:
                dial.number(agent)
        return response

    def _enqueue(self, urls: _Urls) -> VoiceResponse:
        response = VoiceResponse()
        assert self.queue is not None
        response.enqueue(
            self.queue,
            action=urls.route("queue"),
            method="POST",
            wait_url=urls.route("wait"),
            wait_url_method="POST",
        )
        return response

    def _hold(self, form: MultiMapping[str]) -> VoiceResponse:
        """Twilio plays the wait TwiML in a loop, asking again each time it ends."""
        response = VoiceResponse()
        waited = _optional_int(form, "QueueTime") or 0
        if waited >= self.max_queue_wait:
            response.leave()
            return response
        self._say(response, self.hold_message)
        if self.hold_music_url:
            response.play(self.hold_music_url)
        else:
            response.pause(length=min(10, self.max_queue_wait - waited))
        return response

    def _voicemail(self, urls: _Urls) -> VoiceResponse:
        response = VoiceResponse()
        self._say(response, self.voicemail_prompt)
        transcription: dict[str, Any] = {}
        if self.transcribe:
            transcription = {"transcribe": True, "transcribe_callback": urls.route("transcription")}
        response.record(
            action=urls.route("recorded"),
            method="POST",
            max_length=self.voicemail_max_length,
            play_beep=True,
            finish_on_key="#",
            recording_status_callback=urls.route("recording"),
            recording_status_callback_method="POST",
            **transcription,
        )
        # Reached only when nothing was recorded (Twilio skips the action then).
        self._say(response, self.goodbye)
        return _hangup(response)


class _Urls:
    """Absolute URLs of this inbox's voice routes, carrying the caller for callbacks without `From`.

    Twilio signs the URL it calls, query string included, so the caller read back from it is as
    trustworthy as the form (the recording status callback has no `From`).
    """

    def __init__(self, request: WebhookRequest, caller: Address) -> None:
        parts = urlsplit(request.url)
        path = parts.path
        if request.route and path.endswith("/" + request.route):
            path = path[: -len(request.route) - 1]
        self._base = urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))
        self._query = urlencode({"caller": caller.value})

    def route(self, route: str) -> str:
        return f"{self._base}/{route}?{self._query}"


def _hangup(response: VoiceResponse) -> VoiceResponse:
    """`response` ending the call (the SDK's verb methods return the verb, not the response)."""
    response.hangup()
    return response


def _twiml(response: VoiceResponse) -> WebhookReply:
    return WebhookReply(body=str(response.to_xml()), content_type="text/xml")


# Parsers: the form, our query string and the default region in, the events to store out.


def _parse_incoming(form: MultiMapping[str], query: MultiMapping[str], region: str) -> list[InboundEvent]:
    sid = _call_sid(form)
    direction = form.get("Direction") or None
    caller = _caller(form, query, region)
    return [
        InboundMessage(
            provider_message_id=_call_start(sid),
            sender=caller,
            recipient=_callee(form, region),
            text=f"{_CALL_STATUSES['ringing']} from {caller.value}",
            sender_name=form.get("CallerName", "").strip()[:200] or None,
            call=CallEvent(call_id=sid, status="ringing", direction=direction),
            extra=leftovers(form, _CALL_FIELDS),
        )
    ]


def _parse_status(form: MultiMapping[str], query: MultiMapping[str], region: str) -> list[InboundEvent]:
    sid = _call_sid(form)
    status = form.get("CallStatus", "").strip().lower()
    label = _CALL_STATUSES.get(status)
    if label is None:
        raise MalformedPayload(f"unknown Twilio call status {form.get('CallStatus')!r}")
    duration = _optional_int(form, "CallDuration")
    text = label if duration is None or status != "completed" else f"{label} · {_clock(duration)}"
    event = CallEvent(call_id=sid, status=status, direction=form.get("Direction") or None, duration=duration)
    return [
        _call_message(form, query, region, f"{sid}:{status}", text, call=event, part_of=status != "ringing")
    ]


def _parse_gather(form: MultiMapping[str], query: MultiMapping[str], region: str) -> list[InboundEvent]:
    sid = _call_sid(form)
    speech = form.get("SpeechResult", "").strip()
    digits = form.get("Digits", "").strip()
    if not speech and not digits:
        return []
    text = speech or f"Keyed {digits}"
    # What the caller says is the customer writing: it counts like an SMS (no `part_of`).
    return [
        _call_message(form, query, region, f"{sid}:gather", text, part_of=False, consumed={"SpeechResult"})
    ]


def _parse_dial(form: MultiMapping[str], query: MultiMapping[str], region: str) -> list[InboundEvent]:
    sid = _call_sid(form)
    status = form.get("DialCallStatus", "").strip().lower()
    label = _DIAL_STATUSES.get(status)
    if label is None:
        raise MalformedPayload(f"unknown Twilio DialCallStatus {form.get('DialCallStatus')!r}")
    duration = _optional_int(form, "DialCallDuration")
    text = f"{label} · {_clock(duration)}" if duration and status in _AGENT_ANSWERED else label
    event = CallEvent(call_id=sid, status=status, duration=duration, leg="agent")
    return [_call_message(form, query, region, f"{sid}:agent:{status}", text, call=event)]


def _parse_queue(form: MultiMapping[str], query: MultiMapping[str], region: str) -> list[InboundEvent]:
    sid = _call_sid(form)
    result = form.get("QueueResult", "").strip().lower()
    label = _QUEUE_RESULTS.get(result)
    if label is None:
        raise MalformedPayload(f"unknown Twilio QueueResult {form.get('QueueResult')!r}")
    waited = _optional_int(form, "QueueTime")
    text = label if waited is None else f"{label} after {_clock(waited)}"
    event = CallEvent(call_id=sid, status=result, duration=waited, leg="queue")
    return [_call_message(form, query, region, f"{sid}:queue:{result}", text, call=event)]


def _parse_recording(form: MultiMapping[str], query: MultiMapping[str], region: str) -> list[InboundEvent]:
    sid = _call_sid(form)
    recording_sid = _sid(form, "RecordingSid")
    status = (form.get("RecordingStatus") or "completed").strip().lower()
    if status not in _RECORDING_STATUSES:
        raise MalformedPayload(f"unknown Twilio RecordingStatus {form.get('RecordingStatus')!r}")
    url = form.get("RecordingUrl", "").strip()
    if status == "completed" and not _is_http_url(url):
        raise MalformedPayload("Twilio recording callback without an http(s) RecordingUrl")
    duration = _optional_int(form, "RecordingDuration")
    recording = Recording(recording_id=recording_sid, url=url, duration=duration, call_id=sid)
    if status == "completed":
        text = "Voicemail" if duration is None else f"Voicemail ({_clock(duration)})"
        # Twilio serves the recording as MP3 when asked for the .mp3 of its URL.
        attachments: tuple[Attachment, ...] = (
            Attachment(url=f"{url}.mp3", content_type="audio/mpeg", filename=f"{recording_sid}.mp3"),
        )
    else:
        text, attachments = f"Voicemail not recorded ({status})", ()
    return [
        _call_message(
            form,
            query,
            region,
            f"{recording_sid}:{status}",
            text,
            recording=recording,
            attachments=attachments,
            consumed={"RecordingSid", "RecordingUrl", "RecordingStatus", "RecordingDuration"},
        )
    ]


def _parse_transcription(
    form: MultiMapping[str], query: MultiMapping[str], region: str
) -> list[InboundEvent]:
    transcription_sid = _sid(form, "TranscriptionSid")
    status = form.get("TranscriptionStatus", "").strip().lower()
    if status not in _TRANSCRIPTION_STATUSES:
        raise MalformedPayload(f"unknown Twilio TranscriptionStatus {form.get('TranscriptionStatus')!r}")
    transcript = (form.get("TranscriptionText", "").strip() or None) if status == "completed" else None
    recording_sid = form.get("RecordingSid", "").strip() or None
    voicemail = Voicemail(
        transcription_id=transcription_sid, recording_id=recording_sid, status=status, transcript=transcript
    )
    text = transcript or "The voicemail could not be transcribed"
    return [
        _call_message(
            form,
            query,
            region,
            f"{transcription_sid}:{status}",
            text,
            voicemail=voicemail,
            consumed={"TranscriptionSid", "TranscriptionText", "TranscriptionStatus"},
        )
    ]


def _parse_nothing(form: MultiMapping[str], query: MultiMapping[str], region: str) -> list[InboundEvent]:
    """A step of the call flow that reports nothing to store (its answer is all that matters)."""
    return []


_PARSERS: Mapping[str, Parser] = {
    "": _parse_incoming,
    "status": _parse_status,
    "gather": _parse_gather,
    "connect": _parse_nothing,
    "dial": _parse_dial,
    "queue": _parse_queue,
    "wait": _parse_nothing,
    "recorded": _parse_nothing,
    "recording": _parse_recording,
    "transcription": _parse_transcription,
}


def _call_message(
    form: MultiMapping[str],
    query: MultiMapping[str],
    region: str,
    provider_message_id: str,
    text: str,
    *,
    call: CallEvent | None = None,
    recording: Recording | None = None,
    voicemail: Voicemail | None = None,
    attachments: tuple[Attachment, ...] = (),
    part_of: bool = True,
    consumed: set[str] | None = None,
) -> InboundMessage:
    """A message of the call in `form`, by default `part_of` the call it reports on."""
    sid = _call_sid(form)
    return InboundMessage(
        provider_message_id=provider_message_id,
        sender=_caller(form, query, region),
        recipient=_callee(form, region),
        text=text,
        attachments=attachments,
        call=call,
        recording=recording,
        voicemail=voicemail,
        part_of=_call_start(sid) if part_of else None,
        extra=leftovers(form, _CALL_FIELDS | (consumed or set())),
    )


def _call_start(call_sid: str) -> str:
    """The provider id of a call's first event, the incoming (ringing) call: later events join it."""
    return f"{call_sid}:ringing"


def _call_sid(form: MultiMapping[str]) -> str:
    return _sid(form, "CallSid")


def _sid(form: MultiMapping[str], key: str) -> str:
    value = form.get(key, "").strip()
    if not value:
        raise MalformedPayload(f"Twilio Voice request without {key}")
    if not _SID.fullmatch(value):
        raise MalformedPayload(f"{key} is not a Twilio SID: {value[:40]!r}")
    return value


def _caller(form: MultiMapping[str], query: MultiMapping[str], region: str) -> Address:
    """The customer on the call: the caller of an inbound call, the callee of one we placed."""
    raw = query.get("caller", "").strip()
    if not raw:
        outbound = form.get("Direction", "").startswith("outbound")
        raw = form.get("To" if outbound else "From", "").strip()
    if not raw:
        raise MalformedPayload("Twilio Voice request without From")
    if len(raw) > 200:
        raise MalformedPayload("From is longer than 200 characters")
    return Address("phone", normalise_phone(raw, region) or raw)


def _callee(form: MultiMapping[str], region: str) -> Address | None:
    raw = form.get("To", "").strip()
    return Address("phone", normalise_phone(raw, region) or raw) if raw else None


def _optional_int(form: MultiMapping[str], key: str) -> int | None:
    value = form.get(key, "").strip()
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise MalformedPayload(f"{key} is not a number of seconds: {value[:20]!r}")
    return int(value)


def _clock(seconds: int) -> str:
    """2:13, or 1:02:03 past the hour."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _agents(value: Any, region: str) -> list[str]:
    """The `agents` setting: phone numbers (as E.164), `client:<identity>`s and SIP URIs."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ConfigurationError("agents must be a list of phone numbers, client:<identity> or sip: URIs")
    if len(value) > 10:
        raise ConfigurationError("agents: Twilio rings at most 10 at once")
    agents = []
    for agent in (a.strip() for a in value):
        if agent.lower().startswith(_CLIENT):
            identity = agent[len(_CLIENT) :]
            if not _CLIENT_IDENTITY.fullmatch(identity):
                raise ConfigurationError(f"agents: {agent!r} is not a valid client identity")
            agents.append(_CLIENT + identity)
        elif _SIP.fullmatch(agent):
            agents.append(agent)
        else:
            e164 = normalise_phone(agent, region)
            if e164 is None:
                raise ConfigurationError(f"agents: {agent!r} is not a phone number, client: or sip: URI")
            agents.append(e164)
    return agents


def _seconds(settings: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(f"{key} must be a whole number of seconds from {low} to {high}")
    return value
