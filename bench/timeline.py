"""The CRM timeline on PostgreSQL: why messages are merged in when read rather than copied.

Generates a tenant with C contacts, each with one conversation of M messages and E stored timeline
entries (COPY), in a throwaway database on a PostgreSQL server, then measures in the same run:

- write: what one inbound message costs the database as Parley stores it (the message and its
  `message.received` outbox event, one transaction) against the same plus what copying it into
  `timeline_entries` would add (the timeline handler's own transaction: one INSERT … ON CONFLICT
  DO NOTHING), the design not taken;
- read: the first page and a deep page (after 10 pages) of `inbox.timeline_feed.contact_timeline`
  (ORM, both sources merged, keyset cursor) against the bare indexed read of the conversation's
  newest 50 messages, the floor any feed of messages pays.

    python3 bench/timeline.py [--contacts 2000] [--messages 500] [--entries 50] [--samples 300]
                              [--server postgresql://postgres@127.0.0.1:5432]

Prints medians and ratios; asserts nothing about times. The database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inbox.models import Message
from inbox.timeline_feed import contact_timeline
from parley.db import Database
from parley.migrate import upgrade


async def generate(dsn: str, contacts: int, messages: int, entries: int) -> tuple[int, int]:
    """The rows, by COPY; returns the tenant and inbox ids."""
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        tenant_id = await conn.fetchval(
            "INSERT INTO tenants (name, created_at) VALUES ('bench', $1) RETURNING id", now
        )
        inbox_id = await conn.fetchval(
            "INSERT INTO inboxes (tenant_id, name, channel, settings, secrets_encrypted,"
            " created_at, updated_at) VALUES ($1, 'SMS', 'twilio_sms', '{}', '', $2, $2) RETURNING id",
            tenant_id,
            now,
        )
        await conn.copy_records_to_table(
            "contacts",
            columns=[
                "id",
                "tenant_id",
                "name",
                "attributes",
                "created_at",
                "updated_at",
                "lifecycle_stage",
                "score",
            ],
            records=[
                (i, tenant_id, f"Contact {i}", "{}", now, now, "lead", 0.0) for i in range(1, contacts + 1)
            ],
        )
        await conn.copy_records_to_table(
            "channel_identities",
            columns=["id", "tenant_id", "contact_id", "kind", "address", "created_at"],
            records=[(i, tenant_id, i, "phone", f"+1415{i:07d}", now) for i in range(1, contacts + 1)],
        )
        await conn.copy_records_to_table(
            "conversations",
            columns=[
                "id",
                "tenant_id",
                "inbox_id",
                "contact_id",
                "identity_id",
                "status",
                "created_at",
                "updated_at",
            ],
            records=[(i, tenant_id, inbox_id, i, i, "open", now, now) for i in range(1, contacts + 1)],
        )
        start = now - timedelta(days=365)
        for first in range(1, contacts + 1, 200):
            rows = []
            for contact in range(first, min(first + 200, contacts + 1)):
                for n in range(messages):
                    at = start + timedelta(minutes=n * 7 + contact % 7)
                    rows.append(
                        (tenant_id, inbox_id, contact, "inbound" if n % 2 else "outbound", "contact", contact,
                         f"message {n}", "[]", "received", 0, "{}", at, at, False)
                    )  # fmt: skip
            await conn.copy_records_to_table(
                "messages",
                columns=["tenant_id", "inbox_id", "conversation_id", "direction", "sender_type", "sender_id",
                         "body", "attachments", "status", "attempts", "extra", "created_at", "updated_at",
                         "private"],
                records=rows,
            )  # fmt: skip
        event_id = 0
        rows = []
        for contact in range(1, contacts + 1):
            for n in range(entries):
                event_id += 1
                at = start + timedelta(minutes=n * 70 + 3)
                data = json.dumps({"subject": f"ticket {n}"})
                rows.append((tenant_id, contact, at, "ticket.created", data, n, event_id, at))
        await conn.copy_records_to_table(
            "timeline_entries",
            columns=["tenant_id", "contact_id", "occurred_at", "kind", "data", "ticket_id",
                     "source_event_id", "created_at"],
            records=rows,
        )  # fmt: skip
        for table in ("contacts", "conversations", "messages", "timeline_entries"):
            await conn.execute(f"ANALYZE {table}")
        await conn.execute("SELECT setval('outbox_events_id_seq', $1)", event_id + 1)
        return int(tenant_id), int(inbox_id)
    finally:
        await conn.close()


async def timed(samples: int, call: Callable[[int], Awaitable[object]]) -> float:
    """The median seconds of `call(n)` over `samples` calls, after a warm-up."""
    for n in range(min(20, samples)):
        await call(n)
    times = []
    for n in range(samples):
        began = time.perf_counter()
        await call(n)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


async def bench(server: str, contacts: int, messages: int, entries: int, samples: int) -> None:
    name = f"parley_bench_timeline_{uuid.uuid4().hex[:8]}"
    plain = server.replace("postgresql+asyncpg", "postgresql")
    admin = await asyncpg.connect(f"{plain}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{plain}/{name}"
    db = Database(f"postgresql+asyncpg://{dsn.split('://', 1)[1]}", pool_size=4)
    try:
        await upgrade(db.engine)
        began = time.perf_counter()
        print(f"generating {contacts:,} contacts x ({messages} messages + {entries} entries) in {name}")
        tenant_id, inbox_id = await generate(dsn, contacts, messages, entries)
        print(f"generated and analysed in {time.perf_counter() - began:.0f} s\n")
        pg = await asyncpg.connect(dsn)
        rng = random.Random(7)
        picks = [rng.randint(1, contacts) for _ in range(samples + 20)]

        insert_message = await pg.prepare(
            "INSERT INTO messages (tenant_id, inbox_id, conversation_id, direction, sender_type, sender_id,"
            " body, attachments, status, attempts, extra, created_at, updated_at, private)"
            " VALUES ($1, $2, $3, 'inbound', 'contact', $4, 'hello', '[]', 'received', 0, '{}',"
            " now(), now(), false) RETURNING id"
        )
        insert_event = await pg.prepare(
            "INSERT INTO outbox_events (tenant_id, topic, payload, created_at, available_at,"
            " attempts, handled) VALUES ($1, 'message.received', $2, now(), now(), 0, '[]') RETURNING id"
        )
        insert_entry = await pg.prepare(
            "INSERT INTO timeline_entries (tenant_id, contact_id, occurred_at, kind, data, conversation_id,"
            " message_id, source_event_id, created_at)"
            " VALUES ($1, $2, now(), 'message.in', $3, $6, $4, $5, now())"
            " ON CONFLICT (source_event_id) DO NOTHING"
        )
        last: dict[str, int] = {}

        async def store(n: int) -> None:
            contact = picks[n]
            async with pg.transaction():
                message_id = await insert_message.fetchval(tenant_id, inbox_id, contact, contact)
                payload = json.dumps(
                    {"message_id": message_id, "conversation_id": contact, "contact_id": contact}
                )
                last["event"] = await insert_event.fetchval(tenant_id, payload)
                last["message"] = message_id

        async def store_and_copy(n: int) -> None:
            await store(n)
            async with pg.transaction():
                data = json.dumps({"text": "hello", "channel": "twilio_sms"})
                await insert_entry.fetch(tenant_id, picks[n], data, last["message"], last["event"], picks[n])

        write_base = await timed(samples, store)
        write_copy = await timed(samples, store_and_copy)
        print("write, per inbound message (median)")
        print(f"  message + outbox event (as stored):          {write_base * 1e3:7.3f} ms")
        print(f"  + a copy into timeline_entries (not taken):  {write_copy * 1e3:7.3f} ms")
        print(f"  ratio copy / as stored:                      {write_copy / write_base:7.2f}x\n")

        newest = await pg.prepare(
            "SELECT id, body, created_at FROM messages WHERE conversation_id = $1 ORDER BY id DESC LIMIT 50"
        )

        async def bare(n: int) -> object:
            return await newest.fetch(picks[n])

        async def orm_newest(n: int) -> object:
            async with db.sessionmaker() as session:
                stmt = (
                    select(Message)
                    .where(Message.conversation_id == picks[n])
                    .order_by(Message.id.desc())
                    .limit(50)
                )
                return (await session.execute(stmt)).scalars().all()

        async def first_page(n: int) -> object:
            async with db.sessionmaker() as session:
                return await contact_timeline(session, tenant_id, picks[n], limit=50)

        cursors: dict[int, str | None] = {}
        for n in range(samples + 20):
            async with db.sessionmaker() as session:
                cursor = None
                for _ in range(10):
                    cursor = (
                        await contact_timeline(session, tenant_id, picks[n], limit=50, cursor=cursor)
                    ).next_cursor
                cursors[n] = cursor

        async def deep_page(n: int) -> object:
            async with db.sessionmaker() as session:
                return await contact_timeline(session, tenant_id, picks[n], limit=50, cursor=cursors[n])

        read_base = await timed(samples, bare)
        read_orm = await timed(samples, orm_newest)
        read_first = await timed(samples, first_page)
        read_deep = await timed(samples, deep_page)
        print("read, 50 items (median)")
        print(f"  bare: newest 50 messages of the conversation: {read_base * 1e3:7.3f} ms")
        print(f"  the same through an ORM session:              {read_orm * 1e3:7.3f} ms")
        for label, value in (("first page", read_first), ("page 11", read_deep)):
            print(
                f"  contact timeline, {label + ':':<28}{value * 1e3:7.3f} ms"
                f"  ({value / read_base:.1f}x bare, {value / read_orm:.1f}x ORM)"
            )
        await pg.close()
    finally:
        await db.dispose()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--entries", type=int, default=50)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    asyncio.run(bench(args.server, args.contacts, args.messages, args.entries, args.samples))


if __name__ == "__main__":
    main()
