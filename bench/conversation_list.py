"""The agents' conversation list at scale on PostgreSQL: `inbox.listing` against the old list query.

Generates one tenant with N conversations (one contact each) and M messages with COPY into a
throwaway database, then measures, in the same run:

- baseline: the list as `GET /conversations` ran it before the agents' inbox (tenant's
  conversations, newest id first, one page of 50 rows, through SQLAlchemy's ORM, nothing joined);
- `inbox.listing.list_conversations` for the views, filters and sorts the UI uses (each page row with
  contact, inbox, assignee, last message preview, labels and the agent's unread count), a second
  page through the cursor, and `view_counts` for the tabs.

About 6 % of conversations are open, 2 % pending, 1 % snoozed, the rest resolved; a tenth carry a
label; the measuring agent has read half of what is assigned to them.

    python3 bench/conversation_list.py [--conversations 100000] [--messages 1000000] [--samples 200]
        [--server postgresql://postgres@127.0.0.1:5432]

Without `--server`, a throwaway PostgreSQL is started from the local binaries (fsync off), as
bench/ingest.py does. Prints percentiles and the ratio to the baseline; asserts nothing about times.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent
# The repository before bench/: bench/routing.py must not stand in for the routing package.
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

from ingest import fresh_database, postgres_server  # noqa: E402
from sqlalchemy import select  # noqa: E402

from inbox.listing import ConversationFilters, list_conversations, page_query, view_counts  # noqa: E402
from inbox.models import Conversation  # noqa: E402
from parley.db import Database  # noqa: E402
from parley.migrate import upgrade  # noqa: E402

AGENTS = 20
INBOXES = (("SMS", "twilio_sms"), ("WhatsApp", "twilio_whatsapp"), ("Mail", "email"), ("Chat", "webchat"))
LABELS = ("billing", "bug", "vip", "refund", "shipping")
CHUNK = 50_000


def status_of(i: int) -> str:
    bucket = i % 100
    return "open" if bucket < 6 else "pending" if bucket < 8 else "snoozed" if bucket < 9 else "resolved"


async def generate(dsn: str, conversations: int, messages: int, seed: int) -> tuple[int, int]:
    """Write the tenant; return it and the agent who looks at the list."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    now = datetime.now(UTC)
    start = now - timedelta(days=365)
    try:
        tenant_id = await conn.fetchval(
            "INSERT INTO tenants (name, created_at) VALUES ('bench', $1) RETURNING id", now
        )
        agents = [
            await conn.fetchval(
                "INSERT INTO users (tenant_id, email, password_hash, role, presence, created_at, name) "
                "VALUES ($1, $2, '-', 'agent', 'online', $3, $4) RETURNING id",
                tenant_id,
                f"agent{n}@bench.example",
                now,
                f"Agent {n}",
            )
            for n in range(AGENTS)
        ]
        inboxes = [
            await conn.fetchval(
                "INSERT INTO inboxes (tenant_id, name, channel, settings, secrets_encrypted, created_at, "
                "updated_at) VALUES ($1, $2, $3, '{}', '', $4, $4) RETURNING id",
                tenant_id,
                name,
                channel,
                now,
            )
            for name, channel in INBOXES
        ]
        labels = [
            await conn.fetchval(
                "INSERT INTO labels (tenant_id, name, name_key, color, description, created_at, updated_at) "
                "VALUES ($1, $2, $2, '#6b7280', '', $3, $3) RETURNING id",
                tenant_id,
                name,
                now,
            )
            for name in LABELS
        ]
        per_conversation = max(1, messages // conversations)
        step = timedelta(seconds=(now - start).total_seconds() / conversations)
        viewer = agents[0]
        message_id = 0
        for first in range(1, conversations + 1, CHUNK):
            last = min(first + CHUNK, conversations + 1)
            contacts, identities, rows, message_rows, label_rows, reads = [], [], [], [], [], []
            for i in range(first, last):
                status = status_of(i)
                created = start + step * i
                contacts.append(
                    (
                        i,
                        tenant_id,
                        f"Customer {i}",
                        None,
                        f"+1555{i:07d}",
                        "{}",
                        created,
                        created,
                        "lead",
                        0.0,
                    )
                )
                identities.append((i, tenant_id, i, "phone", f"+1555{i:07d}", created))
                inbox_id = inboxes[i % len(inboxes)]
                assignee = None if status == "open" and rng.random() < 0.3 else rng.choice(agents)
                at = created
                last_inbound = None
                for n in range(per_conversation):
                    message_id += 1
                    inbound = n % 2 == 0 or (status == "open" and n == per_conversation - 1)
                    at = at + timedelta(minutes=rng.randint(1, 30))
                    last_inbound = at if inbound else last_inbound
                    message_rows.append(
                        (
                            message_id,
                            tenant_id,
                            inbox_id,
                            i,
                            "inbound" if inbound else "outbound",
                            "contact" if inbound else "user",
                            i if inbound else assignee,
                            f"message {n} of conversation {i}: " + "lorem ipsum " * rng.randint(1, 20),
                            "[]",
                            f"SM{message_id:032d}",
                            "received" if inbound else "delivered",
                            0,
                            "{}",
                            at,
                            at,
                        )
                    )
                rows.append(
                    (
                        i,
                        tenant_id,
                        inbox_id,
                        i,
                        i,
                        status,
                        assignee,
                        at,
                        last_inbound,
                        created,
                        at,
                        at if status == "resolved" else None,
                        rng.choice(("none", "none", "none", "low", "high", "urgent")),
                        now + timedelta(days=1) if status == "snoozed" else None,
                        now if status == "snoozed" else None,
                    )
                )
                if i % 10 == 0:
                    label_rows.append((i, labels[i % len(labels)], tenant_id))
                if assignee == viewer and rng.random() < 0.5:
                    reads.append((viewer, i, tenant_id, message_id, now))
            await conn.copy_records_to_table(
                "contacts",
                records=contacts,
                columns=[
                    "id",
                    "tenant_id",
                    "name",
                    "email",
                    "phone",
                    "attributes",
                    "created_at",
                    "updated_at",
                    "lifecycle_stage",
                    "score",
                ],
            )
            await conn.copy_records_to_table(
                "channel_identities",
                records=identities,
                columns=["id", "tenant_id", "contact_id", "kind", "address", "created_at"],
            )
            await conn.copy_records_to_table(
                "conversations",
                records=rows,
                columns=[
                    "id",
                    "tenant_id",
                    "inbox_id",
                    "contact_id",
                    "identity_id",
                    "status",
                    "assignee_id",
                    "last_message_at",
                    "last_inbound_at",
                    "created_at",
                    "updated_at",
                    "resolved_at",
                    "priority",
                    "snoozed_until",
                    "snoozed_at",
                ],
            )
            await conn.copy_records_to_table(
                "messages",
                records=message_rows,
                columns=[
                    "id",
                    "tenant_id",
                    "inbox_id",
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
                    "created_at",
                    "updated_at",
                ],
            )
            await conn.copy_records_to_table(
                "conversation_labels",
                records=label_rows,
                columns=["conversation_id", "label_id", "tenant_id"],
            )
            await conn.copy_records_to_table(
                "conversation_reads",
                records=reads,
                columns=["user_id", "conversation_id", "tenant_id", "last_read_message_id", "updated_at"],
            )
            print(f"  {last - 1:>9,} conversations, {message_id:>10,} messages", flush=True)
        for table in ("contacts", "channel_identities", "conversations", "messages"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"  # noqa: S608
            )
        for table in (
            "contacts",
            "channel_identities",
            "conversations",
            "messages",
            "conversation_labels",
            "conversation_reads",
            "labels",
        ):
            await conn.execute(f"VACUUM ANALYZE {table}")
        return int(tenant_id), int(viewer)
    finally:
        await conn.close()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(samples: int, run: Callable[[], Awaitable[object]]) -> list[float]:
    for _ in range(min(20, samples)):  # warm-up: plans and caches
        await run()
    taken = []
    for _ in range(samples):
        began = time.perf_counter()
        await run()
        taken.append(time.perf_counter() - began)
    return taken


async def bench(
    server: str | None, conversations: int, messages: int, samples: int, seed: int, explain_plans: bool
) -> None:
    with postgres_server(server) as url:
        async with fresh_database(url, "parley_bench_list") as dsn:
            db = Database(f"postgresql+asyncpg://{dsn.split('://', 1)[1]}", pool_size=2)
            try:
                await upgrade(db.engine)
                began = time.perf_counter()
                tenant_id, viewer = await generate(dsn, conversations, messages, seed)
                print(f"generated in {time.perf_counter() - began:.0f} s", flush=True)
                if explain_plans:
                    await explain(db, tenant_id, viewer)
                await run_measurements(db, tenant_id, viewer, samples)
            finally:
                await db.dispose()


async def explain(db: Database, tenant_id: int, viewer: int) -> None:
    """PostgreSQL's plan and timings for the page queries of two common views."""
    for name, filters, sort in (
        ("open, newest", ConversationFilters(status="open"), "newest"),
        ("all statuses, newest", ConversationFilters(), "newest"),
        ("open, waiting", ConversationFilters(status="open"), "waiting"),
    ):
        stmt = page_query(tenant_id=tenant_id, user_id=viewer, filters=filters, sort=sort)  # type: ignore[arg-type]
        compiled = stmt.compile(dialect=db.engine.dialect)
        params = compiled.construct_params()
        positional = tuple(params[key] for key in compiled.positiontup or ())
        async with db.engine.connect() as conn:
            result = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}", positional)
            print(f"--- {name}")
            print("\n".join(row[0] for row in result))


