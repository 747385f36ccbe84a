"""The ingest pipeline's one-statement path (PostgreSQL) writes exactly what the general path writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select, update

from channels.base import Address, Attachment, InboundMessage
from crm_core.models import Contact
from gateway import pipeline
from inbox.models import Conversation, Message
from inbox.runtime import InboxDirectory
from parley.crypto import SecretBox
from parley.db import Database
from parley.models import OutboxEvent
from tests.conftest import SECRET_KEY, make_tenant, make_twilio_inbox

SENDER = Address("phone", "+14155550100")


def message(n: int, **changes: Any) -> InboundMessage:
    fields: dict[str, Any] = {
        "provider_message_id": f"SM{n:032d}",
        "sender": SENDER,
        "recipient": Address("phone", "+15017122661"),
        "text": f"message {n} <b>&amp;</b> ✓",
        "attachments": (Attachment("https://example.com/a.jpg", "image/jpeg"),) if n % 2 else (),
        "extra": {"FromCity": "SAN FRANCISCO", "NumSegments": "1"},
    }
    return InboundMessage(**(fields | changes))


async def scenario(db: Database, tenant_name: str) -> dict[str, Any]:
    """Three messages from one sender: the first opens everything, the next two are 'returning'."""
    tenant = await make_tenant(db, tenant_name)
    inbox_id = await make_twilio_inbox(db, tenant.tenant_id, "http://127.0.0.1:9", "AC" + "0" * 32, "token")
    directory = InboxDirectory(db, SecretBox(SECRET_KEY))
    inbox = await directory.get(inbox_id)
    assert inbox is not None
    results = [await pipeline.ingest(db, inbox, [message(0)])]
    async with db.transaction() as session:  # the agent snoozed it; the customer's next message wakes it
        await session.execute(
            update(Conversation).where(Conversation.inbox_id == inbox_id).values(status="snoozed")
        )
    # The first message came without a name (SMS); a later one names the sender (WhatsApp, Telegram).
    results += [await pipeline.ingest(db, inbox, [message(1)])]
    results += [await pipeline.ingest(db, inbox, [message(2, sender_name="Ana Lima")])]
    results += [await pipeline.ingest(db, inbox, [message(3, sender_name="Someone Else")])]
    async with db.sessionmaker() as session:
        conversation = (
            await session.execute(select(Conversation).where(Conversation.inbox_id == inbox_id))
        ).scalar_one()
        messages = (
            await session.execute(select(Message).where(Message.inbox_id == inbox_id).order_by(Message.id))
        ).scalars()
        events = (
            await session.execute(
                select(OutboxEvent).where(OutboxEvent.tenant_id == tenant.tenant_id).order_by(OutboxEvent.id)
            )
        ).scalars()
        contact_name = (
            await session.execute(select(Contact.name).where(Contact.id == conversation.contact_id))
        ).scalar_one()
        ids = {"conversation": conversation.id, "contact": conversation.contact_id, "inbox": inbox_id}
        ids |= {f"message{i}": m.id for i, m in enumerate(messages)}
        await session.commit()

    refers_to = {
        "conversation_id": "conversation",
        "contact_id": "contact",
        "sender_id": "contact",
        "inbox_id": "inbox",
    }

    def relabel(field: str, value: Any) -> Any:
        """Ids differ between the two runs; what they point at must not."""
        if field == "message_id":
            return next(name for name, id_ in ids.items() if name.startswith("message") and id_ == value)
        if field in refers_to:
            return refers_to[field] if ids[refers_to[field]] == value else f"other {field} {value}"
        return value

    async with db.sessionmaker() as session:
        rows = (
            await session.execute(select(Message).where(Message.inbox_id == inbox_id).order_by(Message.id))
        ).scalars()
        message_rows = [
            {
                column: relabel(column, getattr(m, column))
                for column in (
                    "tenant_id",
                    "conversation_id",
                    "direction",
                    "sender_type",
                    "sender_id",
                    "body",
                    "attachments",
                    "provider_message_id",
                    "status",
                    "attempts",
                    "extra",
                    "error_code",
                )
            }
            for m in rows
        ]
    await directory.close()
    return {
        "contact_name": contact_name,
        "results": [(len(r.stored), r.duplicates) for r in results],
        "conversation": (
            conversation.status,
            conversation.last_message_at is not None,
            conversation.last_inbound_at == conversation.last_message_at,
        ),
        "messages": [row | {"tenant_id": "tenant"} for row in message_rows],
        "events": [(e.topic, {k: relabel(k, v) for k, v in e.payload.items()}, e.handled) for e in events],
    }


async def test_both_paths_write_the_same_rows_and_events(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    usual = await scenario(db, "usual")
    monkeypatch.setattr(pipeline, "_fits_fast_path", lambda event, inbox: False)
    general = await scenario(db, "general")
    assert usual == general
    assert usual["conversation"] == ("open", True, True)
    assert [topic for topic, _, _ in usual["events"]] == [
        "contact.created",
        "conversation.opened",
        "message.received",
        "message.received",
        "message.media_pending",  # Twilio media is copied into the media store afterwards
        "message.received",
        "message.received",
        "message.media_pending",
    ]
    # A name fills an unnamed contact once; a later, different one does not overwrite it.
    assert usual["contact_name"] == "Ana Lima"
    assert usual["events"][-2][1] == {
        "message_id": "message3",
        "conversation_id": "conversation",
        "inbox_id": "inbox",
        "contact_id": "contact",
    }


async def test_concurrent_redeliveries_from_a_returning_sender_store_one_message(db: Database) -> None:
    tenant = await make_tenant(db, "acme")
    inbox_id = await make_twilio_inbox(db, tenant.tenant_id, "http://127.0.0.1:9", "AC" + "0" * 32, "token")
    directory = InboxDirectory(db, SecretBox(SECRET_KEY))
    inbox = await directory.get(inbox_id)
    assert inbox is not None
    await pipeline.ingest(db, inbox, [message(1)])
    results = await asyncio.gather(*(pipeline.ingest(db, inbox, [message(2)]) for _ in range(20)))
    assert sum(len(r.stored) for r in results) == 1
    assert sum(r.duplicates for r in results) == 19
    async with db.sessionmaker() as session:
        stored = (
            (await session.execute(select(Message.provider_message_id).order_by(Message.id))).scalars().all()
        )
    assert stored == [message(1).provider_message_id, message(2).provider_message_id]
    await directory.close()


def test_a_bare_number_picks_an_option_only_where_buttons_were_shown_as_a_numbered_list() -> None:
    from channels.telegram import Telegram
    from channels.twilio_sms import TwilioSms
    from inbox.runtime import InboxRuntime

    sms = TwilioSms.from_settings(
        {"account_sid": "AC" + "0" * 32, "phone_number": "+15017122661"}, {"auth_token": "t"}
    )
    telegram = Telegram.from_settings({}, {"bot_token": "123456:ABCdef", "webhook_secret": "s3cret"})
    typed_two = message(5, text="2")
    assert pipeline._option_number(InboxRuntime(1, 1, "twilio_sms", sms, {}), typed_two) == 2
    assert pipeline._option_number(InboxRuntime(2, 1, "telegram", telegram, {}), typed_two) is None
