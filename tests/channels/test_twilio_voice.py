"""The Twilio Voice adapter: signed fixtures in, call events and TwiML out (parsed with an XML parser)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from xml.etree import ElementTree as ET

import pytest
from defusedxml import ElementTree as DefusedET
from multidict import MultiDict, MultiDictProxy

from channels.base import (
    Address,
    CallEvent,
    ConfigurationError,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    Recording,
    SignatureError,
    Voicemail,
    WebhookRequest,
)
from channels.registry import channel_class
from channels.twilio_voice import REPLIES_UNSUPPORTED, TwilioVoice
from tests.fakes.twilio_api import load_fixture, sign

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "c0ffee00c0ffee00c0ffee00c0ffee00"
HOOK_URL = "https://parley.example.com/webhooks/7"
CALL = "CA5f4e3d2c1b0a99887766554433221100"
RECORDING = "REa1b2c3d4e5f60718293a4b5c6d7e8f90"
TRANSCRIPTION = "TR0f1e2d3c4b5a69788796a5b4c3d2e1f0"
CALLER = "+14155550100"

Pairs = list[tuple[str, str]]


def channel(**settings: Any) -> TwilioVoice:
    return TwilioVoice.from_settings({"account_sid": ACCOUNT_SID} | settings, {"auth_token": AUTH_TOKEN})


def fixture(name: str) -> Pairs:
    return load_fixture(name, "twilio_voice")


def webhook(
    pairs: Pairs,
    *,
    route: str = "",
    query: dict[str, str] | None = None,
    signed_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> WebhookRequest:
    """A request as the gateway builds it, signed as Twilio signs it (URL with query, then the form)."""
    url = HOOK_URL + (f"/{route}" if route else "") + (f"?{urlencode(query)}" if query else "")
    if headers is None:
        headers = {"X-Twilio-Signature": sign(signed_url or url, pairs, AUTH_TOKEN)}
    return WebhookRequest(
        method="POST",
        url=url,
        route=route,
        headers=headers,
        body=urlencode(pairs).encode(),
        form=MultiDictProxy(MultiDict(pairs)),
        query=MultiDictProxy(MultiDict(query or {})),
    )


def route_of(name: str) -> str:
    event = name.split("__")[0]
    return "" if event in ("incoming", "malformed") else event


def receive(name: str, adapter: TwilioVoice | None = None, **query: str) -> Sequence[InboundEvent]:
    """Sign fixture `name`, then verify and parse it the way the gateway does."""
    adapter = adapter or channel()
    request = webhook(fixture(name), route=route_of(name), query=query or None)
    adapter.verify(request)
    return adapter.parse(request)


def one(events: Sequence[InboundEvent]) -> InboundMessage:
    assert len(events) == 1
    assert isinstance(events[0], InboundMessage)
    return events[0]


class Context:
    """The gateway's webhook context, with presence decided by the test; counts the questions."""

    def __init__(self, online: bool) -> None:
        self.online = online
        self.asked = 0
        self.stored_message_ids: Sequence[int] = ()

    async def agents_available(self) -> bool:
        self.asked += 1
        return self.online


async def answer(
    adapter: TwilioVoice, name: str, *, online: bool = False, route: str | None = None, **query: str
) -> ET.Element:
    """The TwiML `adapter` answers fixture `name` with, parsed."""
    request = webhook(
        fixture(name), route=route_of(name) if route is None else route, query=query or {"caller": CALLER}
    )
    adapter.verify(request)
    events = adapter.parse(request)
    reply = await adapter.respond(request, events, Context(online))
    assert reply.status == 200 and reply.content_type == "text/xml"
    root = DefusedET.fromstring(reply.body)
    assert root.tag == "Response"
    return root


def verbs(root: ET.Element) -> list[str]:
    return [child.tag for child in root]


def callback(url: str | None, route: str) -> None:
    """`url` is this inbox's `route`, absolute, carrying the caller in its (signed) query."""
    assert url is not None
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{HOOK_URL}/{route}"
    assert parse_qs(parts.query) == {"caller": [CALLER]}


