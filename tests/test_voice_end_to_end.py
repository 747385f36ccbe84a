"""Phone calls through the whole gateway, on both databases: Twilio's requests signed and sent to the
URLs our own TwiML names, the TwiML read with an XML parser, the timeline read back through the API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

import aiohttp
import pytest_asyncio
from aiohttp.test_utils import TestClient
from defusedxml import ElementTree as DefusedET
from sqlalchemy import func, select

from crm_core.models import ChannelIdentity, Contact
from gateway.app import create_app
from inbox.models import Conversation, Message
from parley.db import Database
from parley.models import OutboxEvent
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant
from tests.fakes.twilio_api import FakeTwilioApi, load_fixture, post_signed, sign
from tests.fakes.whatsapp_cloud_api import load_fixture as load_cloud_fixture
from tests.fakes.whatsapp_cloud_api import post_webhook

VOICE_NUMBER = "+15017122661"
CALLER = "+14155550100"  # also writes on SMS and WhatsApp in the fixtures of those channels
AGENT_PHONE = "+14155550111"
CALL = "CA5f4e3d2c1b0a99887766554433221100"


def voice(name: str) -> list[tuple[str, str]]:
    return load_fixture(name, "twilio_voice")


@dataclass
class Answer:
    status: int
    body: str
    content_type: str

    @property
    def twiml(self) -> ET.Element:
        assert self.status == 200, self.body
        assert self.content_type == "text/xml"
        root = DefusedET.fromstring(self.body)
        assert root.tag == "Response"
        return root

    @property
    def verbs(self) -> list[str]:
        return [child.tag for child in self.twiml]


@dataclass
class Line:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    fake: FakeTwilioApi
    base_url: str

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.client.request(
            method, f"/api/v1{path}", json=body, headers=self.tenant.headers
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def create_inbox(self, channel: str, **settings: Any) -> dict[str, Any]:
        status, inbox = await self.api(
            "POST",
            "/inboxes",
            {
                "name": f"{channel} line",
                "channel": channel,
                "settings": {"account_sid": self.fake.account_sid, "api_base_url": self.fake.base_url}
                | settings,
                "secrets": {"auth_token": self.fake.auth_token},
            },
        )
        assert status == 201, inbox
        return dict(inbox)

    async def voice_inbox(self, **settings: Any) -> dict[str, Any]:
        settings = {"phone_number": VOICE_NUMBER} | settings
        status, inbox = await self.api(
            "POST",
            "/inboxes",
            {
                "name": "Phone line",
                "channel": "twilio_voice",
                "settings": {"account_sid": self.fake.account_sid, "api_base_url": self.fake.base_url}
                | settings,
                "secrets": {"auth_token": self.fake.auth_token},
            },
        )
        assert status == 201, inbox
        return dict(inbox)

    async def twilio(self, url: str | None, params: Any, *, signature: str | None = None) -> Answer:
        """POST `params` to `url` signed as Twilio signs it: the URL exactly as given, then the form."""
        assert url is not None
        async with aiohttp.ClientSession() as session:
            result = await post_signed(session, url, params, self.fake.auth_token, signature=signature)
        return Answer(result.status, result.text, result.content_type)

    async def presence(self, presence: str) -> None:
        status, me = await self.api("PUT", "/me/presence", {"presence": presence})
        assert status == 200, me

    async def count(self, model: Any, *where: Any) -> int:
        async with self.db.sessionmaker() as session:
            stmt = select(func.count()).select_from(model).where(*where)
            return int((await session.execute(stmt)).scalar_one())

    async def conversations(self, inbox_id: int) -> list[dict[str, Any]]:
        status, page = await self.api("GET", f"/conversations?inbox_id={inbox_id}")
        assert status == 200, page
        return list(page["data"])

    async def timeline(self, conversation_id: int) -> list[dict[str, Any]]:
        status, page = await self.api("GET", f"/conversations/{conversation_id}/messages")
        assert status == 200, page
        return list(page["data"])


@pytest_asyncio.fixture
async def line(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_twilio: FakeTwilioApi,
) -> AsyncIterator[Line]:
    tenant = await make_tenant(db, "acme")  # an admin: answers calls when online
    client = await aiohttp_client(
        create_app(settings), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    yield Line(client, db, tenant, fake_twilio, f"http://127.0.0.1:{public_port}")


async def test_call_with_nobody_online_ends_in_voicemail_on_the_callers_timeline(line: Line) -> None:
    inbox = await line.voice_inbox(agents=[AGENT_PHONE], greeting="Welcome to Acme.")

    # The phone number's "A call comes in" webhook.
    greeting = (await line.twilio(inbox["webhook_url"], voice("incoming__call"))).twiml
    gather = greeting.find("Gather")
    assert gather is not None and gather.get("input") == "speech dtmf"
    assert [say.text for say in gather.iter("Say")] == ["Welcome to Acme."]

    # The caller speaks; Twilio posts the transcript to the Gather's action. Nobody is online.
    after_speech = await line.twilio(gather.get("action"), voice("gather__speech"))
    assert after_speech.verbs == ["Say", "Record", "Say", "Hangup"]
    record = after_speech.twiml.find("Record")
    assert record is not None and record.get("transcribe") == "true"

    # The caller records and hangs up: the Record action, then the recording and transcription callbacks.
    goodbye = await line.twilio(record.get("action"), voice("recorded__voicemail"))
    assert goodbye.verbs == ["Say", "Hangup"]
    recording_url = line.fake.add_recording(b"ID3 voicemail audio")
    recorded = [(k, recording_url if k == "RecordingUrl" else v) for k, v in voice("recording__completed")]
    assert (await line.twilio(record.get("recordingStatusCallback"), recorded)).verbs == []
    transcribed = await line.twilio(record.get("transcribeCallback"), voice("transcription__completed"))
    assert transcribed.verbs == []
    # And the number's call status callback, once the call is over.
    assert (await line.twilio(inbox["status_callback_url"], voice("status__completed"))).verbs == []

    [conversation] = await line.conversations(inbox["id"])
    assert conversation["status"] == "open"

    async def recording_copied() -> bool:
        timeline = await line.timeline(conversation["id"])
        return any("/media/" in a["url"] for m in timeline for a in m["attachments"])

    await eventually(recording_copied)  # into the media store, after the callback was answered
    timeline = await line.timeline(conversation["id"])
    assert [m["body"] for m in timeline] == [
        f"Incoming call from {CALLER}",
        "Hi, my parcel arrived damaged and I would like a refund.",
        "Voicemail (0:42)",
        "Hi, this is Alex. My parcel arrived damaged, please call me back.",
        "Call completed · 2:13",
    ]
    assert all(m["direction"] == "inbound" for m in timeline)
    incoming, _, recording, transcript, completed = timeline
    assert incoming["content_attributes"]["call"] == {
        "call_id": CALL,
        "status": "ringing",
        "direction": "inbound",
        "duration": None,
        "leg": None,
    }
    assert recording["content_attributes"]["recording"]["duration"] == 42
    assert recording["attachments"][0]["content_type"] == "audio/mpeg"
    assert recording["attachments"][0]["filename"].endswith(".mp3")
    async with line.client.get(recording["attachments"][0]["url"].removeprefix(line.base_url)) as response:
        assert await response.read() == b"ID3 voicemail audio"
    assert [path for path, _ in line.fake.media_requests] == [
        f"{recording_url.removeprefix(line.fake.base_url)}.mp3"
    ]
    assert transcript["content_attributes"]["voicemail"]["transcript"] == transcript["body"]
    assert completed["content_attributes"]["call"]["duration"] == 133

    status, contact = await line.api("GET", f"/contacts/{conversation['contact_id']}")
    assert status == 200 and contact["phone"] == CALLER
    assert await line.count(Contact) == 1


async def test_call_with_an_agent_online_rings_them_then_falls_back_to_voicemail(line: Line) -> None:
    inbox = await line.voice_inbox(agents=[AGENT_PHONE, "client:alice"], ring_timeout=15)
    await line.presence("online")

    gather = (await line.twilio(inbox["webhook_url"], voice("incoming__call"))).twiml.find("Gather")
    assert gather is not None
    dialled = (await line.twilio(gather.get("action"), voice("gather__speech"))).twiml
    dial = dialled.find("Dial")
    assert dial is not None and dial.get("timeout") == "15"
    assert [(n.tag, n.text) for n in dial] == [("Number", AGENT_PHONE), ("Client", "alice")]

    # Nobody picks up: the Dial action hands the caller to voicemail.
    unanswered = await line.twilio(dial.get("action"), voice("dial__no_answer"))
    assert unanswered.verbs == ["Say", "Record", "Say", "Hangup"]

    [conversation] = await line.conversations(inbox["id"])
    assert [m["body"] for m in await line.timeline(conversation["id"])][-1] == "No agent answered"


async def test_call_with_an_agent_online_waits_in_the_queue_until_it_gives_up(line: Line) -> None:
    inbox = await line.voice_inbox(queue="support", max_queue_wait=60)
    await line.presence("online")

    # No input to the greeting: Twilio follows the Redirect.
    redirect = (await line.twilio(inbox["webhook_url"], voice("incoming__call"))).twiml.find("Redirect")
    assert redirect is not None
    enqueue = (await line.twilio(redirect.text, voice("connect__no_input"))).twiml.find("Enqueue")
    assert enqueue is not None and enqueue.text == "support"
    hold = await line.twilio(enqueue.get("waitUrl"), voice("wait__in_queue"))
    assert hold.verbs == ["Say", "Pause"]
    assert (await line.twilio(enqueue.get("waitUrl"), voice("wait__too_long"))).verbs == ["Leave"]
    after_queue = await line.twilio(enqueue.get("action"), voice("queue__leave"))
    assert after_queue.verbs == ["Say", "Record", "Say", "Hangup"]


async def test_an_agent_going_offline_sends_the_next_caller_to_voicemail(line: Line) -> None:
    inbox = await line.voice_inbox(agents=[AGENT_PHONE])
    await line.presence("online")
    await line.presence("away")
    gather = (await line.twilio(inbox["webhook_url"], voice("incoming__call"))).twiml.find("Gather")
    assert gather is not None
    assert "Dial" not in (await line.twilio(gather.get("action"), voice("gather__speech"))).verbs


async def test_retried_callbacks_are_stored_once_and_answered_the_same(line: Line) -> None:
    inbox = await line.voice_inbox()
    first = await line.twilio(inbox["webhook_url"], voice("incoming__call"))
    retried = await line.twilio(inbox["webhook_url"], voice("incoming__call"))
    assert retried.body == first.body  # a retry of the incoming call still gets its TwiML

    record_callback = f"{inbox['webhook_url']}/recording?caller=%2B14155550100"
    callbacks = [
        (inbox["status_callback_url"], voice("status__completed")),
        (inbox["status_callback_url"], voice("status__ringing")),  # the same event as the incoming call
        (record_callback, voice("recording__completed")),
        (f"{inbox['webhook_url']}/transcription", voice("transcription__completed")),
    ]
    for url, params in callbacks:
        answers = await asyncio.gather(*(line.twilio(url, params) for _ in range(5)))
        assert {a.status for a in answers} == {200}

    assert await line.count(Message) == 4  # incoming, completed, recording, transcript
    assert await line.count(Conversation) == 1
    assert await line.count(OutboxEvent, OutboxEvent.topic == "message.received") == 4


async def test_late_call_events_join_the_resolved_conversation_without_reopening_it(line: Line) -> None:
    inbox = await line.voice_inbox()
    await line.twilio(inbox["webhook_url"], voice("incoming__call"))
    [conversation] = await line.conversations(inbox["id"])
    status, resolved = await line.api("PATCH", f"/conversations/{conversation['id']}", {"status": "resolved"})
    assert status == 200 and resolved["status"] == "resolved"

    # The call's status and voicemail arrive after an agent resolved the conversation.
    assert (await line.twilio(inbox["status_callback_url"], voice("status__completed"))).status == 200
    transcription = f"{inbox['webhook_url']}/transcription"
    assert (await line.twilio(transcription, voice("transcription__completed"))).status == 200

    [still] = await line.conversations(inbox["id"])
    assert still["id"] == conversation["id"] and still["status"] == "resolved"
    assert still["last_inbound_at"] == conversation["last_inbound_at"]
    assert len(await line.timeline(conversation["id"])) == 3

    # A new call from the same number is the customer reaching out again: a new conversation.
    again = [(k, "CA" + "1" * 32 if k == "CallSid" else v) for k, v in voice("incoming__call")]
    assert (await line.twilio(inbox["webhook_url"], again)).status == 200
    assert [c["status"] for c in await line.conversations(inbox["id"])] == ["open", "resolved"]


async def test_one_number_calling_texting_and_on_whatsapp_is_one_contact(line: Line) -> None:
    sms = await line.create_inbox("twilio_sms", phone_number=VOICE_NUMBER)
    whatsapp = await line.create_inbox("twilio_whatsapp", phone_number="+14155238886")
    status, cloud = await line.api(
        "POST",
        "/inboxes",
        {
            "name": "WhatsApp Cloud",
            "channel": "whatsapp_cloud",
            "settings": {"phone_number_id": "106540352242922"},
            "secrets": {"access_token": "token", "app_secret": "meta-app-secret", "verify_token": "v"},
        },
    )
    assert status == 201, cloud
    phone = await line.voice_inbox()

    assert (await line.twilio(phone["webhook_url"], voice("incoming__call"))).status == 200
    assert (await line.twilio(sms["webhook_url"], load_fixture("inbound__sms"))).status == 200
    wa = load_fixture("inbound__text", "twilio_whatsapp")
    assert (await line.twilio(whatsapp["webhook_url"], wa)).status == 200
    # Meta's documented text message, from the caller's number (wa_id is E.164 without the "+").
    body = load_cloud_fixture("message__text").replace(b"16505551234", CALLER[1:].encode())
    async with aiohttp.ClientSession() as session:
        assert (await post_webhook(session, cloud["webhook_url"], body, "meta-app-secret")).status == 200

    assert await line.count(Contact) == 1
    assert await line.count(ChannelIdentity) == 1  # kind "phone", +14155550100, on all four
    async with line.db.sessionmaker() as session:
        rows = (await session.execute(select(Conversation.inbox_id, Conversation.contact_id))).all()
    inboxes = [sms["id"], whatsapp["id"], cloud["id"], phone["id"]]
    assert sorted(inbox_id for inbox_id, _ in rows) == sorted(inboxes)
    assert len({contact_id for _, contact_id in rows}) == 1


async def test_unsigned_forged_and_malformed_requests_store_nothing(line: Line) -> None:
    inbox = await line.voice_inbox()
    events_before = await line.count(OutboxEvent)  # creating the inbox announced it
    url = inbox["webhook_url"]
    assert (await line.twilio(url, voice("incoming__call"), signature="")).status == 403
    assert (await line.twilio(url, voice("incoming__call"), signature="Zm9yZ2Vk")).status == 403
    # A caller swapped in a callback URL's query string breaks Twilio's signature of that URL.
    recording = voice("recording__completed")
    signature = sign(f"{url}/recording?caller=%2B14155550100", recording, line.fake.auth_token)
    forged = await line.twilio(f"{url}/recording?caller=%2B19005550199", recording, signature=signature)
    assert forged.status == 403
    for route, name in [
        ("", "malformed__no_call_sid"),
        ("", "malformed__no_from"),
        ("status", "malformed__unknown_status"),
        ("status", "malformed__bad_duration"),
        ("recording?caller=%2B14155550100", "malformed__recording_without_url"),
        ("recording", "recording__completed"),  # no From and no caller in the URL
        ("nonsense", "incoming__call"),
    ]:
        answer = await line.twilio(f"{url}/{route}" if route else url, voice(name))
        assert answer.status == 400, (route, name, answer.body)
        assert '"malformed_payload"' in answer.body
    for model in (Message, Contact, Conversation):
        assert await line.count(model) == 0
    assert await line.count(OutboxEvent) == events_before


async def test_a_written_reply_to_a_call_is_refused_before_anything_is_queued(line: Line) -> None:
    inbox = await line.voice_inbox()
    await line.twilio(inbox["webhook_url"], voice("incoming__call"))
    [conversation] = await line.conversations(inbox["id"])
    status, error = await line.api("POST", f"/conversations/{conversation['id']}/messages", {"body": "Hi!"})
    assert status == 422 and error["error"]["code"] == "replies_unsupported", error
    assert await line.count(Message, Message.direction == "outbound") == 0


async def test_events_of_a_call_never_seen_open_the_conversation_themselves(line: Line) -> None:
    inbox = await line.voice_inbox()
    # The incoming-call webhook was lost (Twilio reached a fallback URL, say): the status callback
    # is then the first Parley hears of the call, and is stored like a first message.
    assert (await line.twilio(inbox["status_callback_url"], voice("status__completed"))).status == 200
    [conversation] = await line.conversations(inbox["id"])
    assert conversation["status"] == "open"
    assert [m["body"] for m in await line.timeline(conversation["id"])] == ["Call completed · 2:13"]


async def test_the_same_call_on_two_tenants_lines_stays_apart(line: Line) -> None:
    ours = await line.voice_inbox()
    other = await make_tenant(line.db, "globex")
    theirs = Line(line.client, line.db, other, line.fake, line.base_url)
    their_inbox = await theirs.voice_inbox()

    await line.twilio(ours["webhook_url"], voice("incoming__call"))
    await theirs.twilio(their_inbox["webhook_url"], voice("incoming__call"))
    await theirs.twilio(their_inbox["status_callback_url"], voice("status__completed"))

    [our_conversation] = await line.conversations(ours["id"])
    [their_conversation] = await theirs.conversations(their_inbox["id"])
    assert our_conversation["contact_id"] != their_conversation["contact_id"]
    assert len(await line.timeline(our_conversation["id"])) == 1
    assert len(await theirs.timeline(their_conversation["id"])) == 2
    assert await theirs.conversations(ours["id"]) == []
    assert (await theirs.api("GET", f"/conversations/{our_conversation['id']}"))[0] == 404
