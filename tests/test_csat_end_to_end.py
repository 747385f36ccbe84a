"""CSAT through the whole gateway on both databases.

Surveys over the fake Twilio (SMS, WhatsApp window and template) and the test smarthost (email),
ratings by reply and by the signed link, no double survey, opt-out.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, update

from crm_core.consent import record_consent
from gateway.app import create_app
from gateway.keys import NOTIFIER
from inbox.csat import CsatSurveyor
from inbox.csat_models import CsatSurvey
from inbox.models import Conversation, Message
from parley.db import Database, utcnow
from parley.models import OutboxEvent
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant
from tests.fakes.twilio_api import FakeTwilioApi, load_fixture, post_signed
from tests.test_email_end_to_end import Mail, answer_to, customer_mail, mail

__all__ = ["mail"]

CONTENT_SID = "HX" + "0123456789abcdef" * 2
LINK = re.compile(r"http://127\.0\.0\.1:\d+/csat/[A-Za-z0-9_.\-]+")


@dataclass
class Hub:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    fake: FakeTwilioApi
    base_url: str

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.client.request(method, f"/api/v1{path}", json=body, headers=self.tenant.headers) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None

    async def inbox(self, channel: str, phone_number: str, **extra: Any) -> int:
        settings = {
            "account_sid": self.fake.account_sid,
            "phone_number": phone_number,
            "api_base_url": self.fake.base_url,
            **extra,
        }
        status, inbox = await self.api(
            "POST",
            "/inboxes",
            {
                "name": channel,
                "channel": channel,
                "settings": settings,
                "secrets": {"auth_token": self.fake.auth_token},
            },
        )
        assert status == 201, inbox
        return int(inbox["id"])

    async def post(self, inbox_id: int, params: Any) -> None:
        async with aiohttp.ClientSession() as session:
            result = await post_signed(
                session, f"{self.base_url}/webhooks/{inbox_id}", params, self.fake.auth_token
            )
        assert result.status == 200, result.text

    async def enable(self, **settings: Any) -> None:
        status, body = await self.api("PUT", "/csat/settings", {"enabled": True, **settings})
        assert status == 200, body

    async def resolve(self, conversation_id: int) -> None:
        status, body = await self.api("PATCH", f"/conversations/{conversation_id}", {"status": "resolved"})
        assert status == 200, body

    async def rows(self, model: Any, *where: Any) -> list[Any]:
        async with self.db.sessionmaker() as session:
            return list((await session.execute(select(model).where(*where).order_by(model.id))).scalars())

    async def events(self, topic: str) -> list[dict[str, Any]]:
        async with self.db.sessionmaker() as session:
            rows = await session.execute(
                select(OutboxEvent.payload).where(OutboxEvent.topic == topic).order_by(OutboxEvent.id)
            )
            return [dict(p) for p in rows.scalars()]

    def sent_bodies(self) -> list[str]:
        return [r.get("Body", [""])[0] for r in self.fake.requests]


def sms(sid: str, body: str) -> list[tuple[str, str]]:
    sids = ("MessageSid", "SmsSid", "SmsMessageSid")
    return [(k, sid if k in sids else body if k == "Body" else v) for k, v in load_fixture("inbound__sms")]


def whatsapp(sid: str, body: str) -> list[tuple[str, str]]:
    sids = ("MessageSid", "SmsSid", "SmsMessageSid")
    return [
        (k, sid if k in sids else body if k == "Body" else v)
        for k, v in load_fixture("inbound__text", "twilio_whatsapp")
    ]


@pytest_asyncio.fixture
async def hub(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_twilio: FakeTwilioApi,
) -> AsyncIterator[Hub]:
    tenant = await make_tenant(db, "acme")
    client = await aiohttp_client(
        create_app(settings), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    yield Hub(client, db, tenant, fake_twilio, f"http://127.0.0.1:{public_port}")

    async def idle() -> bool:
        async with db.sessionmaker() as session:
            pending = await session.execute(
                select(func.count()).select_from(OutboxEvent).where(OutboxEvent.completed_at.is_(None))
            )
            return int(pending.scalar_one()) == 0

    client.app[NOTIFIER].notify()
    await eventually(idle, timeout=30)


async def _survey(hub: Hub, count: int = 1) -> list[CsatSurvey]:
    async def sent() -> bool:
        surveys = await hub.rows(CsatSurvey)
        return len(surveys) >= count and all(s.message_id is not None for s in surveys)

    await eventually(sent)
    return await hub.rows(CsatSurvey)


async def test_an_sms_survey_is_rated_by_reply_then_changed_by_link(hub: Hub) -> None:
    inbox_id = await hub.inbox("twilio_sms", "+15017122661")
    await hub.enable(question="How did we do, <b>really</b>?")
    await hub.post(inbox_id, sms("SM" + "1" * 32, "Where is my order?"))
    [conversation] = await hub.rows(Conversation)
    await hub.resolve(conversation.id)

    [survey] = await _survey(hub)
    await eventually(lambda: any("Reply with a number from 1 to 5" in b for b in hub.sent_bodies()))
    [body] = [b for b in hub.sent_bodies() if "Reply with a number" in b]
    assert body.startswith("How did we do, <b>really</b>?")
    link = LINK.search(body)
    assert link is not None
    assert (survey.channel, survey.sent_via, survey.conversation_id) == (
        "twilio_sms",
        "message",
        conversation.id,
    )
    assert await hub.events("csat.requested") == [
        {
            "survey_id": survey.id,
            "conversation_id": conversation.id,
            "contact_id": survey.contact_id,
            "channel": "twilio_sms",
        }
    ]

    # The customer answers by text: the rating and comment are stored, the reply is kept as a message,
    # and the conversation it opened does not wait for an agent (nor is it surveyed again).
    await hub.post(inbox_id, sms("SM" + "2" * 32, "4 great service"))

    async def rated() -> bool:
        [row] = await hub.rows(CsatSurvey)
        return row.rating == 4

    await eventually(rated)
    [survey] = await hub.rows(CsatSurvey)
    assert (survey.comment, survey.rated_via) == ("great service", "reply")
    assert [m.body for m in await hub.rows(Message, Message.direction == "inbound")] == [
        "Where is my order?",
        "4 great service",
    ]

    async def quiet() -> bool:
        return all(c.status == "resolved" for c in await hub.rows(Conversation))

    await eventually(quiet)
    assert len(await hub.rows(Conversation)) == 2
    rated_events = await hub.events("csat.rated")
    assert rated_events == [
        {
            "survey_id": survey.id,
            "conversation_id": conversation.id,
            "contact_id": survey.contact_id,
            "ticket_id": None,
            "rating": 4,
            "comment": "great service",
            "agent_id": None,
        }
    ]

    # The link: a public page, the question escaped; the rating may be changed, not added to.
    async with aiohttp.ClientSession() as session:
        async with session.get(link.group(0)) as page:
            html = await page.text()
            assert page.status == 200
            assert "How did we do, &lt;b&gt;really&lt;/b&gt;?" in html and "<b>really" not in html
        for _ in range(2):  # a replayed post changes nothing more
            async with session.post(
                link.group(0), data={"rating": "5", "comment": "<script>x</script>"}
            ) as done:
                assert done.status == 200
                assert "&lt;script&gt;" in await done.text()
        async with session.get(link.group(0)[:-3] + "abc") as forged:
            assert forged.status == 404
        async with session.post(link.group(0), data={"rating": "9"}) as invalid:
            assert invalid.status == 422
    [survey] = await hub.rows(CsatSurvey)
    assert (survey.rating, survey.rated_via, survey.comment) == (5, "link", "<script>x</script>")

    async with hub.db.transaction() as session:
        await session.execute(update(CsatSurvey).values(expires_at=utcnow() - timedelta(minutes=1)))
    async with aiohttp.ClientSession() as session:
        async with session.get(link.group(0)) as expired:
            assert expired.status == 410
        async with session.post(link.group(0), data={"rating": "1"}) as expired:
            assert expired.status == 410
    [survey] = await hub.rows(CsatSurvey)
    assert survey.rating == 5


async def test_one_survey_per_resolution_and_none_after_an_opt_out(hub: Hub, settings: Settings) -> None:
    inbox_id = await hub.inbox("twilio_sms", "+15017122661")
    await hub.enable()
    await hub.post(inbox_id, sms("SM" + "3" * 32, "Hello"))
    [conversation] = await hub.rows(Conversation)
    await hub.resolve(conversation.id)
    await _survey(hub)
    # The same resolution delivered again (at-least-once) sends nothing more.
    surveyor = CsatSurveyor(hub.db, settings.secret_key, lambda: hub.base_url)
    async with hub.db.transaction() as session:
        assert await surveyor.send_survey(session, hub.tenant.tenant_id, conversation.id) is None
    assert len(await hub.rows(CsatSurvey)) == 1

    # A later resolution of a reopened conversation is surveyed again.
    status, _ = await hub.api("PATCH", f"/conversations/{conversation.id}", {"status": "open"})
    assert status == 200
    await hub.resolve(conversation.id)
    await _survey(hub, 2)

    # Opted out of SMS: no survey.
    async with hub.db.transaction() as session:
        await record_consent(
            session,
            tenant_id=hub.tenant.tenant_id,
            contact_id=conversation.contact_id,
            channel="sms",
            granted=False,
            source="test",
        )
    await hub.api("PATCH", f"/conversations/{conversation.id}", {"status": "open"})
    await hub.resolve(conversation.id)
    hub.client.app[NOTIFIER].notify()

    async def handled() -> bool:
        async with hub.db.sessionmaker() as session:
            pending = await session.execute(
                select(func.count()).select_from(OutboxEvent).where(OutboxEvent.completed_at.is_(None))
            )
            return int(pending.scalar_one()) == 0

    await eventually(handled)
    assert len(await hub.rows(CsatSurvey)) == 2


async def test_whatsapp_surveys_inside_the_window_as_text_and_outside_it_by_template(hub: Hub) -> None:
    inbox_id = await hub.inbox("twilio_whatsapp", "+14155238886")
    await hub.enable(
        whatsapp_template={"name": CONTENT_SID, "variables": {"1": "{link}"}},
    )
    await hub.post(inbox_id, whatsapp("SM" + "4" * 32, "Hi there"))
    [conversation] = await hub.rows(Conversation)
    await hub.resolve(conversation.id)
    await _survey(hub)
    await eventually(lambda: len(hub.fake.requests) >= 1)
    inside = hub.fake.requests[-1]
    assert "Reply with a number from 1 to 5" in inside["Body"][0] and "ContentSid" not in inside

    # Two days later the window is closed: the approved template goes, with the link as its variable.
    await hub.api("PATCH", f"/conversations/{conversation.id}", {"status": "open"})
    async with hub.db.transaction() as session:
        await session.execute(update(Conversation).values(last_inbound_at=utcnow() - timedelta(days=2)))
    await hub.resolve(conversation.id)
    surveys = await _survey(hub, 2)
    assert surveys[1].sent_via == "template"
    await eventually(lambda: len(hub.fake.requests) >= 2)
    outside = hub.fake.requests[-1]
    assert outside["ContentSid"] == [CONTENT_SID]
    variables = json.loads(outside["ContentVariables"][0])
    assert LINK.fullmatch(variables["1"])


async def test_an_email_survey_goes_in_the_thread_and_a_reply_rates_it(mail: Mail) -> None:
    headers = mail.tenant.headers
    async with mail.client.put("/api/v1/csat/settings", json={"enabled": True}, headers=headers) as response:
        assert response.status == 200
    await mail.send(customer_mail("My order 1001 has not arrived."))
    [conversation] = await mail.rows(Conversation)
    async with mail.client.patch(
        f"/api/v1/conversations/{conversation.id}", json={"status": "resolved"}, headers=headers
    ) as response:
        assert response.status == 200
    [received] = await mail.sent(1)
    text = received.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Reply with a number from 1 to 5" in text and LINK.search(text)
    assert received.message["Subject"] == "Re: Order 1001"

    await mail.send(answer_to(received.message, "5 - thank you!", message_id="<ann-2@example.com>"))

    async def rated() -> bool:
        [survey] = await mail.rows(CsatSurvey)
        return survey.rating == 5

    await eventually(rated)
    [survey] = await mail.rows(CsatSurvey)
    assert survey.comment == "thank you!" and survey.channel == "email"

    async def resolved_again() -> bool:
        [row] = await mail.rows(Conversation)
        return row.status == "resolved"

    await eventually(resolved_again)
    assert len(await mail.rows(CsatSurvey)) == 1