# Parsing: what lands in the conversation.


def test_incoming_call_is_the_caller_reaching_out() -> None:
    message = one(receive("incoming__call"))
    assert message.provider_message_id == f"{CALL}:ringing"
    assert message.sender == Address("phone", CALLER)
    assert message.recipient == Address("phone", "+15017122661")
    assert message.text == f"Incoming call from {CALLER}"
    assert message.call == CallEvent(call_id=CALL, status="ringing", direction="inbound")
    assert message.part_of is None  # it opens (or joins) the conversation like an SMS would
    assert message.extra["FromCity"] == "SAN FRANCISCO"
    assert "CallSid" not in message.extra  # typed fields are not repeated among the leftovers


def test_caller_name_becomes_the_sender_name_only() -> None:
    message = one(receive("incoming__caller_name"))
    assert message.sender_name is not None and message.sender_name.startswith("Mallory")
    assert "Mallory" not in message.text


@pytest.mark.parametrize(
    ("name", "status", "text"),
    [
        ("status__in_progress", "in-progress", "Call answered"),
        ("status__completed", "completed", "Call completed · 2:13"),
        ("status__busy", "busy", "Call busy"),
        ("status__no_answer", "no-answer", "Call not answered"),
        ("status__failed", "failed", "Call failed"),
        ("status__canceled", "canceled", "Caller hung up before the call was answered"),
    ],
)
def test_call_status_callbacks_are_events_of_the_call(name: str, status: str, text: str) -> None:
    message = one(receive(name))
    assert message.provider_message_id == f"{CALL}:{status}"
    assert message.text == text
    assert message.call is not None and message.call.status == status
    assert message.part_of == f"{CALL}:ringing"
    assert message.sender == Address("phone", CALLER)


def test_completed_call_carries_its_duration() -> None:
    call = one(receive("status__completed")).call
    assert call == CallEvent(call_id=CALL, status="completed", direction="inbound", duration=133)


def test_ringing_status_callback_is_the_same_event_as_the_incoming_call() -> None:
    # Same provider id: whichever arrives second is a duplicate, not a second "incoming call".
    ringing = one(receive("status__ringing"))
    assert ringing.provider_message_id == one(receive("incoming__call")).provider_message_id
    assert ringing.part_of is None


def test_distinct_events_of_one_call_have_distinct_ids() -> None:
    names = ["incoming__call", "status__in_progress", "status__completed", "gather__speech"]
    names += ["dial__no_answer", "queue__leave", "recording__completed", "transcription__completed"]
    ids = [one(receive(name, caller=CALLER)).provider_message_id for name in names]
    assert len(set(ids)) == len(ids)


def test_speech_is_the_caller_speaking() -> None:
    message = one(receive("gather__speech"))
    assert message.text == "Hi, my parcel arrived damaged and I would like a refund."
    assert message.provider_message_id == f"{CALL}:gather"
    assert message.part_of is None  # counts as the customer writing
    assert message.extra["Confidence"] == "0.9235"


def test_keys_pressed_are_the_caller_answering() -> None:
    assert one(receive("gather__digits")).text == "Keyed 2"


def test_gather_without_input_stores_nothing() -> None:
    assert receive("gather__no_input") == []


def test_voicemail_recording_is_an_audio_attachment_of_the_call() -> None:
    message = one(receive("recording__completed", caller=CALLER))
    url = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{RECORDING}"
    assert message.text == "Voicemail (0:42)"
    assert message.recording == Recording(recording_id=RECORDING, url=url, duration=42, call_id=CALL)
    assert [(a.url, a.content_type) for a in message.attachments] == [(f"{url}.mp3", "audio/mpeg")]
    assert message.provider_message_id == f"{RECORDING}:completed"
    assert message.part_of == f"{CALL}:ringing"
    # The recording callback has no From: the caller comes from our own (signed) callback URL.
    assert message.sender == Address("phone", CALLER)


