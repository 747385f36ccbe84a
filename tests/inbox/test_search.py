"""Search across contacts and message text, on SQLite (FTS5) and PostgreSQL (full-text search)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from alembic import command
from sqlalchemy import delete, text, update

from crm_core.models import ChannelIdentity, Company, Contact
from gateway.api.permissions import Permission, allows
from gateway.app import create_app
from inbox.models import Conversation, Inbox, Message
from inbox.search import EmptyQuery, highlighted, parse_query, search
from parley.db import Database, utcnow
from parley.migrate import alembic_config, upgrade
from parley.models import Role
from parley.settings import Settings
from tests.conftest import TenantAccess, make_tenant

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@dataclass
class Seeded:
    tenant_id: int
    inbox_id: int
    contact_id: int
    conversation_id: int


async def seed(
    db: Database, tenant: str, *, name: str = "Anna Müller", phone: str = "+15017122661"
) -> Seeded:
    """A tenant with an SMS inbox, a contact and an open conversation with them."""
    access = await make_tenant(db, tenant)
    async with db.transaction() as session:
        inbox = Inbox(tenant_id=access.tenant_id, name=f"{tenant} SMS", channel="twilio_sms", settings={})
        contact = Contact(tenant_id=access.tenant_id, name=name, phone=phone, attributes={})
        session.add_all([inbox, contact])
        await session.flush()
        identity = ChannelIdentity(
            tenant_id=access.tenant_id, contact_id=contact.id, kind="phone", address=phone
        )
        session.add(identity)
        await session.flush()
        conversation = Conversation(
            tenant_id=access.tenant_id, inbox_id=inbox.id, contact_id=contact.id, identity_id=identity.id
        )
        session.add(conversation)
        await session.flush()
        return Seeded(access.tenant_id, inbox.id, contact.id, conversation.id)


async def add_message(db: Database, s: Seeded, body: str, *, minutes_ago: int = 0) -> int:
    async with db.transaction() as session:
        message = Message(
            tenant_id=s.tenant_id,
            inbox_id=s.inbox_id,
            conversation_id=s.conversation_id,
            direction="inbound",
            sender_type="contact",
            sender_id=s.contact_id,
            body=body,
            status="received",
            created_at=utcnow() - timedelta(minutes=minutes_ago),
        )
        session.add(message)
        await session.flush()
        return message.id


async def message_ids(db: Database, tenant_id: int, query: str) -> list[int]:
    async with db.transaction() as session:
        found = await search(session, tenant_id, query, kinds={"messages"})
    return [hit.message_id for hit in found.messages]


async def contact_ids(db: Database, tenant_id: int, query: str) -> list[int]:
    async with db.transaction() as session:
        found = await search(session, tenant_id, query, kinds={"contacts"})
    return [hit.contact_id for hit in found.contacts]


async def test_message_results_open_the_conversation_at_the_message(db: Database) -> None:
    s = await seed(db, "acme")
    await add_message(db, s, "Hello")
    wanted = await add_message(db, s, "Where is my invoice for March?\nIt never came.")
    async with db.transaction() as session:
        found = await search(session, s.tenant_id, "invoice", kinds={"messages"})
    assert found.contacts == []
    [hit] = found.messages
    assert (hit.message_id, hit.conversation_id, hit.contact_id) == (wanted, s.conversation_id, s.contact_id)
    assert (hit.inbox_id, hit.inbox_name, hit.contact_name) == (s.inbox_id, "acme SMS", "Anna Müller")
    assert hit.created_at.tzinfo is not None
    # Plain text (the newline flattened one for one) and offsets of the match within it.
    assert hit.snippet == "Where is my invoice for March? It never came."
    assert [hit.snippet[a:b] for a, b in hit.highlights] == ["invoice"]


async def test_every_query_is_scoped_to_the_tenant(db: Database) -> None:
    acme = await seed(db, "acme", name="Refund Rita", phone="+15550001111")
    other = await seed(db, "globex", name="Refund Rick", phone="+15550002222")
    mine = await add_message(db, acme, "please refund my order")
    await add_message(db, other, "please refund my order")
    assert await message_ids(db, acme.tenant_id, "refund") == [mine]
    assert await contact_ids(db, acme.tenant_id, "refund") == [acme.contact_id]
    # Substring paths (phone digits, identity addresses) are scoped too.
    assert await contact_ids(db, acme.tenant_id, "555000") == [acme.contact_id]
    assert await contact_ids(db, other.tenant_id, "2222") == [other.contact_id]
    assert await contact_ids(db, acme.tenant_id, "2222") == []


async def test_the_last_word_is_a_prefix_while_typing(db: Database) -> None:
    s = await seed(db, "acme")
    invoice = await add_message(db, s, "I need a copy of the invoice")
    await add_message(db, s, "Nothing to see here")
    assert await message_ids(db, s.tenant_id, "invo") == [invoice]
    assert await message_ids(db, s.tenant_id, "copy inv") == [invoice]
    # Only the last word: "invo" earlier in the query must be a whole word.
    assert await message_ids(db, s.tenant_id, "invo copy") == []
    assert await contact_ids(db, s.tenant_id, "Mül") == [s.contact_id]


async def test_ranking_puts_the_better_match_first_then_the_newest(db: Database) -> None:
    s = await seed(db, "acme")
    once = await add_message(db, s, "refund please, I am waiting for a long time now", minutes_ago=30)
    often = await add_message(db, s, "refund refund refund: where is my refund", minutes_ago=60)
    assert await message_ids(db, s.tenant_id, "refund") == [often, once]
    older = await add_message(db, s, "the parcel arrived", minutes_ago=10)
    newer = await add_message(db, s, "the parcel arrived", minutes_ago=5)
    assert await message_ids(db, s.tenant_id, "parcel arrived") == [newer, older]


async def test_whole_words_come_before_words_the_last_word_only_starts(db: Database) -> None:
    s = await seed(db, "acme")
    longer = await add_message(db, s, "invoices invoices invoices, all my invoices", minutes_ago=1)
    whole = await add_message(db, s, "one invoice, sent weeks ago", minutes_ago=60)
    assert await message_ids(db, s.tenant_id, "invoice") == [whole, longer]
    async with db.transaction() as session:
        found = await search(session, s.tenant_id, "invoice", kinds={"messages"}, limit=1)
    assert [hit.message_id for hit in found.messages] == [whole]
    # Fewer whole-word matches than the limit: the page is filled up with prefix matches, once each.
    assert await message_ids(db, s.tenant_id, "invoices") == [longer]
    assert await message_ids(db, s.tenant_id, "invoic") == [longer, whole]


@pytest.mark.parametrize(
    "hostile",
    [
        '"',
        '"unterminated phrase',
        "NEAR(invoice march, 2)",
        "invoice*",
        "* ",
        "-invoice",
        "body:invoice",
        "invoice AND OR NOT",
        "(invoice",
        "'; DROP TABLE messages; --",
        "^invoice",
        "invoice + march",
        "%_\\",
        "a:* & !b | c <-> d",
        "\x00",
    ],
)
async def test_search_box_syntax_never_errors(db: Database, hostile: str) -> None:
    s = await seed(db, "acme")
    invoice = await add_message(db, s, "invoice for march")
    try:
        found = await message_ids(db, s.tenant_id, hostile)
    except EmptyQuery:
        found = None
    # Either nothing to search for, or plain words searched as words.
    assert found in (None, [], [invoice])
    async with db.transaction() as session:  # the table is still there
        assert (await session.execute(text("SELECT count(*) FROM messages"))).scalar() == 1


async def test_query_syntax_phrases_and_exclusions(db: Database) -> None:
    s = await seed(db, "acme")
    phrase = await add_message(db, s, "my order number is wrong")
    scattered = await add_message(db, s, "wrong number for the order", minutes_ago=1)
    assert await message_ids(db, s.tenant_id, '"order number"') == [phrase]
    assert set(await message_ids(db, s.tenant_id, "order number")) == {phrase, scattered}
    assert await message_ids(db, s.tenant_id, "order -scattered -the") == [phrase]


async def test_accents_and_case_fold_on_both_backends(db: Database) -> None:
    s = await seed(db, "acme", name="Jürgen Müller")
    cafe = await add_message(db, s, "Rendez-vous au Café de Flore")
    for query in ("café", "cafe", "CAFÉ", "Cafe"):
        assert await message_ids(db, s.tenant_id, query) == [cafe], query
    for query in ("Müller", "muller", "MÜLLER", "jurgen"):
        assert await contact_ids(db, s.tenant_id, query) == [s.contact_id], query
    async with db.transaction() as session:
        found = await search(session, s.tenant_id, "cafe", kinds={"messages"})
    [hit] = found.messages
    assert [hit.snippet[a:b] for a, b in hit.highlights] == ["Café"]


async def test_contacts_match_on_email_phone_digits_company_and_identity(db: Database) -> None:
    s = await seed(db, "acme", name="Ann Lee", phone="+14155550123")
    async with db.transaction() as session:
        company = Company(tenant_id=s.tenant_id, name="Initech Ltd", domain="initech.example", attributes={})
        session.add(company)
        await session.flush()
        await session.execute(
            update(Contact)
            .where(Contact.id == s.contact_id)
            .values(email="ann.lee@initech.example", company_id=company.id)
        )
        session.add(
            ChannelIdentity(
                tenant_id=s.tenant_id, contact_id=s.contact_id, kind="telegram_user", address="tg-ann-987654"
            )
        )
    cases = {
        "lee@init": ("email", "ann.lee@initech.example", "lee@init"),
        "(415) 555-0123": ("phone", "+14155550123", "4155550123"),
        "5550": ("phone", "+14155550123", "5550"),
        "Initech": ("company", "Initech Ltd", "Initech"),
        "ann-98": ("identity", "tg-ann-987654", "ann-98"),
        "ann": ("name", "Ann Lee", "Ann"),
    }
    for query, (field, value, marked) in cases.items():
        async with db.transaction() as session:
            found = await search(session, s.tenant_id, query, kinds={"contacts"})
        [hit] = found.contacts
        assert (hit.contact_id, hit.matched_field, hit.matched_value) == (s.contact_id, field, value), query
        assert [value[a:b] for a, b in hit.highlights] == [marked], query
        assert hit.company == "Initech Ltd"


async def test_updates_and_deletes_are_reflected(db: Database) -> None:
    s = await seed(db, "acme", name="Paula Perez")
    message = await add_message(db, s, "my passport number is X1234567")
    assert await message_ids(db, s.tenant_id, "passport") == [message]
    # Erasure rewrites the body: the old words must be gone from the index, the new ones in it.
    async with db.transaction() as session:
        await session.execute(update(Message).where(Message.id == message).values(body="[redacted]"))
        await session.execute(update(Contact).where(Contact.id == s.contact_id).values(name="Erased Person"))
    assert await message_ids(db, s.tenant_id, "passport") == []
    assert await message_ids(db, s.tenant_id, "redacted") == [message]
    assert await contact_ids(db, s.tenant_id, "paula") == []
    assert await contact_ids(db, s.tenant_id, "erased") == [s.contact_id]
    async with db.transaction() as session:
        await session.execute(delete(Message).where(Message.id == message))
    assert await message_ids(db, s.tenant_id, "redacted") == []
    # Deleting the contact cascades to its conversations and messages.
    await add_message(db, s, "still here")
    async with db.transaction() as session:
        await session.execute(delete(Contact).where(Contact.id == s.contact_id))
    assert await contact_ids(db, s.tenant_id, "erased") == []
    assert await message_ids(db, s.tenant_id, "still") == []
    if db.is_sqlite:
        # The FTS5 index agrees with its content table (external content: 'integrity-check').
        async with db.transaction() as session:
            for table in ("search_messages", "search_contacts"):
                await session.execute(text(f"INSERT INTO {table}({table}) VALUES ('integrity-check')"))  # noqa: S608


async def test_empty_queries_are_refused(db: Database) -> None:
    s = await seed(db, "acme")
    for query in ("", "   ", "!!!", "-alone", "or"):
        with pytest.raises(EmptyQuery):
            async with db.transaction() as session:
                await search(session, s.tenant_id, query)


async def test_downgrade_removes_the_search_objects(db: Database) -> None:
    def downgrade(connection: object) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0006")

    async with db.engine.begin() as conn:
        await conn.run_sync(downgrade)
    if db.is_sqlite:
        sql = "SELECT name FROM sqlite_master WHERE name LIKE 'search%'"
    else:
        sql = (
            "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_search%' "
            "UNION ALL SELECT cfgname FROM pg_ts_config WHERE cfgname = 'parley_search' "
            "UNION ALL SELECT column_name FROM information_schema.columns WHERE column_name LIKE 'search%'"
        )
    async with db.engine.connect() as conn:
        assert (await conn.execute(text(sql))).all() == []
    await upgrade(db.engine)  # and back up again, from scratch
    s = await seed(db, "acme")
    message = await add_message(db, s, "back again")
    assert await message_ids(db, s.tenant_id, "again") == [message]


def test_parse_and_highlight_pieces() -> None:
    parsed = parse_query('"big deal" -nope invo')
    assert [(c.words, c.negated, c.prefix) for group in parsed.groups for c in group] == [
        (("big", "deal"), False, False),
        (("nope",), True, False),
        (("invo",), False, True),
    ]
    assert highlighted("<b>invoice</b>", [(3, 10)]) == [("<b>", False), ("invoice", True), ("</b>", False)]


# --- GET /api/v1/search -------------------------------------------------------------------------


async def get_search(
    client: TestClient[Any, Any], who: TenantAccess | None, **params: str
) -> tuple[int, dict[str, Any]]:
    headers = who.headers if who is not None else {}
    async with client.get("/api/v1/search", params=params, headers=headers) as response:
        return response.status, await response.json()


async def test_search_api(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> None:
    s = await seed(db, "acme", name="Ann <script>alert(1)</script> Lee")
    me = await make_tenant(db, "acme", role=Role.AGENT)
    stranger = await make_tenant(db, "globex")
    message = await add_message(db, s, "<b>invoice</b> & receipt for Ann")
    client = await aiohttp_client(create_app(settings))

    status, body = await get_search(client, me, q="ann")
    assert status == 200
    assert [c["contact_id"] for c in body["contacts"]] == [s.contact_id]
    assert [m["message_id"] for m in body["messages"]] == [message]
    hit = body["messages"][0]
    assert hit["conversation_id"] == s.conversation_id
    # Customer text comes back as the plain text it is, never turned into (or out of) markup.
    assert hit["snippet"] == "<b>invoice</b> & receipt for Ann"
    assert [hit["snippet"][a:b] for a, b in hit["highlights"]] == ["Ann"]
    assert body["contacts"][0]["name"] == "Ann <script>alert(1)</script> Lee"
    assert body["contacts"][0]["matched_field"] == "name"

    status, body = await get_search(client, me, q="invo", kind="contacts")
    assert (status, body) == (200, {"contacts": [], "messages": []})
    status, body = await get_search(client, me, q="invo", kind="messages", limit="1")
    assert [m["message_id"] for m in body["messages"]] == [message]

    status, body = await get_search(client, stranger, q="invoice")
    assert (status, body) == (200, {"contacts": [], "messages": []})

    bad_queries: list[dict[str, str]] = [
        {"q": ""},
        {"q": "   "},
        {"q": "!!!"},
        {},
        {"q": "x", "kind": "deals"},
        {"q": "x", "limit": "0"},
    ]
    for bad in bad_queries:
        status, body = await get_search(client, me, **bad)
        assert status == 422, bad
        assert body["error"]["code"] == "validation_error"
    status, _ = await get_search(client, None, q="ann")
    assert status == 401


async def test_search_api_follows_the_roles(
    db: Database, aiohttp_client: ClientFactory, settings: Settings
) -> None:
    s = await seed(db, "acme")
    await add_message(db, s, "hello Anna")
    client = await aiohttp_client(create_app(settings))
    for role in Role:
        access = await make_tenant(db, "acme", role=role, email=f"{role}-search@acme.example.com")
        status, body = await get_search(client, access, q="anna")
        assert status == (200 if allows(role, Permission.READ_CONVERSATIONS) else 403), role
        if status == 200:
            assert len(body["messages"]) == 1
            assert len(body["contacts"]) == (1 if allows(role, Permission.READ_CONTACTS) else 0)
