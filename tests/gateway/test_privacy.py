"""Privacy on both databases: consent (keywords, API, one-click unsubscribe), export, erasure, audit log."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, text

from crm_core.models import ChannelIdentity, Consent, Contact, ContactMerge, ContactTag
from gateway.app import create_app
from gateway.keys import MEDIA, NOTIFIER
from inbox.models import Conversation, ConversationStatus, Message, MessageStatus
from inbox.privacy import referring_tables
from inbox.retention import sweep_retention
from parley.audit import AuditEntry
from parley.db import Base, Database, utcnow
from parley.models import OutboxEvent, Role
from parley.settings import Settings
from parley.unsubscribe import UnsubscribeSigner
from tests.conftest import SECRET_KEY, TenantAccess, eventually, make_tenant, make_twilio_inbox
from tests.fakes.twilio_api import FakeTwilioApi, load_fixture, post_signed

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

PRIVACY_ROUTES = {
    ("get", "/api/v1/audit-log"),
    ("get", "/api/v1/contacts/{contact_id}/consent"),
    ("put", "/api/v1/contacts/{contact_id}/consent"),
    ("get", "/api/v1/contacts/{contact_id}/export"),
    ("post", "/api/v1/contacts/{contact_id}/erase"),
    ("get", "/api/v1/retention"),
    ("put", "/api/v1/retention"),
    ("get", "/api/v1/retention/stats"),
}


@dataclass
class World:
    client: TestClient[Any, Any]
    db: Database
    admin: TenantAccess
    inbox_id: int
    fake: FakeTwilioApi
    base_url: str

    async def call(
        self, method: str, path: str, *, who: TenantAccess | None = None, body: Any = None, params: Any = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        async with self.client.request(
            method, f"/api/v1{path}", data=data, params=params, headers=(who or self.admin).headers
        ) as response:
            raw = await response.text()
            return response.status, json.loads(raw) if raw else None

    async def sms(self, body: str, sid: str) -> int:
        ids = ("MessageSid", "SmsSid", "SmsMessageSid")
        pairs = [
            (k, sid if k in ids else body if k == "Body" else v) for k, v in load_fixture("inbound__sms")
        ]
        async with aiohttp.ClientSession() as session:
            result = await post_signed(
                session, f"{self.base_url}/webhooks/{self.inbox_id}", pairs, self.fake.auth_token
            )
        return result.status

    async def scalar(self, stmt: Any) -> Any:
        async with self.db.sessionmaker() as session:
            return (await session.execute(stmt)).scalar()

    async def audit(self, action: str) -> list[AuditEntry]:
        async with self.db.sessionmaker() as session:
            rows = await session.execute(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
            )
            return list(rows.scalars())

    async def events(self, topic: str) -> list[dict[str, Any]]:
        async with self.db.sessionmaker() as session:
            rows = await session.execute(select(OutboxEvent.payload).where(OutboxEvent.topic == topic))
            return [dict(p) for p in rows.scalars()]


@pytest_asyncio.fixture
async def world(
    aiohttp_client: ClientFactory,
    db: Database,
    settings: Settings,
    public_port: int,
    fake_twilio: FakeTwilioApi,
) -> AsyncIterator[World]:
    admin = await make_tenant(db, "acme")
    inbox_id = await make_twilio_inbox(
        db, admin.tenant_id, fake_twilio.base_url, fake_twilio.account_sid, fake_twilio.auth_token
    )
    client = await aiohttp_client(
        create_app(settings), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    yield World(client, db, admin, inbox_id, fake_twilio, f"http://127.0.0.1:{public_port}")

    # Let the dispatcher finish what the test set off before the app stops (see tests/crm/conftest.py).
    client.app[NOTIFIER].notify()

    async def idle() -> bool:
        async with db.sessionmaker() as session:
            pending = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.completed_at.is_(None))
            return int((await session.execute(pending)).scalar_one()) == 0

    await eventually(idle, timeout=30)


async def sms_contact(world: World) -> int:
    contact_id = await world.scalar(
        select(ChannelIdentity.contact_id).where(ChannelIdentity.address == "+14155550100")
    )
    assert contact_id is not None
    return int(contact_id)


async def sms_consent(world: World) -> bool | None:
    return await world.scalar(
        select(Consent.granted).where(Consent.channel == "sms", Consent.purpose == "all")
    )


# --- keywords ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["STOP", "stopall", " Unsubscribe. ", "cancel", "END", "quit"])
async def test_a_stop_keyword_over_the_signed_webhook_opts_out_and_start_opts_back_in(
    world: World, stop: str
) -> None:
    assert await world.sms("Hello", "SM" + "1" * 32) == 200
    assert await sms_consent(world) is None
    assert await world.sms(stop, "SM" + "2" * 32) == 200
    assert await sms_consent(world) is False
    contact_id = await sms_contact(world)
    entry = (await world.audit("consent.changed"))[-1]
    assert (entry.actor_type, entry.actor_id, entry.object_id) == ("contact", contact_id, contact_id)
    assert entry.details == {
        "channel": "sms",
        "purpose": "all",
        "granted": False,
        "source": f"keyword:{stop.strip().upper()}",
    }
    assert {
        "contact_id": contact_id,
        "channel": "sms",
        "purpose": "all",
        "granted": False,
    } in await world.events("contact.consent_changed")
    # The same keyword again changes nothing and is not audited twice.
    assert await world.sms(stop, "SM" + "3" * 32) == 200
    assert len(await world.audit("consent.changed")) == 1

    assert await world.sms("unstop", "SM" + "4" * 32) == 200
    assert await sms_consent(world) is True
    status, consent = await world.call("GET", f"/contacts/{contact_id}/consent")
    assert status == 200
    assert [(c["channel"], c["purpose"], c["granted"], c["source"]) for c in consent["data"]] == [
        ("sms", "all", True, "keyword:UNSTOP")
    ]
    assert [e.details["granted"] for e in await world.audit("consent.changed")] == [False, True]


async def test_a_keyword_inside_a_sentence_changes_no_consent(world: World) -> None:
    assert await world.sms("please stop calling me at work", "SM" + "1" * 32) == 200
    assert await sms_consent(world) is None
    assert await world.audit("consent.changed") == []


# --- consent API ------------------------------------------------------------------------------------


async def test_consent_api_records_per_channel_and_purpose_audited_and_scoped(
    world: World, db: Database
) -> None:
    assert await world.sms("Hello", "SM" + "1" * 32) == 200
    contact_id = await sms_contact(world)
    body = {"channel": "email", "purpose": "marketing", "granted": False, "source": "phone call"}
    status, answer = await world.call("PUT", f"/contacts/{contact_id}/consent", body=body)
    assert status == 200, answer
    assert [(c["channel"], c["purpose"], c["granted"], c["source"]) for c in answer["data"]] == [
        ("email", "marketing", False, "api:phone call")
    ]
    (entry,) = await world.audit("consent.changed")
    assert (entry.actor_type, entry.actor_id) == ("api_token", world.admin.user_id)
    assert entry.ip == "127.0.0.1"
    assert {"contact_id": contact_id, "channel": "email", "purpose": "marketing", "granted": False} in (
        await world.events("contact.consent_changed")
    )

    status, _ = await world.call(
        "PUT", f"/contacts/{contact_id}/consent", body={**body, "purpose": "newsletters"}
    )
    assert status == 422
    marketer = await make_tenant(db, "acme", role=Role.MARKETER, email="m@acme.example.com")
    status, _ = await world.call("PUT", f"/contacts/{contact_id}/consent", who=marketer, body=body)
    assert status == 403
    status, seen = await world.call("GET", f"/contacts/{contact_id}/consent", who=marketer)
    assert status == 200 and len(seen["data"]) == 1
    other = await make_tenant(db, "globex")
    for method, payload in (("GET", None), ("PUT", body)):
        status, _ = await world.call(method, f"/contacts/{contact_id}/consent", who=other, body=payload)
        assert status == 404
    assert len(await world.audit("consent.changed")) == 1


# --- one-click unsubscribe (RFC 8058) ---------------------------------------------------------------


async def test_one_click_post_records_the_opt_out_without_login(world: World) -> None:
    assert await world.sms("Hello", "SM" + "1" * 32) == 200
    contact_id = await sms_contact(world)
    token = UnsubscribeSigner(SECRET_KEY).token(
        tenant_id=world.admin.tenant_id, contact_id=contact_id, channel="email", purpose="marketing"
    )
    # A GET (a link scanner, or the person clicking) only asks.
    async with world.client.get(f"/u/{token}") as response:
        page = await response.text()
        assert response.status == 200
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert 'name="List-Unsubscribe" value="One-Click"' in page and 'method="post"' in page
    assert await world.scalar(select(func.count()).select_from(Consent)) == 0

    async with world.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}) as response:
        assert response.status == 200
        assert "You are unsubscribed" in await response.text()
    consent = await world.scalar(select(Consent).where(Consent.contact_id == contact_id))
    assert (consent.channel, consent.purpose, consent.granted, consent.source) == (
        "email",
        "marketing",
        False,
        "one-click-unsubscribe",
    )
    (entry,) = await world.audit("consent.changed")
    assert (entry.actor_type, entry.actor_id) == ("contact", contact_id)
    # A mail client retrying is harmless.
    async with world.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}) as response:
        assert response.status == 200
    assert len(await world.audit("consent.changed")) == 1


async def test_forged_expired_and_malformed_unsubscribe_requests_change_nothing(world: World) -> None:
    assert await world.sms("Hello", "SM" + "1" * 32) == 200
    contact_id = await sms_contact(world)
    grant = {
        "tenant_id": world.admin.tenant_id,
        "contact_id": contact_id,
        "channel": "email",
        "purpose": "all",
    }
    good = UnsubscribeSigner(SECRET_KEY).token(**grant)  # type: ignore[arg-type]
    payload, _, signature = good.partition(".")
    other_contact = UnsubscribeSigner(SECRET_KEY).token(**{**grant, "contact_id": contact_id + 1})  # type: ignore[arg-type]
    refused = [
        UnsubscribeSigner("another key").token(**grant),  # type: ignore[arg-type]
        f"{other_contact.partition('.')[0]}.{signature}",  # someone else's payload, this signature
        f"{payload}.{signature[:-2]}AA",
        UnsubscribeSigner(SECRET_KEY).token(**grant, now=time.time() - 500 * 24 * 3600),  # type: ignore[arg-type]
        "not-a-token",
    ]
    for token in refused:
        async with world.client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}) as response:
            assert response.status == 400, token
        async with world.client.get(f"/u/{token}") as response:
            assert response.status == 400
            assert "does not work" in await response.text()
    async with world.client.post(f"/u/{good}", data={"something": "else"}) as response:
        assert response.status == 400
    assert await world.scalar(select(func.count()).select_from(Consent)) == 0
    # A valid token for a contact of another tenant finds nobody.
    wrong_tenant = UnsubscribeSigner(SECRET_KEY).token(**{**grant, "tenant_id": world.admin.tenant_id + 1})  # type: ignore[arg-type]
    async with world.client.post(f"/u/{wrong_tenant}", data={"List-Unsubscribe": "One-Click"}) as response:
        assert response.status == 404
    assert await world.scalar(select(func.count()).select_from(Consent)) == 0
    assert await world.audit("consent.changed") == []


# --- export -----------------------------------------------------------------------------------------


async def seed_contact(world: World, name: str, phone: str, email: str, text_: str) -> dict[str, Any]:
    """A contact with identities, a tag, a consent, a deal and a conversation holding a message and a file."""
    status, contact = await world.call(
        "POST", "/contacts", body={"name": name, "phone": phone, "email": email, "tags": [f"tag-{name}"]}
    )
    assert status == 201, contact
    stored = await world.client.app[MEDIA].put(
        world.admin.tenant_id, f"file of {name}".encode(), filename=f"{name}.txt", content_type="text/plain"
    )
    async with world.db.transaction() as session:
        identity = (
            await session.execute(
                select(ChannelIdentity).where(
                    ChannelIdentity.contact_id == contact["id"], ChannelIdentity.kind == "phone"
                )
            )
        ).scalar_one()
        conversation = Conversation(
            tenant_id=world.admin.tenant_id,
            inbox_id=world.inbox_id,
            contact_id=contact["id"],
            identity_id=identity.id,
            status=ConversationStatus.OPEN,
            thread_key=f"<{email}>",
        )
        session.add(conversation)
        await session.flush()
        message = Message(
            tenant_id=world.admin.tenant_id,
            inbox_id=world.inbox_id,
            conversation_id=conversation.id,
            direction="inbound",
            sender_type="contact",
            sender_id=contact["id"],
            body=text_,
            attachments=[
                {"url": stored.url, "content_type": "text/plain", "filename": f"{name}.txt", "size": 9}
            ],
            provider_message_id=f"SM-{name}",
            status=MessageStatus.RECEIVED,
            extra={"subject": f"About {name}", "From": email, "location": {"label": f"{name}'s home"}},
        )
        session.add(message)
        session.add(
            Message(
                tenant_id=world.admin.tenant_id,
                inbox_id=world.inbox_id,
                conversation_id=conversation.id,
                direction="outbound",
                sender_type="user",
                sender_id=world.admin.user_id,
                body=f"Dear {name}, about {text_}",
                status=MessageStatus.SENT,
            )
        )
        await session.flush()
        ids = {"conversation_id": conversation.id, "message_id": message.id}
    status, _ = await world.call(
        "PUT",
        f"/contacts/{contact['id']}/consent",
        body={"channel": "sms", "purpose": "marketing", "granted": True},
    )
    assert status == 200
    if (await world.call("GET", "/pipelines"))[1]["data"] == []:
        assert (await world.call("POST", "/pipelines", body={"name": "Sales"}))[0] == 201
    status, deal = await world.call(
        "POST",
        "/deals",
        body={"title": f"Deal {name}", "currency": "usd", "amount_minor": 100, "contact_id": contact["id"]},
    )
    assert status == 201, deal
    return {**contact, **ids, "media_key": stored.key, "media_url": stored.url, "deal_id": deal["id"]}


async def test_export_holds_every_contact_linked_table_and_nothing_of_anyone_else(
    world: World, db: Database
) -> None:
    ann = await seed_contact(world, "Annabel", "+14155550111", "annabel@example.com", "my parcel 1234")
    bob = await seed_contact(world, "Bobbington", "+14155550122", "bob@example.com", "bobs secret words")
    other = await make_tenant(db, "globex")

    status, export = await world.call("GET", f"/contacts/{ann['id']}/export")
    assert status == 200, export
    assert export["contact"]["name"] == "Annabel" and export["contact"]["email"] == "annabel@example.com"
    # Every table referring to contacts is there, with exactly this contact's rows.
    for table, column in referring_tables("contacts"):
        if table.name == "conversations":
            continue
        assert table.name in export["records"], table.name
        async with db.sessionmaker() as session:
            expected = (
                await session.execute(
                    select(func.count()).select_from(table).where(table.c[column] == ann["id"])
                )
            ).scalar()
        assert len(export["records"][table.name]) == expected, table.name
    assert {r["address"] for r in export["records"]["channel_identities"]} == {
        "+14155550111",
        "annabel@example.com",
    }
    assert [r["title"] for r in export["records"]["deals"]] == ["Deal Annabel"]
    assert len(export["records"]["contact_tags"]) == 1 and len(export["records"]["consents"]) == 1
    (conversation,) = export["conversations"]
    assert conversation["id"] == ann["conversation_id"]
    assert [m["body"] for m in conversation["messages"]] == [
        "my parcel 1234",
        "Dear Annabel, about my parcel 1234",
    ]
    (attachment,) = conversation["messages"][0]["attachments"]
    assert attachment["download_url"] == ann["media_url"] and attachment["filename"] == "Annabel.txt"
    assert [h["details"]["purpose"] for h in export["consent_history"]] == ["marketing"]
    dumped = json.dumps(export)
    for trace in ("Bobbington", "bob@example.com", "+14155550122", "bobs secret words", bob["media_key"]):
        assert trace not in dumped
    # The export is audited, and others may not have it.
    (entry,) = await world.audit("contact.exported")
    assert entry.object_id == ann["id"] and "Annabel" not in json.dumps(entry.details)
    assert (await world.call("GET", f"/contacts/{ann['id']}/export", who=other))[0] == 404
    supervisor = await make_tenant(db, "acme", role=Role.SUPERVISOR, email="s@acme.example.com")
    agent = await make_tenant(db, "acme", role=Role.AGENT, email="a@acme.example.com")
    assert (await world.call("GET", f"/contacts/{ann['id']}/export", who=supervisor))[0] == 200
    assert (await world.call("GET", f"/contacts/{ann['id']}/export", who=agent))[0] == 403


# --- erasure ----------------------------------------------------------------------------------------


async def raw_rows(db: Database, table: str) -> str:
    """Every column of every row of a table, as text (as a database dump would show it)."""
    async with db.sessionmaker() as session:
        rows = await session.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 (a fixed table name)
        return "\n".join(repr(tuple(r)) for r in rows.all())


async def test_erasure_leaves_no_trace_in_rows_or_search_and_keeps_the_counts(
    world: World, db: Database
) -> None:
    zelda = await seed_contact(
        world, "Zelda Quixote", "+14155550133", "zelda@example.com", "xyzzy plugh secret"
    )
    keep = await seed_contact(
        world, "Karl Keeper", "+14155550144", "karl@example.com", "karl keeps xyzzy too"
    )
    async with db.transaction() as session:
        session.add(
            ContactMerge(
                tenant_id=world.admin.tenant_id,
                survivor_id=zelda["id"],
                merged_id=999,
                merged_snapshot={"name": "Zelda Q", "email": "zq@example.com"},
                report={"identities": [{"address": "zq@example.com"}]},
            )
        )
    media = world.client.app[MEDIA]
    counts_before = {
        model: await world.scalar(select(func.count()).select_from(model))
        for model in (Conversation, Message, Contact)
    }
    status, search = await world.call("GET", "/search", params={"q": "xyzzy"})
    assert status == 200 and len(search["messages"]) == 4  # each customer message and its reply

    assert (await world.call("POST", f"/contacts/{zelda['id']}/erase", body={}))[0] == 422
    supervisor = await make_tenant(db, "acme", role=Role.SUPERVISOR, email="s@acme.example.com")
    assert (
        await world.call("POST", f"/contacts/{zelda['id']}/erase", who=supervisor, body={"confirm": "erase"})
    )[0] == 403
    other = await make_tenant(db, "globex")
    assert (await world.call("POST", f"/contacts/{zelda['id']}/erase", who=other, body={"confirm": "erase"}))[
        0
    ] == 404

    status, report = await world.call(
        "POST", f"/contacts/{zelda['id']}/erase", body={"confirm": "erase", "reason": "GDPR request 17"}
    )
    assert status == 200, report
    assert report["name"] == f"Erased contact #{zelda['id']}"
    assert (report["identities"], report["conversations"], report["messages"], report["attachments"]) == (
        2,
        1,
        2,
        1,
    )
    assert report["files_deleted"] == 1
    with pytest.raises(FileNotFoundError):
        await media.read(zelda["media_key"])
    assert await media.read(keep["media_key"]) == b"file of Karl Keeper"

    traces = (
        "Zelda",
        "Quixote",
        "zelda@example.com",
        "4155550133",
        "xyzzy plugh",
        "plugh",
        "zq@example.com",
        zelda["media_url"],  # the key stays (random, its file gone) so erasing again retries the deletion
    )
    for table in (
        "contacts",
        "channel_identities",
        "messages",
        "conversations",
        "contact_merges",
        "contact_tags",
        "audit_log",
    ):
        dump = await raw_rows(db, table)
        for trace in traces:
            assert trace not in dump, (
                table,
                trace,
                [line[-300:] for line in dump.splitlines() if trace in line],
            )
    assert "Karl Keeper" in await raw_rows(db, "contacts")
    # Counts are kept: every row is still there.
    for model, before in counts_before.items():
        assert await world.scalar(select(func.count()).select_from(model)) == before

    # Search finds neither the words nor the person, through the API and in the index itself.
    status, search = await world.call("GET", "/search", params={"q": "xyzzy"})
    assert [m["message_id"] for m in search["messages"]] != [] and all(
        m["contact_id"] == keep["id"] for m in search["messages"]
    )
    for q in ("plugh", "Zelda", "zelda@example.com", "4155550133"):
        status, search = await world.call("GET", "/search", params={"q": q})
        assert status == 200 and search["contacts"] == [] and search["messages"] == [], q
    async with db.sessionmaker() as session:
        if db.is_sqlite:
            hits = await session.execute(
                text("SELECT count(*) FROM search_messages WHERE search_messages MATCH 'plugh'")
            )
            assert hits.scalar() == 0
            hits = await session.execute(
                text("SELECT count(*) FROM search_contacts WHERE search_contacts MATCH 'quixote'")
            )
            assert hits.scalar() == 0
            # The index's own storage: no segment keeps the erased words.
            for shadow in ("search_messages_data", "search_contacts_data"):
                blobs = (await session.execute(text(f"SELECT block FROM {shadow}"))).scalars().all()  # noqa: S608
                assert not any(b"plugh" in bytes(b or b"") or b"quixote" in bytes(b or b"") for b in blobs)
        else:
            hits = await session.execute(
                text(
                    "SELECT count(*) FROM messages "
                    "WHERE search_vector @@ to_tsquery('parley_search', 'plugh')"
                )
            )
            assert hits.scalar() == 0

    (entry,) = await world.audit("contact.erased")
    assert (entry.actor_type, entry.actor_id, entry.object_id) == (
        "api_token",
        world.admin.user_id,
        zelda["id"],
    )
    assert entry.details["reason"] == "GDPR request 17" and entry.details["messages"] == 2
    # Consent decisions outlive the erasure, and erasing again is harmless.
    assert (
        await world.scalar(select(func.count()).select_from(Consent).where(Consent.contact_id == zelda["id"]))
        == 1
    )
    assert (
        await world.scalar(
            select(func.count()).select_from(ContactTag).where(ContactTag.contact_id == zelda["id"])
        )
        == 0
    )
    status, again = await world.call("POST", f"/contacts/{zelda['id']}/erase", body={"confirm": "erase"})
    assert status == 200 and again["files_deleted"] == 0
    assert {"contact_id": zelda["id"]} in await world.events("contact.erased")


# --- audit log --------------------------------------------------------------------------------------


async def test_the_audit_log_is_for_admins_of_the_tenant_filtered_and_paged(
    world: World, db: Database
) -> None:
    assert await world.sms("Hello", "SM" + "1" * 32) == 200
    contact_id = await sms_contact(world)
    for purpose in ("marketing", "transactional", "all"):
        body = {"channel": "email", "purpose": purpose, "granted": False}
        assert (await world.call("PUT", f"/contacts/{contact_id}/consent", body=body))[0] == 200
    assert (await world.call("GET", f"/contacts/{contact_id}/export"))[0] == 200

    status, page = await world.call("GET", "/audit-log", params={"limit": "2"})
    assert status == 200
    assert [e["action"] for e in page["data"]] == ["contact.exported", "consent.changed"]
    status, rest = await world.call("GET", "/audit-log", params={"limit": "2", "cursor": page["next_cursor"]})
    assert [e["details"]["purpose"] for e in rest["data"]] == ["transactional", "marketing"]
    assert rest["next_cursor"] is None
    status, filtered = await world.call(
        "GET", "/audit-log", params={"action": "consent.changed", "object_id": str(contact_id)}
    )
    assert len(filtered["data"]) == 3 and {e["object_type"] for e in filtered["data"]} == {"contact"}

    supervisor = await make_tenant(db, "acme", role=Role.SUPERVISOR, email="s@acme.example.com")
    assert (await world.call("GET", "/audit-log", who=supervisor))[0] == 403
    other = await make_tenant(db, "globex")
    status, theirs = await world.call("GET", "/audit-log", who=other)
    assert status == 200 and theirs["data"] == []


async def test_a_contact_merge_is_audited_by_ids_only(world: World) -> None:
    status, ann = await world.call("POST", "/contacts", body={"name": "Ann Example", "phone": "+14155550166"})
    assert status == 201
    status, dup = await world.call("POST", "/contacts", body={"name": "Ann E.", "email": "ann@example.com"})
    assert status == 201
    status, _ = await world.call("POST", f"/contacts/{ann['id']}/merge/preview", body={"merge_id": dup["id"]})
    assert status == 200 and await world.audit("contact.merged") == []
    status, report = await world.call("POST", f"/contacts/{ann['id']}/merge", body={"merge_id": dup["id"]})
    assert status == 200, report
    (entry,) = await world.audit("contact.merged")
    assert (entry.object_id, entry.actor_type) == (ann["id"], "api_token")
    assert entry.details == {"merged_id": dup["id"], "merge_id": report["merge_id"]}


async def test_retention_policies_through_the_api_validated_scoped_and_counted(
    world: World, db: Database
) -> None:
    other = await make_tenant(db, "globex")
    theirs = await make_twilio_inbox(
        db, other.tenant_id, world.fake.base_url, world.fake.account_sid, "x" * 32
    )
    body = {
        "policies": [
            {"inbox_id": None, "resolved_after_days": 30},
            {"inbox_id": world.inbox_id, "resolved_after_days": 7},
        ]
    }
    status, answer = await world.call("PUT", "/retention", body=body)
    assert status == 200, answer
    assert [(p["inbox_id"], p["resolved_after_days"]) for p in answer["policies"]] == [
        (None, 30),
        (world.inbox_id, 7),
    ]
    for bad in (
        {"policies": [{"inbox_id": theirs, "resolved_after_days": 7}]},  # another tenant's inbox
        {
            "policies": [
                {"inbox_id": None, "resolved_after_days": 7},
                {"inbox_id": None, "resolved_after_days": 9},
            ]
        },
        {"policies": [{"inbox_id": None, "resolved_after_days": 0}]},
    ):
        assert (await world.call("PUT", "/retention", body=bad))[0] == 422, bad
    assert (await world.call("GET", "/retention"))[1] == answer  # refusals changed nothing
    assert (await world.call("GET", "/retention", who=other))[1] == {"policies": []}
    supervisor = await make_tenant(db, "acme", role=Role.SUPERVISOR, email="s@acme.example.com")
    assert (await world.call("PUT", "/retention", who=supervisor, body=body))[0] == 403
    (entry,) = await world.audit("retention.changed")
    assert entry.details["after"] == body["policies"] and entry.details["before"] == []

    # A resolved conversation 8 days old goes (this inbox keeps 7 days); the stats keep its count.
    assert await world.sms("Hello", "SM" + "1" * 32) == 200
    async with db.transaction() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        conversation.status = ConversationStatus.RESOLVED
        conversation.resolved_at = utcnow() - timedelta(days=8)
        day = conversation.created_at.date().isoformat()
    run = await sweep_retention(db)
    assert run.conversations == 1
    status, stats = await world.call("GET", "/retention/stats")
    assert status == 200
    assert stats["data"] == [
        {"inbox_id": world.inbox_id, "day": day, "conversations": 1, "messages_in": 1, "messages_out": 0}
    ]
    assert (await world.call("GET", "/retention/stats", who=other))[1]["data"] == []


async def test_the_openapi_document_lists_the_privacy_operations(world: World) -> None:
    async with world.client.get("/api/v1/openapi.json") as response:
        paths = (await response.json())["paths"]
    for path in (
        "/api/v1/audit-log",
        "/api/v1/contacts/{contact_id}/consent",
        "/api/v1/contacts/{contact_id}/export",
        "/api/v1/contacts/{contact_id}/erase",
        "/api/v1/retention",
        "/api/v1/retention/stats",
    ):
        assert path in paths, path
    assert set(paths["/api/v1/contacts/{contact_id}/consent"]) == {"get", "put"}


def test_every_contact_linked_table_is_known_to_the_metadata() -> None:
    names = {t.name for t, _ in referring_tables("contacts")}
    assert {"channel_identities", "consents", "deals", "contact_tags", "conversations"} <= names
    assert all(t.name in Base.metadata.tables for t, _ in referring_tables("conversations"))