def test_recording_callback_without_a_caller_anywhere_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="From"):
        receive("recording__completed")


def test_empty_voicemail_is_reported_without_an_attachment() -> None:
    message = one(receive("recording__absent", caller=CALLER))
    assert message.text == "Voicemail not recorded (absent)"
    assert message.attachments == ()


def test_transcription_is_the_voicemail_text() -> None:
    message = one(receive("transcription__completed"))
    assert message.text == "Hi, this is Alex. My parcel arrived damaged, please call me back."
    assert message.voicemail == Voicemail(
        transcription_id=TRANSCRIPTION, recording_id=RECORDING, status="completed", transcript=message.text
    )
    assert message.provider_message_id == f"{TRANSCRIPTION}:completed"
    assert message.part_of == f"{CALL}:ringing"


def test_failed_transcription_says_so() -> None:
    message = one(receive("transcription__failed"))
    assert message.text == "The voicemail could not be transcribed"
    assert message.voicemail is not None and message.voicemail.transcript is None


def test_dial_and_queue_outcomes_are_events_of_the_call() -> None:
    answered = one(receive("dial__completed"))
    assert answered.text == "Answered by an agent · 1:20"
    assert answered.call == CallEvent(call_id=CALL, status="completed", duration=80, leg="agent")
    assert one(receive("dial__no_answer")).text == "No agent answered"
    left = one(receive("queue__leave"))
    assert left.text == "Nobody answered in the queue after 2:00"
    assert left.call == CallEvent(call_id=CALL, status="leave", duration=120, leg="queue")
    assert left.part_of == f"{CALL}:ringing"


@pytest.mark.parametrize("name", ["connect__no_input", "wait__in_queue", "recorded__voicemail"])
def test_steps_of_the_flow_store_nothing(name: str) -> None:
    assert receive(name, caller=CALLER) == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("malformed__no_call_sid", "CallSid"),
        ("malformed__no_from", "From"),
        ("malformed__unknown_status", "status"),
        ("malformed__bad_duration", "CallDuration"),
    ],
)
def test_malformed_requests_are_refused(name: str, reason: str) -> None:
    pairs = fixture(name)
    route = "status" if "status" in name or "duration" in name else ""
    request = webhook(pairs, route=route)
    channel().verify(request)
    with pytest.raises(MalformedPayload, match=reason):
        channel().parse(request)


def test_recording_without_url_is_refused() -> None:
    pairs = fixture("malformed__recording_without_url")
    request = webhook(pairs, route="recording", query={"caller": CALLER})
    channel().verify(request)
    with pytest.raises(MalformedPayload, match="RecordingUrl"):
        channel().parse(request)


def test_unknown_route_is_refused() -> None:
    request = webhook(fixture("incoming__call"), route="exploit")
    with pytest.raises(MalformedPayload, match="route"):
        channel().parse(request)


# Signatures: the same check as SMS, over the URL with our query string.


def test_unsigned_request_is_refused() -> None:
    with pytest.raises(SignatureError, match="missing"):
        channel().verify(webhook(fixture("incoming__call"), headers={}))


def test_wrongly_signed_request_is_refused() -> None:
    request = webhook(fixture("incoming__call"), headers={"X-Twilio-Signature": "bm90IHR3aWxpbw=="})
    with pytest.raises(SignatureError):
        channel().verify(request)


def test_request_signed_with_another_token_is_refused() -> None:
    pairs = fixture("incoming__call")
    signature = sign(HOOK_URL, pairs, "another-accounts-token")
    with pytest.raises(SignatureError):
        channel().verify(webhook(pairs, headers={"X-Twilio-Signature": signature}))


def test_caller_swapped_in_the_query_breaks_the_signature() -> None:
    pairs = fixture("recording__completed")
    signed = f"{HOOK_URL}/recording?{urlencode({'caller': CALLER})}"
    request = webhook(pairs, route="recording", query={"caller": "+19005550199"}, signed_url=signed)
    with pytest.raises(SignatureError):
        channel().verify(request)