async def run_measurements(db: Database, tenant_id: int, viewer: int, samples: int) -> None:
    async def baseline() -> object:
        async with db.sessionmaker() as session:
            stmt = (
                select(Conversation)
                .where(Conversation.tenant_id == tenant_id)
                .order_by(Conversation.id.desc())
            )
            return (await session.execute(stmt.limit(51))).scalars().all()

    def listing(**kwargs: object) -> Callable[[], Awaitable[object]]:
        async def run() -> object:
            async with db.sessionmaker() as session:
                return await list_conversations(session, tenant_id=tenant_id, user_id=viewer, **kwargs)  # type: ignore[arg-type]

        return run

    async with db.sessionmaker() as session:
        first = await list_conversations(
            session, tenant_id=tenant_id, user_id=viewer, filters=ConversationFilters(status="open")
        )
    open_only = ConversationFilters(status="open")

    async def counts() -> object:
        async with db.sessionmaker() as session:
            return await view_counts(session, tenant_id=tenant_id, user_id=viewer, filters=open_only)

    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("open, newest", listing(filters=open_only)),
        ("open, newest, page 2 (cursor)", listing(filters=open_only, cursor=first.next_cursor)),
        ("mine, open, newest", listing(view="mine", filters=open_only)),
        ("unassigned, open, newest", listing(view="unassigned", filters=open_only)),
        ("open, waiting", listing(filters=open_only, sort="waiting")),
        ("open, priority", listing(filters=open_only, sort="priority")),
        ("all statuses, newest", listing()),
        ("label vip, newest", listing(filters=ConversationFilters(label="vip"))),
        ("channel email, open, newest", listing(filters=ConversationFilters(status="open", channel="email"))),
        ("view_counts (open)", counts),
    ]
    base = await measure(samples, baseline)
    print(
        f"{'baseline: old list query (50 rows)':<40} p50 {pct(base, 0.5):8.2f} ms"
        f"   p95 {pct(base, 0.95):8.2f} ms"
    )
    for name, run in cases:
        taken = await measure(samples, run)
        print(
            f"{name:<40} p50 {pct(taken, 0.5):8.2f} ms   p95 {pct(taken, 0.95):8.2f} ms"
            f"   ratio p50 {pct(taken, 0.5) / pct(base, 0.5):6.1f}x",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--server", default=None, help="a server URL, no database (default: a throwaway one)")
    parser.add_argument("--explain", action="store_true", help="print PostgreSQL's plans of the page queries")
    args = parser.parse_args()
    asyncio.run(bench(args.server, args.conversations, args.messages, args.samples, args.seed, args.explain))


if __name__ == "__main__":
    main()