# TwiML: what Twilio is told to do next.


async def test_incoming_call_is_greeted_and_listened_to() -> None:
    root = await answer(channel(greeting="Welcome to Acme.", language="en-GB"), "incoming__call")
    assert verbs(root) == ["Gather", "Redirect"]
    gather, redirect = root
    assert gather.get("input") == "speech dtmf"
    assert gather.get("method") == "POST" and gather.get("language") == "en-GB"
    callback(gather.get("action"), "gather")
    assert [(say.tag, say.text) for say in gather] == [("Say", "Welcome to Acme.")]
    callback(redirect.text, "connect")


async def test_caller_name_never_reaches_the_twiml() -> None:
    adapter = channel(agents=["+14155550111"])
    root = await answer(adapter, "incoming__caller_name")
    body = ET.tostring(root, encoding="unicode")
    assert "Mallory" not in body and "19005550199" not in body
    assert verbs(root) == ["Gather", "Redirect"]
    assert root.find(".//Dial") is None


async def test_nobody_online_goes_straight_to_voicemail() -> None:
    adapter = channel(agents=["+14155550111"], voicemail_max_length=90)
    root = await answer(adapter, "gather__speech", online=False)
    assert verbs(root) == ["Say", "Record", "Say", "Hangup"]
    record = root[1]
    callback(record.get("action"), "recorded")
    callback(record.get("recordingStatusCallback"), "recording")
    callback(record.get("transcribeCallback"), "transcription")
    assert record.get("transcribe") == "true"
    assert record.get("maxLength") == "90"
    assert record.get("playBeep") == "true"


async def test_voicemail_without_transcription() -> None:
    root = await answer(channel(transcribe=False), "connect__no_input")
    record = root.find("Record")
    assert record is not None
    assert record.get("transcribe") is None and record.get("transcribeCallback") is None


async def test_someone_online_rings_the_agents() -> None:
    adapter = channel(agents=["+14155550111", "client:alice", "sip:desk@pbx.example.com"], ring_timeout=15)
    root = await answer(adapter, "gather__speech", online=True)
    assert verbs(root) == ["Dial"]
    dial = root[0]
    callback(dial.get("action"), "dial")
    assert dial.get("timeout") == "15"
    assert [(n.tag, n.text) for n in dial] == [
        ("Number", "+14155550111"),
        ("Client", "alice"),
        ("Sip", "sip:desk@pbx.example.com"),
    ]


async def test_someone_online_with_a_queue_waits_in_it() -> None:
    root = await answer(channel(queue="support"), "connect__no_input", online=True)
    assert verbs(root) == ["Enqueue"]
    enqueue = root[0]
    assert enqueue.text == "support"
    callback(enqueue.get("action"), "queue")
    callback(enqueue.get("waitUrl"), "wait")


async def test_presence_is_not_asked_when_there_is_nobody_to_connect_to() -> None:
    adapter = channel()
    request = webhook(fixture("gather__speech"), route="gather")
    context = Context(online=True)
    root = DefusedET.fromstring((await adapter.respond(request, adapter.parse(request), context)).body)
    assert verbs(root)[:2] == ["Say", "Record"]
    assert context.asked == 0


async def test_agents_not_answering_leads_to_voicemail_or_the_queue() -> None:
    assert verbs(await answer(channel(agents=["+14155550111"]), "dial__no_answer"))[1] == "Record"
    assert verbs(await answer(channel(agents=["+14155550111"], queue="support"), "dial__no_answer")) == [
        "Enqueue"
    ]
    assert verbs(await answer(channel(agents=["+14155550111"]), "dial__completed")) == ["Hangup"]


async def test_queue_without_an_answer_leads_to_voicemail() -> None:
    assert verbs(await answer(channel(queue="support"), "queue__leave"))[1] == "Record"
    assert verbs(await answer(channel(queue="support"), "queue__bridged")) == ["Hangup"]


async def test_hold_plays_until_the_maximum_wait_then_leaves() -> None:
    adapter = channel(queue="support", max_queue_wait=120, hold_music_url="https://cdn.example.com/hold.mp3")
    root = await answer(adapter, "wait__in_queue")
    assert verbs(root) == ["Say", "Play"]
    assert root[1].text == "https://cdn.example.com/hold.mp3"
    assert verbs(await answer(adapter, "wait__too_long")) == ["Leave"]
    quiet = await answer(channel(queue="support", max_queue_wait=35), "wait__in_queue")
    assert verbs(quiet) == ["Say", "Pause"] and quiet[1].get("length") == "5"


async def test_after_the_recording_the_caller_hears_goodbye() -> None:
    root = await answer(channel(goodbye="Bye now."), "recorded__voicemail")
    assert [(v.tag, v.text) for v in root] == [("Say", "Bye now."), ("Hangup", None)]


@pytest.mark.parametrize("name", ["status__completed", "recording__completed", "transcription__completed"])
async def test_callbacks_get_empty_twiml(name: str) -> None:
    assert verbs(await answer(channel(agents=["+14155550111"]), name, online=True)) == []


# Settings and sending.


def test_settings_are_cleaned() -> None:
    settings, secrets = TwilioVoice.validate_config(
        {
            "account_sid": ACCOUNT_SID,
            "phone_number": "(501) 712-2661",
            "agents": ["415 555 0111", "client:alice"],
            "queue": "support",
        },
        {"auth_token": f" {AUTH_TOKEN} "},
    )
    assert settings["phone_number"] == "+15017122661"
    assert settings["agents"] == ["+14155550111", "client:alice"]
    assert settings["ring_timeout"] == 20 and settings["voicemail_max_length"] == 120
    assert secrets == {"auth_token": AUTH_TOKEN}
    assert channel_class("twilio_voice") is TwilioVoice


@pytest.mark.parametrize(
    ("settings", "secrets", "reason"),
    [
        ({"account_sid": "nope"}, {"auth_token": AUTH_TOKEN}, "account_sid"),
        ({"account_sid": ACCOUNT_SID}, {}, "auth_token"),
        ({"account_sid": ACCOUNT_SID, "agents": "+14155550111"}, {"auth_token": AUTH_TOKEN}, "list"),
        ({"account_sid": ACCOUNT_SID, "agents": ["not a number"]}, {"auth_token": AUTH_TOKEN}, "agents"),
        ({"account_sid": ACCOUNT_SID, "agents": ["client:a b"]}, {"auth_token": AUTH_TOKEN}, "client"),
        ({"account_sid": ACCOUNT_SID, "queue": "<Hangup/>"}, {"auth_token": AUTH_TOKEN}, "queue"),
        ({"account_sid": ACCOUNT_SID, "ring_timeout": 0}, {"auth_token": AUTH_TOKEN}, "ring_timeout"),
        ({"account_sid": ACCOUNT_SID, "ring_timeout": True}, {"auth_token": AUTH_TOKEN}, "ring_timeout"),
        ({"account_sid": ACCOUNT_SID, "hold_music_url": "ftp://x"}, {"auth_token": AUTH_TOKEN}, "hold_music"),
        ({"account_sid": ACCOUNT_SID, "transcribe": "yes"}, {"auth_token": AUTH_TOKEN}, "transcribe"),
        ({"account_sid": ACCOUNT_SID, "voice": "a voice"}, {"auth_token": AUTH_TOKEN}, "voice"),
    ],
)
def test_unusable_settings_are_refused(
    settings: dict[str, Any], secrets: dict[str, str], reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        TwilioVoice.validate_config(settings, secrets)


async def test_a_call_cannot_carry_a_written_reply() -> None:
    assert TwilioVoice.capabilities.replies is False
    message = OutboundMessage(message_id=1, recipient=Address("phone", CALLER), text="hello")
    with pytest.raises(PermanentDeliveryError) as raised:
        await channel().send(message)
    assert raised.value.code == REPLIES_UNSUPPORTED
